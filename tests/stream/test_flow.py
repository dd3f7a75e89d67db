"""The batch flow on the in-memory harness: micro-batches of at most ``batch_size`` (a partial one after
``batch_wait_s``), commits only across finished messages whatever order batches finish in, nothing committed for a
revoked partition or during an outage. The same across a real rebalance and a SIGKILL: test_commit_order.py."""

from __future__ import annotations

import asyncio

import pytest

from stream.flow import FlowBroken, Partition
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
    # One batch holding both partitions: it keeps running after partition 0 is revoked (partition 1 is still owned).
    batch = [*(source.post(f"r{n}", "Anna", partition=0) for n in range(3)), source.post("k", "Anna", partition=1)]
    async with running_harness(source=source) as harness:
        harness.model.answer.clear()  # the batch hangs in the model
        await harness.feed(batch)
        await asyncio.sleep(0.2)
        harness.flow.forget({(TOPIC, 0)})  # the rebalance hands partition 0 to another worker
        harness.model.answer.set()
        await harness.wait_finished(4)
        await asyncio.sleep(0.1)
    assert source.committed == {1: 1}


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


async def test_a_dead_background_task_breaks_the_flow_and_ends_it() -> None:
    """A commit that raises something nobody foresaw kills the periodic commit task: the flow must say so."""
    source = MemorySource(partitions=1)
    ended: list[BaseException] = []

    commit = source.commit

    async def broken_commit(offsets: dict[Partition, int]) -> bool:
        if not ended:
            raise RuntimeError("a bug in the commit path")
        return await commit(offsets)

    source.commit = broken_commit  # type: ignore[method-assign]
    message = source.post("p0", "Anna")
    settings = harness_settings()
    async with running_harness(settings, source) as harness:
        harness.flow._on_broken = ended.append  # noqa: SLF001 — what the worker wires to ending the process
        await harness.feed()
        await harness.wait_finished(1)
        async with asyncio.timeout(5):
            while not ended:
                await asyncio.sleep(0.01)
        assert not harness.flow.health().healthy
        with pytest.raises(FlowBroken):
            await harness.flow.put(message)
    assert isinstance(ended[0], RuntimeError)


async def test_commits_run_one_at_a_time_so_an_offset_never_goes_back() -> None:
    source = MemorySource(partitions=1)
    calls = 0
    commit = source.commit

    async def slow_first_commit(offsets: dict[Partition, int]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.3)  # an older snapshot, held up on its way to Kafka
        return await commit(offsets)

    source.commit = slow_first_commit  # type: ignore[method-assign]
    async with running_harness(harness_settings(worker_commit_interval_s=60), source) as harness:
        await harness.feed([source.post("a", "Anna")])
        await harness.wait_finished(1)
        first = asyncio.create_task(harness.flow.commit())  # e.g. the periodic commit
        await asyncio.sleep(0.05)
        await harness.feed([source.post("b", "Bob")])
        await harness.wait_finished(2)
        await harness.flow.commit()  # e.g. the revocation's commit
        await first
    offsets = [commit[(TOPIC, 0)] for commit in source.commits]
    assert offsets == sorted(offsets) and offsets[-1] == 2


async def test_a_revoked_partitions_batch_is_cancelled_and_frees_its_slot() -> None:
    source = MemorySource(partitions=2)
    settings = harness_settings(worker_batches_in_flight=1)
    async with running_harness(settings, source) as harness:
        harness.sink.available.clear()  # partition 0's batch hangs in the sink
        await harness.feed([source.post(f"r{n}", "Anna", partition=0) for n in range(2)])
        await asyncio.sleep(0.2)
        harness.flow.forget({(TOPIC, 0)})
        harness.sink.available.set()
        await harness.feed([source.post(f"k{n}", "Anna", partition=1) for n in range(2)])
        await harness.wait_finished(2)
        await asyncio.sleep(0.1)
    assert sorted(harness.sink.posts) == ["k0", "k1"]  # the revoked batch never wrote
    assert source.committed == {1: 2}


async def test_shutdown_lets_the_batches_in_flight_finish_within_the_grace_period() -> None:
    source = MemorySource(partitions=1)
    async with running_harness(harness_settings(worker_shutdown_grace_s=5), source) as harness:
        await harness.feed([source.post("slow", "SLOW Anna")])  # takes slow_s (0.5 s)
        await asyncio.sleep(0.2)
    assert list(harness.sink.posts) == ["slow"] and source.committed == {0: 1}

    late = MemorySource(partitions=1)
    async with running_harness(harness_settings(worker_shutdown_grace_s=0.1), late) as harness:
        harness.sink.available.clear()  # an outage longer than the grace period
        await harness.feed([late.post("stuck", "Anna")])
        await asyncio.sleep(0.1)
    assert harness.sink.posts == {} and late.committed == {}  # given up, uncommitted: the next owner redoes it


async def test_health_fails_only_when_work_waits_and_nothing_moves() -> None:
    source = MemorySource(partitions=1)
    async with running_harness(harness_settings(worker_stall_timeout_s=0.3), source) as harness:
        await asyncio.sleep(0.4)
        assert harness.flow.health().healthy  # idle, but nothing waits
        harness.sink.available.clear()
        await harness.feed([source.post("p", "Anna")])
        await asyncio.sleep(0.5)
        health = harness.flow.health()
        assert not health.healthy and health.waiting == 1 and health.idle_s >= 0.3
        harness.sink.available.set()
        await harness.wait_committed()
        assert harness.flow.health().healthy
