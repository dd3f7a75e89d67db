"""Watching the worker's place in its consumer group: a revocation must be followed by an assignment.

When every partition's buffer is full (the pipeline waits out an outage), Faust stops polling Kafka; past
``max.poll.interval`` the consumer leaves the group, Faust suspends its flow until partitions are assigned again,
and nothing polls to rejoin: the process would live on, healthy-looking, owning nothing (a zombie). A revocation
not followed by an assignment within the longest a rebalance may take (the poll interval, which is Kafka's
rebalance timeout, plus the session timeout) is therefore treated as lost membership: ``on_lost`` is told (the
worker ends, and restarts from the committed offsets) and :attr:`GroupMembership.healthy` turns false.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

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
