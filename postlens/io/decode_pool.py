"""Image decoding off the event loop, on threads of its own, within a budget of pixels decoded at once.

Pillow holds a decoded image whole (3–4 bytes a pixel, more while converting): on the default thread pool several
40-megapixel images at once exceed a worker's memory limit. Here a decode first reserves its pixel count (a request
over the whole budget reserves all of it, so it runs alone) and waits, first come first served, until that much is
free; the reservation ends when the thread finishes, not when the caller stops waiting for it, so a cancelled
decode still counts until its memory is released.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DecodePool:
    """Run CPU-heavy decodes on ``threads`` threads while at most ``budget_pixels`` are being decoded."""

    def __init__(self, threads: int, budget_pixels: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="image-decode")
        self.budget_pixels = budget_pixels
        self._free = budget_pixels
        self._queue: deque[int] = deque()  # tickets of waiting decodes, first come first served
        self._tickets = itertools.count()
        self._changed = asyncio.Condition()
        self._wakers: set[asyncio.Task] = set()

    @property
    def free_pixels(self) -> int:
        return self._free

    async def run(self, pixels: int, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on a pool thread once ``pixels`` (capped at the budget) are free."""
        cost = min(max(pixels, 1), self.budget_pixels)
        loop = asyncio.get_running_loop()
        ticket = next(self._tickets)
        async with self._changed:
            self._queue.append(ticket)
            try:
                await self._changed.wait_for(lambda: self._queue[0] == ticket and self._free >= cost)
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit too
            self._free -= cost
        future = self._executor.submit(function, *args)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, cost))
        return await asyncio.wrap_future(future)

    def _release(self, cost: int) -> None:
        self._free += cost
        if not self._queue:  # nobody waits for pixels
            return

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        waker = asyncio.ensure_future(notify())
        self._wakers.add(waker)
        waker.add_done_callback(self._wakers.discard)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
