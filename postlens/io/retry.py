"""Waiting out an unavailable dependency (Triton, Elasticsearch) without giving up the batch.

The worker holds its batch and retries with capped exponential backoff; meanwhile no offset is committed and Kafka
keeps the rest of the stream, so memory stays bounded however long the outage lasts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Backoff:
    """Capped exponential delays with jitter, so workers that lost a service together do not return in lockstep."""

    def __init__(self, max_delay_s: float, first_delay_s: float = 0.5) -> None:
        self._delay = first_delay_s
        self._max_delay_s = max_delay_s
        self.attempt = 0

    async def wait(self) -> float:
        self.attempt += 1
        wait_s = random.uniform(self._delay / 2, self._delay)
        self._delay = min(self._delay * 2, self._max_delay_s)
        await asyncio.sleep(wait_s)
        return wait_s


async def retry_forever(
    operation: Callable[[], Awaitable[T]],
    *,
    retriable: tuple[type[BaseException], ...],
    what: str,
    max_delay_s: float,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``operation`` until it does not raise one of ``retriable``; other exceptions propagate.

    A shutdown cancels the wait; the batch's offsets then stay uncommitted (see stream.worker).
    """
    backoff = Backoff(max_delay_s)
    while True:
        try:
            return await operation()
        except retriable as error:
            if on_retry is not None:
                on_retry(error)
            log.warning("%s failed (attempt %d), retrying: %s", what, backoff.attempt + 1, error)
            await backoff.wait()
