"""The worker's place in its consumer group, kept through any outage and watched.

When every partition's buffer is full (the pipeline waits out an outage), Faust stops fetching, and aiokafka leaves
the group once no fetch has been in progress for ``max.poll.interval``; Faust then suspends its flow until partitions
are assigned again, and nothing fetches to rejoin: the process would live on, owning nothing (a zombie).

:class:`ConsumingWhileWaiting` keeps the membership: while the agent waits for room in its flow it holds aiokafka's
fetch context open, as a fetch in progress does, so the consumer counts as consuming and keeps its partitions
through an outage of any length. A worker that waits because it is wedged, not because a service is down, is left
to ``/healthz`` (work waiting and nothing moving for ``worker_stall_timeout_s``), not to Kafka.

:class:`GroupMembership` is the backstop: a revocation not followed by an assignment within the longest a rebalance
may take (the poll interval, which is Kafka's rebalance timeout, plus the session timeout) is treated as lost
membership: ``on_lost`` is told (the worker ends, and restarts from the committed offsets) and
:attr:`GroupMembership.healthy` turns false.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import faust

log = logging.getLogger(__name__)


class MembershipLost(RuntimeError):
    """The consumer left its group and did not rejoin."""


class GroupMembership:
    def __init__(self, rejoin_within_s: float, on_lost: Callable[[BaseException], object]) -> None:
        self._rejoin_within_s = rejoin_within_s
        self._on_lost = on_lost
        self._timer: asyncio.TimerHandle | None = None
        self.healthy = True

    def revoked(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._rejoin_within_s, self._expired)

    def assigned(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self.healthy = False
        error = MembershipLost(f"partitions revoked and none assigned for {self._rejoin_within_s:g} s")
        log.critical("%s: the consumer left its group; ending the worker", error)
        self._on_lost(error)


class ConsumingWhileWaiting:
    """Holds aiokafka's fetch context open while the agent waits (see the module's docstring).

    Private API, both: faust-streaming's aiokafka driver runs the aiokafka consumer in a thread of its own
    (``Consumer._thread``) and aiokafka times ``max.poll.interval`` from its subscription's fetch context. The
    versions are pinned in pyproject.toml; tests/stream/test_long_outage.py fails if either changes. The context is
    entered and left on the consumer's thread, where aiokafka's own fetches count in the same counter.
    """

    def __init__(self, consumer: faust.types.ConsumerT) -> None:
        self._consumer = consumer

    @contextmanager
    def held(self) -> Iterator[None]:
        thread = self._consumer._thread  # type: ignore[attr-defined]  # noqa: SLF001 — see the class docstring
        fetching = thread._ensure_consumer()._subscription.fetch_context()  # noqa: SLF001
        loop: asyncio.AbstractEventLoop = thread.thread_loop
        loop.call_soon_threadsafe(fetching.__enter__)
        try:
            yield
        finally:
            if not loop.is_closed():  # stopping: the consumer and its count are gone
                loop.call_soon_threadsafe(fetching.__exit__, None, None, None)
