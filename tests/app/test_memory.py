"""The pixel budget (app/memory.py): first come, first served; bounded waits; nothing leaks on cancel."""

import asyncio

import pytest

from app.memory import PixelBudget, trim, tune_allocator


def test_requests_wait_in_order_and_never_exceed_the_limit():
    async def scenario() -> list[str]:
        budget, order, peak = PixelBudget(100), [], 0

        async def request(name: str, pixels: int, hold: float) -> None:
            nonlocal peak
            held = await budget.acquire(pixels, timeout=5)
            peak = max(peak, budget.used)
            order.append(name)
            await asyncio.sleep(hold)
            budget.release(held)

        tasks = [asyncio.create_task(request("a", 60, 0.05))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("big", 90, 0.01)), asyncio.create_task(request("small", 10, 0.01))]
        await asyncio.gather(*tasks)
        assert peak <= 100 and budget.used == 0
        return order

    # "small" would fit beside "a", but "big" came first: it is not overtaken
    assert asyncio.run(scenario()) == ["a", "big", "small"]


def test_a_wait_past_its_timeout_leaves_the_line_and_lets_the_next_in():
    async def scenario() -> None:
        budget = PixelBudget(100)
        held = await budget.acquire(80, timeout=1)
        with pytest.raises(TimeoutError):
            await budget.acquire(50, timeout=0.05)
        assert budget.waiting == 0 and budget.used == 80
        waiter = asyncio.create_task(budget.acquire(30, timeout=1))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(held)
        assert budget.used == 0 and budget.waiting == 0
        assert await budget.acquire(10**9, timeout=1) == 100  # over the whole budget: runs alone

    asyncio.run(scenario())


def test_allocator_calls_do_not_fail():
    tune_allocator()  # True on glibc; False elsewhere, and nothing happens
    trim()
