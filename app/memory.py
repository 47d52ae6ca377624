"""Memory that stays bounded and comes back: a pixel budget for decoded images in flight, and the allocator.

Admission by count (`max_queue`) does not bound memory: sixteen 49 MP uploads of 160 kB each decode to 4 GB.
So every /harmonize and /curves request reserves its image's width × height (read from the headers, before
any pixel is decoded) from one budget, `max_inflight_pixels`, and waits in line while the budget is spent.

Freed memory must also go back to the system. glibc raises its mmap threshold each time a large block is
freed (up to 32 MB), after which Pillow's 16 MB image blocks and numpy's buffers come from the heap arenas
and stay there, fragmented, after the request; RSS then ratchets up burst after burst. A fixed threshold keeps
large buffers in their own mappings (returned on free) and `malloc_trim` hands back what the arenas hold once
the last large request is done. Measured in docs/RELIABILITY.md.
"""

import asyncio
import ctypes
import ctypes.util
import logging
from collections import deque

__all__ = ["BYTES_PER_PIXEL", "SEGMENT_BYTES_PER_PIXEL", "PixelBudget", "segmentation_pixels", "tune_allocator",
           "trim"]

log = logging.getLogger(__name__)

# What one in-flight pixel costs at most: Pillow keeps RGB and RGBA at 4 bytes a pixel, the mask 1, and the
# encoded answer and upload buffers come on top (measured: docs/RELIABILITY.md). Budget bytes ≈ this × pixels.
BYTES_PER_PIXEL = 6
# A mask found by segmentation (model/segmentation.py) on top of its image: the mask at the image's size and the
# network's map resized onto the box before it is placed, one byte a pixel each.
SEGMENT_BYTES_PER_PIXEL = 2


def segmentation_pixels(pixels: int) -> int:
    """The budget (in pixels of BYTES_PER_PIXEL) that finding the mask of an image of `pixels` adds."""
    return -(-pixels * SEGMENT_BYTES_PER_PIXEL // BYTES_PER_PIXEL)

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 20  # 1 MiB: image rows, strips and tiles stay in the arenas; whole images get mappings


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 — glibc only (musl and macOS have neither)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _libc()


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold so large buffers are unmapped when freed. True when applied (glibc)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD))


def trim() -> None:
    """Give the free memory the heap arenas hold back to the system (a few ms; run it off the event loop)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PixelBudget:
    """At most `limit` pixels reserved at once; requests wait first come, first served (a large one is never
    overtaken by smaller ones forever). A reservation over the whole limit runs alone. Event-loop only."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, pixels: int, timeout: float) -> int:
        """Reserve `pixels` (clipped to the limit), waiting at most `timeout` s (TimeoutError). Returns the
        amount reserved, to give to release()."""
        pixels = min(max(pixels, 0), self.limit)
        if not self._waiting and self.used + pixels <= self.limit:
            self.used += pixels
            return pixels
        entry = (pixels, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await entry[1]
        except BaseException:  # timed out or cancelled: leave the line, or hand back what came just now
            if entry[1].done() and not entry[1].cancelled():
                self.release(pixels)
            else:
                entry[1].cancel()
                self._waiting.remove(entry)
                self._grant()  # the request behind this one may fit now
            raise
        return pixels

    def release(self, pixels: int) -> None:
        self.used -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            pixels, future = self._waiting.popleft()
            self.used += pixels
            future.set_result(None)
