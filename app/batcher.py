"""The dynamic batcher: a bounded queue of jobs → one inference thread → one forward pass per batch → futures.

The thread takes the oldest job, then waits until the batch is full or `max_delay` has passed since that
job arrived (no wait when `more_coming()` says no other request is on its way), runs one forward pass on
every thumbnail and sets each job's future exactly once. Jobs whose caller has gone (future cancelled:
timeout or disconnect) are skipped and cost no inference. An error in the forward pass reaches every job of
the batch.
"""

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model import Curves

__all__ = ["Batcher", "BatcherClosed", "Job", "QueueFull"]

log = logging.getLogger(__name__)

InferFn = Callable[[list[np.ndarray], list[str | None]], Sequence[Curves]]


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new jobs."""


@dataclass(eq=False)
class Job:
    thumbs: np.ndarray  # (8, S, S) from Harmonizer.prepare
    category: str | None
    future: asyncio.Future  # resolves to Curves; set on the event loop's thread
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0  # filled by the batcher: time between submit and the forward pass
    infer_s: float = 0.0  # the forward pass of this job's batch
    batch_size: int = 0


class Batcher:
    def __init__(self, infer: InferFn, max_batch_size: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None,
                 more_coming: Callable[[], bool] = lambda: True):
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch  # (batch size, forward seconds) → metrics
        self._more_coming = more_coming  # False: no job can join soon, so waiting would only add latency
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="s2crnet-infer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def depth(self) -> int:
        return len(self._jobs)

    def submit(self, thumbs: np.ndarray, category: str | None) -> Job:
        """Queue one job (call on the event loop); await `job.future` for its Curves."""
        job = Job(thumbs, category, asyncio.get_running_loop().create_future())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is shut down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"{len(self._jobs)} jobs queued")
            self._jobs.append(job)
            self._cond.notify()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, finish the queued ones, stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the inference thread -------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        """Block for the first job, then gather more until full or its delay is spent; None once closed."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._jobs.popleft()
            batch = [first]
            deadline = first.enqueued + self.max_delay_s
            while len(batch) < self.max_batch_size:
                if self._jobs:
                    batch.append(self._jobs.popleft())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed or not self._more_coming():
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [job for job in batch if not job.future.cancelled()]
            if live:
                self._forward(live)

    def _forward(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        try:
            curves = list(self._infer([job.thumbs for job in batch], [job.category for job in batch]))
            if len(curves) != len(batch):
                raise RuntimeError(f"the model returned {len(curves)} results for {len(batch)} inputs")
            results: list = curves
        except Exception as e:  # every waiter of the batch gets the error
            log.exception("forward pass failed for a batch of %d", len(batch))
            results = [e] * len(batch)
        elapsed = time.perf_counter() - start
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed)
        for job, result in zip(batch, results, strict=True):
            job.queue_s, job.infer_s, job.batch_size = start - job.enqueued, elapsed, len(batch)
            try:
                job.future.get_loop().call_soon_threadsafe(_resolve, job.future, result)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                pass


def _resolve(future: asyncio.Future, result) -> None:
    if future.done():  # cancelled by its caller meanwhile
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
