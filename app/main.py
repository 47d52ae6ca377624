"""The FastAPI application: lifespan (load, warm up, drain), the gate middleware and thin routes.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
import uvicorn
from fastapi import FastAPI, File, Form, Request, Security, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import model
from model import Curves, Harmonizer
from model.layers import Layered, LayerError, compose, cut_layer

from . import forms, imaging, memory, startup
from .batcher import Batcher, BatcherClosed, QueueFull
from .errors import ApiError, ErrorBody, error_response, install_error_handlers
from .forms import InputForm, layer_api_error, read_form
from .metrics import Metrics
from .middleware import RETRY_AFTER_S, ServiceMiddleware
from .protocol import guarded_protocol
from .settings import Settings

__all__ = ["Service", "create_app", "run"]  # and `app`, built on first access

log = logging.getLogger(__name__)

TRIM_AFTER_PIXELS = 4_000_000  # a request at least this large hands its freed memory back (malloc_trim) after it


@dataclass
class Service:
    """Everything one running app owns. Built by create_app, filled in by the lifespan."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    harmonizer: Harmonizer | None = None
    batcher: Batcher | None = None
    pool: ThreadPoolExecutor | None = None
    ready: bool = False  # the model is loaded and warmed up
    draining: bool = False  # SIGTERM seen: refuse new work, finish accepted work
    budget: memory.PixelBudget | None = None  # decoded pixels in flight (max_inflight_pixels)
    in_flight: int = 0  # /harmonize and /curves requests admitted and not yet answered
    preparing: int = 0  # of those, the ones decoding or thumbnailing: they will join the batcher soon

    @property
    def model_name(self) -> str:
        return startup.model_name(self.harmonizer)

    async def run_blocking(self, fn: Callable, *args):
        """Run fn(*args) in the bounded worker pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @contextmanager
    def stage(self, timings: dict[str, float], name: str):
        """Time a stage into `timings` and the histogram (waiting for a worker counts: it is latency too)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = time.perf_counter() - start
            self.metrics.stage_duration.labels(name).observe(timings[name])

    async def drain(self, timeout: float) -> None:
        """Refuse new work and wait (at most `timeout` s) for the accepted requests to finish."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("drain timeout: %d requests still in flight", self.in_flight)


# --- start-up and shutdown ------------------------------------------------------------------------------
def _configure_logging(level: str) -> None:
    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("app", "model"):
        logging.getLogger(name).setLevel(level.upper())


def _start(service: Service) -> None:
    """Load the weights, warm up (a forward pass at batch 1 and at full batch, a render), then go ready."""
    settings = service.settings
    Image.MAX_IMAGE_PIXELS = settings.max_pixels  # Pillow's own bomb check: a second fence behind ours
    if settings.release_memory and not memory.tune_allocator():
        log.info("not glibc: the allocator is left as it is")
    torch.set_num_threads(settings.torch_threads)
    harmonizer = service.harmonizer or Harmonizer.load(settings.weights, settings.device)  # run() loads first
    service.harmonizer = harmonizer
    service.pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="s2crnet-work")
    metrics = service.metrics

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.stage_duration.labels("infer").observe(seconds)

    service.batcher = Batcher(harmonizer.curves_from_thumbnails, settings.max_batch_size,
                              settings.max_delay_ms / 1000, settings.max_queue, on_batch,
                              more_coming=lambda: service.preparing > 0)
    start = time.perf_counter()
    blank = torch.zeros(8, harmonizer.config.thumb, harmonizer.config.thumb)
    for size in sorted({1, settings.max_batch_size}):
        harmonizer.curves_from_thumbnails([blank] * size)
    warm_image, warm_mask = Image.new("RGB", (64, 64), (90, 120, 150)), Image.new("L", (64, 64), 0)
    warm_mask.paste(255, (16, 16, 48, 48))
    image, mask, thumbs = harmonizer.prepare(warm_image, warm_mask)
    harmonizer.render(image, mask, harmonizer.curves_from_thumbnails([thumbs])[0])
    service.batcher.start()
    metrics.queue_depth.set_function(service.batcher.depth)
    metrics.in_flight.set_function(lambda: service.in_flight)
    info = harmonizer.info()
    metrics.model.info({"name": service.model_name, "backbone": info["backbone"], "device": info["device"],
                        "weights": harmonizer.weights_path.name if harmonizer.weights_path else "",
                        "sha256": info["sha256"] or "", "version": model.__version__})
    service.ready = True
    log.info("ready: model %s (%d parameters) on %s, weights %s, sha256 %s, warm-up %.0f ms",
             service.model_name, info["parameters"], info["device"], info["weights"], info["sha256"],
             (time.perf_counter() - start) * 1000)


def _stop(service: Service) -> None:
    service.ready = False
    if service.batcher is not None:
        service.batcher.close(timeout=10)
    if service.pool is not None:
        service.pool.shutdown(wait=True, cancel_futures=True)
    log.info("stopped")


# --- request handling ------------------------------------------------------------------------------------
def _check_category(service: Service, category: str | None) -> str | None:
    if not category:
        return None
    known = service.harmonizer.config.categories
    if category not in known:
        raise ApiError(422, "unknown_category", f"category {category[:64]!r} is not one the model knows: "
                       f"{', '.join(known)}")
    return category


def _prepare(service: Service, composite: imaging.Decoded, mask: imaging.Decoded):
    if composite.image.size != mask.image.size:
        (cw, ch), (mw, mh) = composite.image.size, mask.image.size
        raise ApiError(422, "mask_size_mismatch", f"the mask is {mw}×{mh} but the composite is {cw}×{ch} "
                       "(after EXIF orientation); they must be the same size")
    try:
        return service.harmonizer.prepare(composite.image, mask.image)
    except ValueError as e:  # the model's sentence: empty mask, mask without background, bad mode
        raise ApiError(422, "invalid_mask", str(e)) from None


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _with_deadline(service: Service, request: Request, work) -> object:
    """Run `work` (a coroutine) under the request deadline; stop it when the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=service.settings.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()  # queued jobs are skipped by the batcher; later stages never start
    if watcher in done:
        log.info("client disconnected from %s; work abandoned", request.url.path)
        raise ApiError(499, "client_closed", "the client closed the connection")
    raise ApiError(504, "timeout", f"the request took longer than {service.settings.request_timeout_s} s")


