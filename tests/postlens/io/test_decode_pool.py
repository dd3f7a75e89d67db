"""The decode pool never has more pixels being decoded than its budget, and a decode over the budget runs alone."""

from __future__ import annotations

import asyncio
import threading
import time

from postlens.io.decode_pool import DecodePool


class Meter:
    """Records the pixels being decoded at once, from inside the pool's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def decode(self, pixels: int, seconds: float) -> int:
        with self._lock:
            self.now += pixels
            self.peak = max(self.peak, self.now)
        time.sleep(seconds)
        with self._lock:
            self.now -= pixels
        return pixels


async def test_pixels_decoded_at_once_stay_within_the_budget() -> None:
    pool, meter = DecodePool(threads=4, budget_pixels=100), Meter()
    sizes = [60, 30, 30, 50, 10, 90, 40]
    try:
        results = await asyncio.gather(*(pool.run(size, meter.decode, size, 0.05) for size in sizes))
    finally:
        pool.close()
    assert results == sizes
    assert meter.peak <= 100
    assert pool.free_pixels == 100


async def test_a_decode_over_the_budget_runs_alone() -> None:
    pool, meter = DecodePool(threads=4, budget_pixels=100), Meter()
    try:
        await asyncio.gather(
            pool.run(10, meter.decode, 10, 0.05),
            pool.run(500, meter.decode, 500, 0.05),
            pool.run(10, meter.decode, 10, 0.05),
        )
    finally:
        pool.close()
    assert meter.peak == 500


async def test_a_cancelled_decode_holds_its_pixels_until_its_thread_ends() -> None:
    pool, meter = DecodePool(threads=2, budget_pixels=100), Meter()
    try:
        first = asyncio.ensure_future(pool.run(100, meter.decode, 100, 0.3))
        await asyncio.sleep(0.05)
        first.cancel()  # the thread cannot be stopped: its memory is still in use
        second = await pool.run(100, meter.decode, 100, 0.01)
    finally:
        pool.close()
    assert second == 100 and meter.peak == 100
