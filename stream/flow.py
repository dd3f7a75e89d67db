"""Messages → micro-batches, ``worker_batches_in_flight`` of them through the pipeline at once, and the commits.

Delivery: offsets are committed in partition order by :class:`stream.commits.CommitLedger`, only across messages
written (the sink acknowledged) or dead-lettered (Kafka acknowledged); whatever is unfinished when the process
dies or loses the partition is processed again by the next owner.

Memory is bounded: :meth:`BatchFlow.put` waits when a batch is full and every slot is taken, the consumer's buffer
then fills and it stops fetching; Kafka keeps the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from postlens.io.deadletter import RawMessage
from postlens.io.retry import retry_forever
from postlens.settings import Settings
from stream.commits import CommitLedger, Received
from stream.metrics import Metrics

Partition = tuple[str, int]  # (topic, partition); faust's TP is such a tuple
Commit = Callable[[dict[Partition, int]], Awaitable[bool]]
Process = Callable[[list[RawMessage]], Awaitable[None]]


class BatchFlow:
    def __init__(self, process: Process, settings: Settings, metrics: Metrics, commit: Commit) -> None:
        self._process = process
        self._settings = settings
        self._metrics = metrics
        self._commit = commit
        self._ledger: CommitLedger[Partition] = CommitLedger()
        self._queue: asyncio.Queue[tuple[RawMessage, Received[Partition]]] = asyncio.Queue(maxsize=settings.batch_size)
        self._slots = asyncio.Semaphore(settings.worker_batches_in_flight)
        self._batches: set[asyncio.Task] = set()

    async def put(self, raw: RawMessage) -> None:
        received = self._ledger.received((raw.topic, raw.partition or 0), raw.offset or 0)
        await self._queue.put((raw, received))
        self._metrics.in_flight.set(self._ledger.in_flight)

    def forget(self, partitions: set[Partition]) -> None:
        self._ledger.forget(partitions)

    async def commit(self) -> None:
        """Commit every partition's finished prefix."""
        if (offsets := self._ledger.committable()) and await self._commit(offsets):
            self._ledger.committed(offsets)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BatchFlow]:
        tasks = [asyncio.create_task(self._form_batches()), asyncio.create_task(self._commit_periodically())]
        try:
            yield self
        finally:
            # Unfinished batches stay uncommitted: the next owner of their partitions processes them again.
            for task in [*tasks, *self._batches]:
                task.cancel()
            await asyncio.gather(*tasks, *self._batches, return_exceptions=True)
            await self.commit()

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._settings.batch_wait_s
            while len(batch) < self._settings.batch_size:
                if self._queue.empty():
                    try:
                        async with asyncio.timeout_at(deadline):
                            batch.append(await self._queue.get())
                    except TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run(self, batch: list[tuple[RawMessage, Received[Partition]]]) -> None:
        messages = [raw for raw, _ in batch]
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
            for _, received in batch:
                self._ledger.finished(received)
            self._metrics.in_flight.set(self._ledger.in_flight)
        finally:
            self._slots.release()

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.worker_commit_interval_s)
            await self.commit()
