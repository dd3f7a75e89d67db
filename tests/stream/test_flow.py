"""The batch flow on the in-memory harness: micro-batches of at most ``batch_size`` (a partial one after
``batch_wait_s``), commits only across finished messages whatever order batches finish in, nothing committed for a
revoked partition or during an outage. The same across a real rebalance and a SIGKILL: test_commit_order.py."""

from __future__ import annotations

import asyncio

from stream.flow import Partition
from tests.support.worker_harness import TOPIC, Harness, MemorySource, harness_settings, running_harness


async def test_messages_form_batches_of_at_most_batch_size() -> None:
    source = MemorySource()
    for n in range(10):
        source.post(f"p{n}", f"Post number {n}")
    async with running_harness(source=source) as harness:
        await harness.feed()
        await harness.wait_finished(10)
        assert max(harness.model.batches) <= harness.settings.batch_size and sum(harness.model.batches) == 10

        # A lull: the few messages there are go as one batch once batch_wait_s has passed.
        harness.model.batches.clear()
        await harness.feed([source.post(f"late{n}", "Late post") for n in range(3)])
        await harness.wait_finished(13)
        assert harness.model.batches == [3]
        await harness.wait_committed()


async def test_commits_never_pass_an_unfinished_message() -> None:
    source = MemorySource(partitions=3)
    for n in range(60):  # one post in seven is slow: the batches behind it finish first
        source.post(f"p{n}", "SLOW Anna" if n % 7 == 0 else f"Anna {n}")
    running: list[Harness] = []
    violations: list[str] = []
    commit = source.commit

    async def checked_commit(offsets: dict[Partition, int]) -> bool:
        finished = running[0].finished_keys()
        violations.extend(
            f"partition {message.partition} committed at {offsets[(TOPIC, message.partition)]} before {message.key!r}"
            for message in source.messages
            if (TOPIC, message.partition) in offsets
            and (message.offset or 0) < offsets[(TOPIC, message.partition)]
            and (message.key or b"").decode() not in finished
        )
        return await commit(offsets)

    source.commit = checked_commit  # type: ignore[method-assign]
    settings = harness_settings(worker_batches_in_flight=4, batch_size=3)
    async with running_harness(settings, source) as harness:
        running.append(harness)
        await harness.feed()
        await harness.wait_finished(60)
        await harness.wait_committed()
    assert violations == []
    assert len(source.commits) > 1  # committed as it went, not only at the end


async def test_a_revoked_partition_commits_nothing_when_its_batch_finishes_late() -> None:
    source = MemorySource(partitions=2)
    revoked = [source.post(f"r{n}", "Anna", partition=0) for n in range(3)]
    async with running_harness(source=source) as harness:
        harness.model.answer.clear()  # the batch hangs in the model
        await harness.feed(revoked)
        await asyncio.sleep(0.2)
        harness.flow.forget({(TOPIC, 0)})  # the rebalance hands partition 0 to another worker
        harness.model.answer.set()
        await harness.wait_finished(3)
        kept = [source.post(f"k{n}", "Anna", partition=1) for n in range(2)]
        await harness.feed(kept)
        await harness.wait_finished(5)
        await asyncio.sleep(0.1)
    assert source.committed == {1: 2}


async def test_an_outage_is_waited_out_and_nothing_is_committed_early() -> None:
    source = MemorySource(partitions=2)
    for n in range(8):
        source.post(f"p{n}", f"Anna {n}")
    async with running_harness(source=source) as harness:
        harness.sink.available.clear()  # the sink is down
        harness.model.unavailable_for = 2  # and the model fails twice
        await harness.feed()
        await asyncio.sleep(0.5)
        assert source.commits == [] and harness.sink.posts == {} and harness.letters == []
        harness.sink.available.set()
        await harness.wait_finished(8)
        await harness.wait_committed()
    assert harness.metrics.dependency_retries.labels("triton")._value.get() == 2  # noqa: SLF001
    assert harness.letters == []
