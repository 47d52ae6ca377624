"""app.batcher with the real network: grouping, bounds, cancelling, errors reach all waiters, shutdown."""

import asyncio

import pytest
from helpers import real_pair

from app.batcher import Batcher, BatcherClosed, QueueFull
from model import Harmonizer


@pytest.fixture(scope="module")
def harmonizer() -> Harmonizer:
    return Harmonizer.load(device="cpu")


@pytest.fixture(scope="module")
def thumbs(harmonizer):
    return [harmonizer.prepare(*real_pair(160, 120, i))[2] for i in range(4)]


class Recorder:
    """Wraps the real forward pass and records the size of every batch it sees."""

    def __init__(self, harmonizer: Harmonizer):
        self.harmonizer = harmonizer
        self.sizes: list[int] = []

    def __call__(self, thumbs, categories):
        self.sizes.append(len(thumbs))
        return self.harmonizer.curves_from_thumbnails(thumbs, categories)


def _batcher(harmonizer, **options) -> tuple[Batcher, Recorder]:
    recorder = Recorder(harmonizer)
    settings = {"max_batch_size": 4, "max_delay_s": 0.5, "max_queue": 16, **options}
    batcher = Batcher(recorder, **settings)
    return batcher, recorder


def test_jobs_submitted_together_share_one_forward_pass(harmonizer, thumbs):
    async def main():
        batcher, recorder = _batcher(harmonizer)
        jobs = [batcher.submit(t, None) for t in thumbs * 2]  # queued before the thread starts
        batcher.start()
        results = await asyncio.gather(*(job.future for job in jobs))
        batcher.close(5)
        return recorder.sizes, results, jobs

    sizes, results, jobs = asyncio.run(main())
    assert sizes == [4, 4]
    assert all(job.batch_size == 4 for job in jobs)
    alone = harmonizer.curves_from_thumbnails([thumbs[1]])[0]
    assert abs(results[1].lut().astype(int) - alone.lut().astype(int)).max() <= 1  # same curves as alone


def test_first_job_waits_for_company_only_while_more_are_coming(harmonizer, thumbs):
    async def main(more_coming: bool):
        batcher, recorder = _batcher(harmonizer, max_delay_s=0.3, more_coming=lambda: more_coming)
        batcher.start()
        first = batcher.submit(thumbs[0], None)
        await asyncio.sleep(0.05)
        second = batcher.submit(thumbs[1], None)
        await asyncio.gather(first.future, second.future)
        batcher.close(5)
        return recorder.sizes

    assert asyncio.run(main(more_coming=True)) == [2]
    assert asyncio.run(main(more_coming=False)) == [1, 1]


def test_full_queue_refuses_at_once(harmonizer, thumbs):
    async def main():
        batcher, _ = _batcher(harmonizer, max_queue=2)  # not started: nothing drains the queue
        batcher.submit(thumbs[0], None)
        batcher.submit(thumbs[1], None)
        assert batcher.depth() == 2
        with pytest.raises(QueueFull):
            batcher.submit(thumbs[2], None)

    asyncio.run(main())


def test_cancelled_jobs_are_skipped(harmonizer, thumbs):
    async def main():
        batcher, recorder = _batcher(harmonizer)
        kept, dropped = batcher.submit(thumbs[0], None), batcher.submit(thumbs[1], None)
        dropped.future.cancel()  # the client went away before the batch ran
        batcher.start()
        await kept.future
        batcher.close(5)
        return recorder.sizes

    assert asyncio.run(main()) == [1]


def test_an_error_reaches_every_job_of_the_batch(harmonizer, thumbs):
    async def main():
        batcher, _ = _batcher(harmonizer)
        good = batcher.submit(thumbs[0], None)
        bad = batcher.submit(thumbs[1], "no-such-category")  # the real model refuses it: the batch fails
        batcher.start()
        results = await asyncio.gather(good.future, bad.future, return_exceptions=True)
        after = batcher.submit(thumbs[2], None)  # the thread survives the error
        await after.future
        batcher.close(5)
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results)


def test_close_finishes_queued_jobs_then_refuses_new_ones(harmonizer, thumbs):
    async def main():
        batcher, recorder = _batcher(harmonizer, max_batch_size=2)
        jobs = [batcher.submit(t, None) for t in thumbs[:3]]
        batcher.start()
        await asyncio.to_thread(batcher.close, 10)
        with pytest.raises(BatcherClosed):
            batcher.submit(thumbs[0], None)
        await asyncio.sleep(0)  # let the loop run the results the thread handed over
        return recorder.sizes, [job.future.done() for job in jobs]

    sizes, done = asyncio.run(main())
    assert sum(sizes) == 3 and all(done)
