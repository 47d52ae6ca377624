"""The FastAPI application: lifespan (app.service), the gate middleware, thin routes over app.pipeline.

    uvicorn app.main:app              # settings from S2CRNET_* environment variables
    python -m app                     # the same through run(): uvicorn plus a graceful drain on SIGTERM

One request: bytes → imaging.decode → [layer input: model.layers.compose] → Harmonizer.prepare (thumbnails) →
batcher (one forward pass with others) → Harmonizer.render (full size, in place) → imaging.encode. Everything
blocking runs in a bounded thread pool or the batcher's thread; the event loop only awaits.
"""

import asyncio
import logging
import signal
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Literal

import uvicorn
from fastapi import FastAPI, File, Form, Request, Security, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import model
from model.layers import cut_layer

from . import forms, imaging, memory, startup
from .errors import ApiError, ErrorBody, error_response, install_error_handlers
from .forms import read_form
from .middleware import ServiceMiddleware
from .pipeline import accepted_formats, check_category, curves_for, server_timing, with_deadline
from .protocol import guarded_protocol
from .service import Service, configure_logging, start, stop
from .settings import Settings

__all__ = ["Service", "create_app", "run"]  # and `app`, built on first access

log = logging.getLogger(__name__)


def _service(request: Request) -> Service:
    return request.app.state.service


