"""The HTTP routes: read the form, run app.pipeline under the request deadline, shape the answer.

`api` (/harmonize, /curves, /mask) sits behind the API key when one is set; `ops` (health, readiness, metrics, info)
never does. create_app (app/main.py) includes both.
"""

import time
from contextlib import AsyncExitStack
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import model

from . import forms, imaging, masking
from .errors import ApiError, ErrorBody, error_response
from .forms import read_form
from .pipeline import find_mask, predict, preview, render_and_encode, with_deadline
from .service import Service

__all__ = ["api", "ops", "ServiceDep", "CUTOUT_HEADER", "MISMATCH_HEADER"]


async def _service(request: Request) -> Service:
    """Async on purpose: FastAPI runs a plain-def dependency in a worker thread, a hop per request for nothing."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 406, 408, 413, 415, 422, 503, 504)}
# composite + mask, or the layer form (app.forms): each part is optional, and read_form checks the combination.
CompositeFile = Annotated[UploadFile | None, File(description="the composite (JPEG, PNG, WebP, TIFF, BMP, GIF, "
                                                              "HEIC/HEIF, AVIF)")]
MaskFile = Annotated[UploadFile | str | None, File(description="mask of the same size (value/255 = foreground "
                                                               "weight), or the text `auto`: the object is found, "
                                                               "inside `box` when given (x0,y0,x1,y1)")]
CategoryField = Annotated[str | None, Form(description="a category the model knows (GET /info)")]
MISMATCH_HEADER = "X-Harmonization-Mismatch"  # the mean of the mismatch score, in 8-bit levels
CUTOUT_HEADER = "X-S2CRNet-Cutout"  # "auto": the foreground was a plain photo and its subject was cut out

def check_category(service: Service, category: str | None) -> str | None:
    """The form's category if the model knows it ("" = unknown); 422 unknown_category else."""
    try:
        return service.harmonizer.config.check_category(category or None)
    except ValueError as e:
        raise ApiError(422, "unknown_category", str(e)) from None


def accepted_formats(request: Request, requested: str | None) -> list[str] | None:
    """The output formats the request's Accept header allows (None: any); 406 before any work when it allows
    none of ours, or not the `format` the form asks for."""
    accept = request.headers.get("accept")
    accepted = imaging.acceptable_formats(accept)
    if accepted is not None and (not accepted or (requested and requested not in accepted)):
        ours = ", ".join(media for _, media in imaging.OUTPUT_FORMATS.values())
        if accepted:
            raise ApiError(406, "not_acceptable", f"format={requested} is not allowed by Accept: {accept[:200]!r}")
        raise ApiError(406, "not_acceptable", f"Accept: {accept[:200]!r} allows none of the images this endpoint "
                       f"answers: {ours}")
    return accepted


def server_timing(timings: dict[str, float], total: float) -> str:
    parts = [f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items()]
    return ", ".join([*parts, f"total;dur={total * 1000:.1f}"])


api = APIRouter(responses=ERRORS)
ops = APIRouter()


@api.post("/harmonize", response_class=Response,
          responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/avif": {}},
                           "description": "the harmonized image, the composite's (or background's) size; "
                                          "output=layer: the harmonized foreground, RGBA, its own size"}})
