"""The FastAPI application: lifespan (app.service), the gate middleware, the routes (app.routes), and the
server that drains on SIGTERM.

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
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPBearer

import model

from . import memory, routes, startup
from .errors import install_error_handlers
from .logs import configure_logging
from .middleware import ServiceMiddleware
from .page import page
from .protocol import guarded_protocol
from .service import Service, start, stop
from .settings import Settings

__all__ = ["Service", "create_app", "run"]  # and `app`, built on first access

log = logging.getLogger(__name__)


# For the docs only: the middleware checks the key, before the body is read.
_bearer = HTTPBearer(auto_error=False, description="Only when S2CRNET_API_KEY is set")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings, budget=memory.PixelBudget(settings.max_inflight_pixels))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level, settings.log_format)
        await asyncio.to_thread(start, service)
        try:
            yield
        finally:
            await service.drain(settings.drain_timeout_s)  # under plain uvicorn this is the drain
            await asyncio.to_thread(stop, service)

    # redirect_slashes=False: POST /harmonize/ would get a body-less 307, which `curl -f` takes for success
    # docs_url, redoc_url: served by app.page from local files (FastAPI's load from CDNs)
    app = FastAPI(title="S²CRNet harmonization service", version=model.__version__, lifespan=lifespan,
                  description="Recolours the masked object of a composite so it matches the background.",
                  redirect_slashes=False, docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, service=service)
    if settings.cors_origins:  # outermost: preflights answered before the gate; the gate's 401/503 get headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"], max_age=600,
                           expose_headers=["X-Request-ID", routes.MISMATCH_HEADER, routes.CUTOUT_HEADER,
                                           "Server-Timing", "Retry-After"])
    auth = [Security(_bearer)] if settings.api_key is not None else []  # the schema tells the truth
    app.include_router(routes.api, dependencies=auth)
    app.include_router(routes.ops)
    app.include_router(page)
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
    configure_logging(settings.log_level, settings.log_format)
    application = create_app(settings)
    service = application.state.service
    service.harmonizer = startup.load_harmonizer(settings.weights, settings.device, runtime=settings.runtime,
                                                 threads=settings.torch_threads)
    service.segmenter, service.segmenter_missing = startup.load_segmenter(settings.segmentation,
                                                                          settings.segment_threads)
    # log_config=None: uvicorn's lines go through app.logs like ours (its access log is replaced by ours)
    config = uvicorn.Config(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, access_log=False,
                            timeout_graceful_shutdown=max(settings.drain_timeout_s, 1.0),
                            http=guarded_protocol(settings.header_timeout_s, settings.max_connections))
    _DrainingServer(config, application.state.service).run()


def __getattr__(name: str):
    """`app` is built on first use, so importing this module (tests, the CLI) reads no environment."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