_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 406, 408, 413, 415, 422, 503, 504)}
# For the docs only: the middleware checks the key, before the body is read.
_bearer = HTTPBearer(auto_error=False, description="Only when S2CRNET_API_KEY is set")
# composite + mask, or the layer form (app.forms): each part is optional, and read_form checks the combination.
CompositeFile = Annotated[UploadFile | None, File(description="the composite (JPEG, PNG, WebP, TIFF, BMP, GIF)")]
MaskFile = Annotated[UploadFile | None, File(description="mask of the same size; value/255 = foreground weight")]
CategoryField = Annotated[str | None, Form(description="a category the model knows (GET /info)")]
MISMATCH_HEADER = "X-Harmonization-Mismatch"  # the mean of the mismatch score, in 8-bit levels


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings, budget=memory.PixelBudget(settings.max_inflight_pixels))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        await asyncio.to_thread(start, service)
        try:
            yield
        finally:
            await service.drain(settings.drain_timeout_s)  # under plain uvicorn this is the drain
            await asyncio.to_thread(stop, service)

    # redirect_slashes=False: POST /harmonize/ would get a body-less 307, which `curl -f` takes for success
    app = FastAPI(title="S²CRNet harmonization service", version=model.__version__, lifespan=lifespan,
                  description="Recolours the masked object of a composite so it matches the background.",
                  redirect_slashes=False)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, service=service)
    auth = [Security(_bearer)] if settings.api_key is not None else []  # the schema tells the truth

    @app.post("/harmonize", response_class=Response, dependencies=auth,
              responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}},
                               "description": "the harmonized image, the composite's (or background's) size; "
                                              "output=layer: the harmonized foreground, RGBA, its own size"},
                         **_ERRORS})
    async def harmonize(request: Request, composite: CompositeFile = None, mask: MaskFile = None,
                        foreground: forms.ForegroundFile = None, foreground_mask: forms.ForegroundMaskFile = None,
                        background: forms.BackgroundFile = None, x: forms.XField = None, y: forms.YField = None,
                        scale: forms.ScaleField = None, box: forms.BoxField = None, feather: forms.FeatherField = None,
                        strength: forms.StrengthField = None, output: forms.OutputField = "image",
                        format: Annotated[Literal["jpeg", "png", "webp"] | None, Form()] = None,
                        quality: Annotated[int | None, Form(ge=1, le=100)] = None,
                        category: CategoryField = None) -> Response:
        """Harmonize a composite (or a foreground placed on a background): answers the image with its masked
        object recoloured, or with output=layer the harmonized foreground as RGBA."""
        start = time.perf_counter()
        service = _service(request)
        form = read_form(composite, mask, foreground, foreground_mask, background, x, y, scale, box, feather,
                         request.headers.get("content-type", ""))
        if output == "layer" and not form.layer:
            raise ApiError(422, "invalid_field", "output: layer needs the layer form (foreground + background)")
        if output == "layer" and format == "jpeg":
            raise ApiError(422, "invalid_field", "format: a layer keeps its alpha; ask for png or webp")
        category = check_category(service, category)
        accepted = accepted_formats(request, format)
        timings: dict[str, float] = {}
        mismatch: dict[str, float] = {}

        async def work():
            async with AsyncExitStack() as stack:
                decoded, mask_image, curves, layered = await curves_for(service, timings, form, category,
                                                                         strength, stack)
                mismatch.update(curves.mismatch)
                with service.stage(timings, "render"):
                    if output == "layer":  # only the foreground's pixels: the flattened image is never rendered
                        out = await service.run_blocking(cut_layer, layered, curves.lut())
                    else:
                        out = await service.run_blocking(service.harmonizer.render, decoded.image, mask_image,
                                                         curves)
                if output == "layer":
                    fmt = format or "png"
                else:
                    fmt = imaging.output_format_for(format, decoded.format, out.mode == "RGBA")
                if accepted is not None and fmt not in accepted:  # the client's Accept beats our default
                    keeps_alpha = [f for f in accepted if f != "jpeg"] if output == "layer" else accepted
                    if not keeps_alpha:
                        raise ApiError(406, "not_acceptable", "output=layer is RGBA: Accept must allow png or webp")
                    fmt = keeps_alpha[0]
                with service.stage(timings, "encode"):
                    return await service.run_blocking(imaging.encode, out, fmt,
                                                      quality or settings.default_quality,
                                                      settings.png_compress_level, decoded.icc_profile)

        body, media_type = await with_deadline(service, request, work())
        headers = {"Server-Timing": server_timing(timings, time.perf_counter() - start),
                   MISMATCH_HEADER: f"{mismatch['mean']:.3f}"}
        return Response(body, media_type=media_type, headers=headers)

    @app.post("/curves", dependencies=auth,
              responses={200: {"content": {"application/json": {}, "text/plain": {}},
                               "description": "the curves as JSON tables, or a .cube 1D LUT"}, **_ERRORS})
    async def curves(request: Request, composite: CompositeFile = None, mask: MaskFile = None,
                     foreground: forms.ForegroundFile = None, foreground_mask: forms.ForegroundMaskFile = None,
                     background: forms.BackgroundFile = None, x: forms.XField = None, y: forms.YField = None,
                     scale: forms.ScaleField = None, box: forms.BoxField = None, feather: forms.FeatherField = None,
                     strength: forms.StrengthField = None,
                     format: Annotated[Literal["json", "cube"], Form()] = "json",
                     category: CategoryField = None) -> Response:
        """The per-channel curves the model predicts (at the request's strength): 256-entry tables (0-255) and
        the mismatch score as JSON, or a .cube LUT."""
        start = time.perf_counter()
        service = _service(request)
        form = read_form(composite, mask, foreground, foreground_mask, background, x, y, scale, box, feather,
                         request.headers.get("content-type", ""))
        category = check_category(service, category)
        timings: dict[str, float] = {}
        async def work():
            async with AsyncExitStack() as stack:
                return (await curves_for(service, timings, form, category, strength, stack))[2]

        result = await with_deadline(service, request, work())
        total = time.perf_counter() - start
        mismatch = {name: round(value, 4) for name, value in result.mismatch.items()}
        headers = {"Server-Timing": server_timing(timings, total), MISMATCH_HEADER: f"{mismatch['mean']:.3f}"}
        if format == "cube":
            headers["Content-Disposition"] = 'attachment; filename="curves.cube"'
            cube = result.to_cube(f"{service.model_name} harmonization curve")
            return PlainTextResponse(cube, headers=headers)
        timings_ms = {name: round(seconds * 1000, 2) for name, seconds in {**timings, "total": total}.items()}
        return JSONResponse({**result.to_dict(), "mismatch": mismatch, "strength": result.strength,
                             "model": service.model_name, "category": category or "unknown",
                             "timings_ms": timings_ms}, headers=headers)

    # HEAD too: load balancers and `curl -I` probe with it (uvicorn sends the headers, not the body).
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict:
        """200 while the process serves."""
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], responses={503: {"model": ErrorBody}})
    async def readyz(request: Request):
        """200 once the model is loaded and warmed up; 503 before that and while draining."""
        service = _service(request)
        if service.draining:
            return error_response(503, "shutting_down", "the server is draining before exit")
        if not service.ready:
            return error_response(503, "not_ready", "the model is not loaded and warmed up yet")
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        return Response(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info(request: Request) -> dict:
        """Model config, parameter count, device, weights sha256, version and limits."""
        service = _service(request)
        s = service.settings
        return {
            "name": service.model_name,
            "version": model.__version__,
            "model": service.harmonizer.info() if service.harmonizer else None,
            "ready": service.ready,
            "limits": {"max_upload_bytes": s.max_upload_bytes, "max_pixels": s.max_pixels,
                       "max_queue": s.max_queue, "max_inflight_pixels": s.max_inflight_pixels,
                       "request_timeout_s": s.request_timeout_s},
            "batching": {"max_batch_size": s.max_batch_size, "max_delay_ms": s.max_delay_ms},
            "formats": {"input": [f.lower() for f in imaging.INPUT_FORMATS],
                        "output": list(imaging.OUTPUT_FORMATS)},
            "auth": s.api_key is not None,
        }

    return app


# --- serving with a graceful drain ------------------------------------------------------------------------
class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains: readyz → 503, new work → 503, accepted work
    finishes (up to drain_timeout_s), then the normal uvicorn shutdown. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain_deadline is not None or not self.service.ready:
            super().handle_exit(sig, frame)
            return
        self.service.draining = True
        self.drain_deadline = time.monotonic() + self.service.settings.drain_timeout_s
        log.info("%s: draining %d requests in flight (at most %.0f s)", signal.Signals(sig).name,
                 self.service.in_flight, self.service.settings.drain_timeout_s)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.service.in_flight == 0 or time.monotonic() >= self.drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def run(settings: Settings) -> None:
    """Load the weights (StartupError: one line, exit 2 or 3, before anything listens), then serve with
    uvicorn until SIGTERM/SIGINT, drain and exit."""
    application = create_app(settings)
    application.state.service.harmonizer = startup.load_harmonizer(settings.weights, settings.device,
                                                                   runtime=settings.runtime,
                                                                   threads=settings.torch_threads)
    config = uvicorn.Config(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=max(settings.drain_timeout_s, 1.0),
                            http=guarded_protocol(settings.header_timeout_s, settings.max_connections))
    _DrainingServer(config, application.state.service).run()


def __getattr__(name: str):
    """`app` is built on first use, so importing this module (tests, the CLI) reads no environment."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