async def harmonize(request: Request, service: ServiceDep, composite: CompositeFile = None, mask: MaskFile = None,
                    foreground: forms.ForegroundFile = None, foreground_mask: forms.ForegroundMaskFile = None,
                    background: forms.BackgroundFile = None, x: forms.XField = None, y: forms.YField = None,
                    scale: forms.ScaleField = None, box: forms.BoxField = None, feather: forms.FeatherField = None,
                    strength: forms.StrengthField = None, output: forms.OutputField = "image",
                    format: forms.ImageFormatField = None,
                    quality: Annotated[int | None, Form(ge=1, le=100)] = None,
                    category: CategoryField = None) -> Response:
    """Harmonize a composite (or a foreground placed on a background): answers the image with its masked
    object recoloured, or with output=layer the harmonized foreground as RGBA."""
    start = time.perf_counter()
    await forms.check_body(request)
    form = read_form(composite, mask, foreground, foreground_mask, background, x, y, scale, box, feather,
                     request.headers.get("content-type", ""))
    format = imaging.format_name(format, imaging.OUTPUT_FORMATS)
    if output == "layer" and not form.layer:
        raise ApiError(422, "invalid_field", "output: layer needs the layer form (foreground + background)")
    if output == "layer" and format == "jpeg":
        raise ApiError(422, "invalid_field", "format: a layer keeps its alpha; ask for png or webp")
    category = check_category(service, category)
    accepted = accepted_formats(request, format)
    timings: dict[str, float] = {}
    mismatch: dict[str, float] = {}
    cutout: list[bool] = []

    async def work():
        async with AsyncExitStack() as stack:
            with service.stage(timings, "critical"):
                prediction = await predict(service, timings, form, category, strength, stack)
                request.state.image_size = prediction.decoded.image.size  # for the access line (app.logs)
                mismatch.update(prediction.curves.mismatch)
                cutout.append(prediction.cutout)
                return await render_and_encode(service, timings, prediction, output, format, quality, accepted)

    body, media_type = await with_deadline(service, request, work())
    headers = {"Server-Timing": server_timing(timings, time.perf_counter() - start),
               MISMATCH_HEADER: f"{mismatch['mean']:.3f}", **_cutout_header(cutout)}
    return Response(body, media_type=media_type, headers=headers)


def _cutout_header(cutout: list[bool]) -> dict[str, str]:
    return {CUTOUT_HEADER: masking.CUTOUT_AUTO} if any(cutout) else {}


@api.post("/curves", responses={200: {"content": {"application/json": {}, "text/plain": {}},
                                      "description": "the curves as JSON tables, or a .cube 1D LUT"}})
async def curves(request: Request, service: ServiceDep, composite: CompositeFile = None, mask: MaskFile = None,
                 foreground: forms.ForegroundFile = None, foreground_mask: forms.ForegroundMaskFile = None,
                 background: forms.BackgroundFile = None, x: forms.XField = None, y: forms.YField = None,
                 scale: forms.ScaleField = None, box: forms.BoxField = None, feather: forms.FeatherField = None,
                 strength: forms.StrengthField = None,
                 format: forms.CurvesFormatField = "json",
                 category: CategoryField = None) -> Response:
    """The per-channel curves the model predicts (at the request's strength): 256-entry tables (0-255) and the
    mismatch score as JSON, or a .cube LUT."""
    start = time.perf_counter()
    await forms.check_body(request)
    form = read_form(composite, mask, foreground, foreground_mask, background, x, y, scale, box, feather,
                     request.headers.get("content-type", ""))
    format = imaging.format_name(format, forms.CURVES_FORMATS)
    category = check_category(service, category)
    timings: dict[str, float] = {}
    cutout: list[bool] = []

    async def work():
        async with AsyncExitStack() as stack:
            with service.stage(timings, "critical"):
                prediction = await predict(service, timings, form, category, strength, stack)
            request.state.image_size = prediction.decoded.image.size  # for the access line (app.logs)
            cutout.append(prediction.cutout)
            return prediction.curves

    result = await with_deadline(service, request, work())
    total = time.perf_counter() - start
    mismatch = {name: round(value, 4) for name, value in result.mismatch.items()}
    headers = {"Server-Timing": server_timing(timings, total), MISMATCH_HEADER: f"{mismatch['mean']:.3f}",
               **_cutout_header(cutout)}
    if format == "cube":
        headers["Content-Disposition"] = 'attachment; filename="curves.cube"'
        return PlainTextResponse(result.to_cube(f"{service.model_name} harmonization curve"), headers=headers)
    timings_ms = {name: round(seconds * 1000, 2) for name, seconds in {**timings, "total": total}.items()}
    return JSONResponse({**result.to_dict(), "mismatch": mismatch, "strength": result.strength,
                         "model": service.model_name, "category": category or "unknown",
                         "timings_ms": timings_ms}, headers=headers)