@asynccontextmanager
async def _reserved(service: Service, pixels: int):
    """Hold `pixels` of the in-flight budget (see app/memory.py) for the block; 503 + Retry-After when they do
    not come free within half the request's deadline, so that the work keeps the other half."""
    wait_s = service.settings.request_timeout_s / 2
    try:
        held = await service.budget.acquire(pixels, wait_s)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"the server's memory budget ({service.settings.max_inflight_pixels} "
                       f"decoded pixels in flight) stayed spent for {wait_s:g} s; retry later",
                       {"Retry-After": RETRY_AFTER_S}) from None
    try:
        yield
    finally:
        service.budget.release(held)
        if held >= TRIM_AFTER_PIXELS and service.settings.release_memory:
            with suppress(RuntimeError):  # the pool is already shut down: the process is exiting anyway
                service.pool.submit(memory.trim)  # off the event loop; a few ms


async def _decode_parts(service: Service, parts: list[tuple[UploadFile, str, bool]],
                        stack: AsyncExitStack) -> list[imaging.Decoded]:
    """Read every (file, name, is_colour_image)'s header, reserve the memory their pixels will need (held until
    `stack` closes), then decode them all at once (Pillow decodes without holding the GIL). When several are
    bad, the first one's error, every time."""
    max_pixels = service.settings.max_pixels
    opened = await asyncio.gather(*(service.run_blocking(imaging.open_image, part.file, name, max_pixels)
                                    for part, name, _ in parts), return_exceptions=True)
    _raise_first(opened)
    # From the headers, before a pixel is decoded: the colour images together, or the largest part if more.
    sizes = [image.width * image.height for image in opened]
    colour = sum(size for size, (_, _, is_colour) in zip(sizes, parts, strict=True) if is_colour)
    await stack.enter_async_context(_reserved(service, max(colour, *sizes)))
    decoded = await asyncio.gather(*(service.run_blocking(imaging.decode_opened, image, name, is_colour)
                                     for image, (_, name, is_colour) in zip(opened, parts, strict=True)),
                                   return_exceptions=True)
    _raise_first(decoded)
    return decoded
    max_pixels = service.settings.max_pixels
    outcomes = await asyncio.gather(*(service.run_blocking(imaging.decode, part.file, name, max_pixels, colour)
                                      for part, name, colour in parts), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


async def _prepare_composite(service: Service, timings: dict, composite: UploadFile, mask: UploadFile,
                             stack: AsyncExitStack):
    """composite + mask → (decoded composite, mask image, thumbnails)."""
    with service.stage(timings, "decode"):
        decoded_composite, decoded_mask = await _decode_parts(service, [(composite, "composite", True),
                                                                        (mask, "mask", False)], stack)
    width, height = decoded_composite.image.size
    service.metrics.megapixels.observe(width * height / 1e6)
    with service.stage(timings, "thumbnail"):
        image, mask_image, thumbs = await service.run_blocking(_prepare, service, decoded_composite, decoded_mask)
    decoded_composite.image = image
    return decoded_composite, mask_image, thumbs


def _compose(service: Service, form: InputForm, foreground: imaging.Decoded, foreground_mask,
             background: imaging.Decoded) -> Layered:
    """Place the foreground on the decoded background, in place (no second full-size image)."""
    try:
        return compose(foreground.image, background.image, form.at, form.scale, form.box, form.feather,
                       foreground_mask.image if foreground_mask is not None else None,
                       max_pixels=service.settings.max_pixels, copy=False)
    except LayerError as e:
        raise layer_api_error(e) from None


async def _prepare_layer(service: Service, timings: dict, form: InputForm, stack: AsyncExitStack):
    """foreground (+ foreground_mask) + background + placement → (decoded background, mask, thumbnails, layered)."""
    parts = [(form.foreground, "foreground", True), (form.background, "background", True)]
    if form.foreground_mask is not None:
        parts.append((form.foreground_mask, "foreground_mask", False))
    with service.stage(timings, "decode"):
        foreground, background, *rest = await _decode_parts(service, parts, stack)
    width, height = background.image.size
    service.metrics.megapixels.observe(width * height / 1e6)
    with service.stage(timings, "compose"):
        layered = await service.run_blocking(_compose, service, form, foreground, rest[0] if rest else None,
                                             background)
    del foreground, rest  # the scaled copy in `layered` is all that is needed from here on
    with service.stage(timings, "thumbnail"):
        background.image = layered.composite
        image, mask_image, thumbs = await service.run_blocking(_prepare, service, background,
                                                               imaging.Decoded(layered.mask, None, None))
    background.image = image
    return background, mask_image, thumbs, layered


async def _curves_for(service: Service, timings: dict, form: InputForm, category: str | None,
                      strength: float | None, stack: AsyncExitStack):
    """Headers → memory reservation (held until `stack` closes) → decode (and compose), thumbnail, batch →
    (decoded composite or background, mask image, curves at the request's strength, the Layered for layer input
    or None)."""
    service.preparing += 1
    layered = None
    try:
        if form.layer:
            decoded, mask_image, thumbs, layered = await _prepare_layer(service, timings, form, stack)
        else:
            decoded, mask_image, thumbs = await _prepare_composite(service, timings, form.composite, form.mask,
                                                                   stack)
        job = service.batcher.submit(thumbs, category)
    except QueueFull:
        raise ApiError(503, "overloaded", "the inference queue is full; retry later",
                       {"Retry-After": RETRY_AFTER_S}) from None
    except BatcherClosed:
        raise ApiError(503, "shutting_down", "the server is shutting down") from None
    finally:
        service.preparing -= 1  # after submit: the batcher must not stop waiting for a job about to arrive
    try:
        curves: Curves = await job.future
    finally:
        if not job.future.done():
            job.future.cancel()
    timings["queue"], timings["infer"] = job.queue_s, job.infer_s
    service.metrics.stage_duration.labels("queue").observe(job.queue_s)
    return decoded, mask_image, curves.with_strength(strength), layered


def _raise_first(outcomes: list) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _accepted_formats(request: Request, requested: str | None) -> list[str] | None:
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


def _server_timing(timings: dict[str, float], total: float) -> str:
    parts = [f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items()]
    return ", ".join([*parts, f"total;dur={total * 1000:.1f}"])


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
        _configure_logging(settings.log_level)
        await asyncio.to_thread(_start, service)
        try:
            yield
        finally:
            await service.drain(settings.drain_timeout_s)  # under plain uvicorn this is the drain
            await asyncio.to_thread(_stop, service)

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
        category = _check_category(service, category)
        accepted = _accepted_formats(request, format)
        timings: dict[str, float] = {}
        mismatch: dict[str, float] = {}

        async def work():
            async with AsyncExitStack() as stack:
                decoded, mask_image, curves, layered = await _curves_for(service, timings, form, category,
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

        body, media_type = await _with_deadline(service, request, work())
        headers = {"Server-Timing": _server_timing(timings, time.perf_counter() - start),
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
        category = _check_category(service, category)
        timings: dict[str, float] = {}
        async def work():
            async with AsyncExitStack() as stack:
                return (await _curves_for(service, timings, form, category, strength, stack))[2]

        result = await _with_deadline(service, request, work())
        total = time.perf_counter() - start
        mismatch = {name: round(value, 4) for name, value in result.mismatch.items()}
        headers = {"Server-Timing": _server_timing(timings, total), MISMATCH_HEADER: f"{mismatch['mean']:.3f}"}
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
    application.state.service.harmonizer = startup.load_harmonizer(settings.weights, settings.device)
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
