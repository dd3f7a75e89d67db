"""Messages → micro-batches, ``worker_batches_in_flight`` of them through the pipeline at once, and the commits.

Delivery: offsets are committed in partition order by :class:`stream.commits.CommitLedger`, only across messages
written (the sink acknowledged) or dead-lettered (Kafka acknowledged); whatever is unfinished when the process
dies or loses the partition is processed again by the next owner. Commits (periodic, at a revocation, at shutdown)
run one at a time, each from the ledger as it is then, so an older snapshot never lands last.

Memory is bounded: :meth:`BatchFlow.put` waits when a batch is full and every slot is taken; Kafka keeps the rest.

Failure: the flow's background tasks (batch forming, periodic commits) are watched; if one dies, the flow is broken —
``put`` raises :class:`FlowBroken` and ``on_broken`` is told, so the worker ends instead of looking healthy while
nothing moves. Shutdown lets the batches in flight finish for ``worker_shutdown_grace_s``, then commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from postlens.io.deadletter import RawMessage
from postlens.io.retry import retry_forever
from postlens.settings import Settings
from stream.commits import CommitLedger, Received
from stream.metrics import Metrics

log = logging.getLogger(__name__)
Partition = tuple[str, int]  # (topic, partition); faust's TP is such a tuple
Commit = Callable[[dict[Partition, int]], Awaitable[bool]]
Process = Callable[[list[RawMessage]], Awaitable[None]]


class FlowBroken(RuntimeError):
    """A background task of the flow died: nothing would move any more."""


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` reports: stalled when work waits and nothing was received, finished or committed lately."""

    healthy: bool
    waiting: int  # messages received and not finished, plus partitions with finished offsets not yet committed
    idle_s: float  # since the last message received, batch finished or commit


@dataclass(eq=False)
class _Batch:
    messages: list[tuple[RawMessage, Received[Partition]]]
    task: asyncio.Task | None = None

    @property
    def partitions(self) -> set[Partition]:
        return {received.partition for _, received in self.messages}


class BatchFlow:
    def __init__(
        self,
        process: Process,
        settings: Settings,
        metrics: Metrics,
        commit: Commit,
        on_broken: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._process = process
        self._settings = settings
        self._metrics = metrics
        self._commit = commit
        self._on_broken = on_broken
        self._ledger: CommitLedger[Partition] = CommitLedger()
        self._queue: asyncio.Queue[tuple[RawMessage, Received[Partition]]] = asyncio.Queue(maxsize=settings.batch_size)
        self._slots = asyncio.Semaphore(settings.worker_batches_in_flight)
        self._batches: set[_Batch] = set()
        self._commit_lock = asyncio.Lock()
        self._broken: BaseException | None = None
        self._forming: asyncio.Task | None = None
        self._last_progress = time.monotonic()
        # Read when /metrics is, not written for every message.
        metrics.in_flight.set_function(lambda: self._ledger.in_flight)

    async def put(self, raw: RawMessage) -> None:
        if self._broken is not None:
            raise FlowBroken("the batch flow stopped") from self._broken
        received = self._ledger.received((raw.topic, raw.partition or 0), raw.offset or 0)
        self._progress()
        await self._queue.put((raw, received))

    @property
    def full(self) -> bool:
        """:meth:`put` would wait: the next batch is full and every slot is taken."""
        return self._queue.full()

    def forget(self, partitions: set[Partition]) -> None:
        """The partitions were revoked: nothing of theirs is committed by this process any more, the batches of only
        theirs are cancelled (their slots go to the partitions still owned), and their queued messages dropped."""
        self._ledger.forget(partitions)
        for batch in list(self._batches):
            if batch.task is not None and batch.partitions <= partitions:
                batch.task.cancel()
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item[1].partition not in partitions:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)

    async def commit(self) -> None:
        """Commit every partition's finished prefix (one commit at a time)."""
        async with self._commit_lock:
            if (offsets := self._ledger.committable()) and await self._commit(offsets):
                self._ledger.committed(offsets)
                self._progress()

    def health(self) -> Health:
        waiting = self._ledger.in_flight + len(self._ledger.committable())
        idle_s = time.monotonic() - self._last_progress
        healthy = self._broken is None and (waiting == 0 or idle_s < self._settings.worker_stall_timeout_s)
        return Health(healthy, waiting, idle_s)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BatchFlow]:
        self._forming = self._watched(self._form_batches())
        committing = self._watched(self._commit_periodically())
        try:
            yield self
        finally:
            await self.drain()
            committing.cancel()
            await asyncio.gather(self._forming, committing, return_exceptions=True)

    async def drain(self) -> None:
        """Stop forming batches, give the batches in flight ``worker_shutdown_grace_s`` to finish, and commit. Messages
        not finished by then stay uncommitted: the next owner of their partitions processes them again."""
        if self._forming is not None:
            self._forming.cancel()
        if in_flight := [batch.task for batch in self._batches if batch.task is not None]:
            _done, unfinished = await asyncio.wait(in_flight, timeout=self._settings.worker_shutdown_grace_s)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        await self.commit()

    def _watched(self, work: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or (error := task.exception()) is None:
            return
        self._broken = error
        log.critical("a background task of the batch flow died: %r", error, exc_info=error)
        self._metrics.agent_crashes.inc()
        if self._on_broken is not None:
            self._on_broken(error)

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages = [await self._queue.get()]
            deadline = loop.time() + self._settings.batch_wait_s
            while len(messages) < self._settings.batch_size:
                if self._queue.empty():
                    try:
                        async with asyncio.timeout_at(deadline):
                            messages.append(await self._queue.get())
                    except TimeoutError:
                        break
                else:
                    messages.append(self._queue.get_nowait())
            await self._slots.acquire()
            batch = _Batch(messages)
            batch.task = asyncio.create_task(self._run(batch))
            self._batches.add(batch)
            batch.task.add_done_callback(partial(self._ended, batch))

    def _ended(self, batch: _Batch, _task: asyncio.Task) -> None:
        self._batches.discard(batch)

    async def _run(self, batch: _Batch) -> None:
        messages = [raw for raw, _ in batch.messages]
        try:
            # Process raises only on a bug outside the stages (writing its dead letters, say): counted like an agent
            # crash and retried, so the batch is never skipped and never silently stalls its partitions.
            await retry_forever(
                lambda: self._process(messages),
                retriable=(Exception,),
                what="a micro-batch",
                max_delay_s=self._settings.retry_backoff_max_s,
                on_retry=lambda _error: self._metrics.agent_crashes.inc(),
            )
            for _, received in batch.messages:
                self._ledger.finished(received)
            self._progress()
        finally:
            self._slots.release()

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.worker_commit_interval_s)
            await self.commit()
