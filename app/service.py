"""The running service's state and its life: load the weights, warm up, go ready; stop."""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

import model
from model import Harmonizer

from . import memory, startup
from .batcher import Batcher
from .metrics import Metrics
from .settings import Settings

__all__ = ["Service", "start", "stop"]

log = logging.getLogger(__name__)


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
    segmenter: object | None = None  # model.segmentation.Segmenter (settings.segmentation), or None
    segmenter_missing: str | None = None  # why there is none: the sentence segmentation_unavailable answers
    segment_pool: ThreadPoolExecutor | None = None  # the segmenter's own threads, beside the batcher's
    in_flight: int = 0  # /harmonize, /curves and /mask requests admitted and not yet answered
    preparing: int = 0  # of those, the ones decoding or thumbnailing: they will join the batcher soon

    @property
    def model_name(self) -> str:
        return startup.model_name(self.harmonizer)

    async def run_blocking(self, fn: Callable, *args):
        """Run fn(*args) in the bounded worker pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def run_segmentation(self, fn: Callable, *args):
        """Run fn(*args) on the segmenter's threads: a mask's ~0.4 s never holds a decode or render worker."""
        return await asyncio.get_running_loop().run_in_executor(self.segment_pool, fn, *args)

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


def start(service: Service) -> None:
    """Load the weights, warm up (a forward pass at batch 1 and at full batch, a render), then go ready."""
    settings = service.settings
    Image.MAX_IMAGE_PIXELS = settings.max_pixels  # Pillow's own bomb check: a second fence behind ours
    if settings.release_memory and not memory.tune_allocator():
        log.info("not glibc: the allocator is left as it is")
    harmonizer = service.harmonizer or Harmonizer.load(settings.weights, settings.device, runtime=settings.runtime,
                                                       threads=settings.torch_threads)  # run() loads first
    harmonizer.set_threads(settings.torch_threads)
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
    blank = np.zeros((8, harmonizer.config.thumb, harmonizer.config.thumb), np.float32)
    for size in sorted({1, settings.max_batch_size}):
        harmonizer.curves_from_thumbnails([blank] * size)
    warm_image, warm_mask = Image.new("RGB", (64, 64), (90, 120, 150)), Image.new("L", (64, 64), 0)
    warm_mask.paste(255, (16, 16, 48, 48))
    image, mask, thumbs = harmonizer.prepare(warm_image, warm_mask)
    harmonizer.render(image, mask, harmonizer.curves_from_thumbnails([thumbs])[0])
    _start_segmenter(service, warm_image)
    service.batcher.start()
    metrics.queue_depth.set_function(service.batcher.depth)
    metrics.in_flight.set_function(lambda: service.in_flight)
    info = harmonizer.info()
    metrics.model.info({"name": service.model_name, "backbone": info["backbone"], "device": info["device"],
                        "runtime": info["runtime"],
                        "weights": harmonizer.weights_path.name if harmonizer.weights_path else "",
                        "sha256": info["sha256"] or "", "version": model.__version__})
    service.ready = True
    log.info("ready: model %s (%d parameters) with %s on %s, weights %s, sha256 %s, warm-up %.0f ms",
             service.model_name, info["parameters"], info["runtime"], info["device"], info["weights"], info["sha256"],
             (time.perf_counter() - start) * 1000)


def _start_segmenter(service: Service, warm_image: Image.Image) -> None:
    """The segmenter (settings.segmentation; run() may have loaded it already), its threads and a warm-up run."""
    settings = service.settings
    if service.segmenter is None and service.segmenter_missing is None:
        service.segmenter, service.segmenter_missing = startup.load_segmenter(settings.segmentation,
                                                                               settings.segment_threads)
    segmenter = service.segmenter
    if segmenter is None:
        log.info("no segmentation: %s", service.segmenter_missing)
        return
    service.segment_pool = ThreadPoolExecutor(settings.segment_workers, thread_name_prefix="s2crnet-segment")
    segmenter.saliency(segmenter.preprocess(warm_image, (0, 0, *warm_image.size)))  # the first run is slow
    log.info("segmentation: U²-Netp %s, sha256 %s, %d workers × %d threads", segmenter.path, segmenter.sha256,
             settings.segment_workers, settings.segment_threads)


def stop(service: Service) -> None:
    service.ready = False
    if service.batcher is not None:
        service.batcher.close(timeout=10)
    if service.segment_pool is not None:
        service.segment_pool.shutdown(wait=True, cancel_futures=True)
    if service.pool is not None:
        service.pool.shutdown(wait=True, cancel_futures=True)
    log.info("stopped")