@api.post("/preview", response_class=Response,
          responses={200: {"content": {"image/png": {}}, "description": "the image as the service decodes it"}})
async def preview_image(request: Request, service: ServiceDep,
                        image: Annotated[UploadFile | None, File(description="any image /harmonize takes")] = None
                        ) -> Response:
    """The image as /harmonize decodes it (EXIF orientation applied, 8-bit RGB or RGBA) as PNG: for clients
    that cannot decode TIFF or HEIC themselves, such as the page in a browser."""
    await forms.check_body(request)
    if image is None:
        raise ApiError(422, "missing_field", "image: missing; send the file part image")
    body = await with_deadline(service, request, preview(service, image))
    return Response(body, media_type="image/png")


@api.post("/mask", response_class=Response,
          responses={200: {"content": {"image/png": {}},
                           "description": "the found mask: 8-bit grey PNG of the composite's size, 255 = object"}})
async def mask(request: Request, service: ServiceDep, composite: CompositeFile = None,
               box: Annotated[str | None, Form(description="x0,y0,x1,y1 in composite pixels: find the object "
                                                           "inside (default: the most salient in the image)")] = None
               ) -> Response:
    """Find the object (inside `box`, or the most salient one) and answer its mask, to check or edit before
    sending it to /harmonize as the `mask` file."""
    start = time.perf_counter()
    await forms.check_body(request)
    if composite is None:
        raise ApiError(422, "missing_field", "composite: missing; send the image to find the object in")
    object_box = masking.parse_box_field(box)
    accepted_formats(request, "png")
    masking.check_available(service)
    timings: dict[str, float] = {}

    async def work():
        async with AsyncExitStack() as stack:
            with service.stage(timings, "critical"):
                return await find_mask(service, timings, composite, object_box, stack)

    body = await with_deadline(service, request, work())
    return Response(body, media_type="image/png",
                    headers={"Server-Timing": server_timing(timings, time.perf_counter() - start)})


# HEAD too: load balancers and `curl -I` probe with it (uvicorn sends the headers, not the body).
@ops.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> dict:
    """200 while the process serves."""
    return {"status": "ok"}


@ops.api_route("/readyz", methods=["GET", "HEAD"], responses={503: {"model": ErrorBody}})
async def readyz(service: ServiceDep):
    """200 once the model is loaded and warmed up; 503 before that and while draining."""
    if service.draining:
        return error_response(503, "shutting_down", "the server is draining before exit")
    if not service.ready:
        return error_response(503, "not_ready", "the model is not loaded and warmed up yet")
    return {"status": "ready"}


@ops.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@ops.get("/info")
async def info(service: ServiceDep) -> dict:
    """Model config, parameter count, device, weights sha256, version, limits, and the segmentation model."""
    s = service.settings
    return {
        "name": service.model_name,
        "version": model.__version__,
        "model": service.harmonizer.info() if service.harmonizer else None,
        "segmentation": (service.segmenter.info() if service.segmenter is not None
                         else {"available": False, "reason": service.segmenter_missing}),
        "ready": service.ready,
        "limits": {"max_upload_bytes": s.max_upload_bytes, "max_pixels": s.max_pixels, "max_queue": s.max_queue,
                   "max_inflight_pixels": s.max_inflight_pixels, "request_timeout_s": s.request_timeout_s},
        "batching": {"max_batch_size": s.max_batch_size, "max_delay_ms": s.max_delay_ms},
        "formats": {"input": [f.lower() for f in imaging.INPUT_FORMATS], "output": list(imaging.OUTPUT_FORMATS)},
        "auth": s.api_key is not None,
    }
