"""The local Kafka 4 broker, through the clients PostLens uses: aiokafka and faust-streaming."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


@pytest.fixture
async def new_topic(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    """A fresh 3-partition topic, deleted afterwards."""
    name = f"test.deploy.{uuid.uuid4().hex[:10]}"
    await kafka_admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    yield name
    await kafka_admin.delete_topics([name])


async def test_produce_consume_round_trip_over_three_partitions(kafka_bootstrap: str, new_topic: str) -> None:
    sent = {(p, f"message {i} for partition {p}".encode()) for p in range(3) for i in range(5)}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for partition, value in sorted(sent):
            await producer.send_and_wait(new_topic, value, partition=partition)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        new_topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{new_topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    received: set[tuple[int, bytes]] = set()
    try:
        deadline = time.monotonic() + 30
        while received != sent and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                received |= {(tp.partition, r.value) for r in records}
    finally:
        await consumer.stop()
    assert received == sent


async def test_consumer_group_of_two_splits_the_partitions(kafka_bootstrap: str, new_topic: str) -> None:
    group = f"g-{new_topic}"
    consumers = [
        AIOKafkaConsumer(new_topic, bootstrap_servers=kafka_bootstrap, group_id=group, auto_offset_reset="earliest")
        for _ in range(2)
    ]
    for consumer in consumers:
        await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Polling keeps both members active in the group while it rebalances.
            await asyncio.gather(*(c.getmany(timeout_ms=300) for c in consumers))
            assignments = [{tp.partition for tp in c.assignment()} for c in consumers]
            if all(assignments) and not (assignments[0] & assignments[1]) and len(assignments[0] | assignments[1]) == 3:
                break
    finally:
        for consumer in consumers:
            await consumer.stop()
    assert all(assignments), f"a member got no partition: {assignments}"
    assert assignments[0] | assignments[1] == {0, 1, 2}
    assert not assignments[0] & assignments[1]


FAUST_APP = textwrap.dedent(
    """
    import os

    import faust

    app = faust.App(
        os.environ["APP_ID"],
        broker=f"kafka://{os.environ['BOOTSTRAP']}",
        store="memory://",
        web_enabled=False,
        broker_commit_every=1,
        broker_commit_interval=0.5,
    )
    posts = app.topic(os.environ["TOPIC"], value_serializer="raw")


    @app.agent(posts)
    async def consume(stream):
        async for value in stream:
            print(f"consumed {value.decode()}", flush=True)


    if __name__ == "__main__":
        app.main()
    """
)


async def test_faust_agent_consumes_and_commits(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, tmp_path: Path
) -> None:
    topic = f"test.faust.{uuid.uuid4().hex[:10]}"
    app_id = f"postlens-test-{uuid.uuid4().hex[:8]}"
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    messages = [f"post {i}" for i in range(5)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(topic, message.encode())
    finally:
        await producer.stop()

    (tmp_path / "probe_app.py").write_text(FAUST_APP)
    log_path = tmp_path / "worker.log"
    # A separate process: a Faust worker owns its event loop and signal handlers.
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "probe_app.py", "worker", "--loglevel=warn"],
            cwd=tmp_path,
            env={**os.environ, "APP_ID": app_id, "BOOTSTRAP": kafka_bootstrap, "TOPIC": topic},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    committed = -1
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.poll() is None:
            offsets = await kafka_admin.list_consumer_group_offsets(app_id)
            committed = offsets[TopicPartition(topic, 0)].offset if TopicPartition(topic, 0) in offsets else -1
            if committed == len(messages):
                break
            await asyncio.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await kafka_admin.delete_topics([topic])
    output = log_path.read_text(errors="replace")
    assert committed == len(messages), f"group {app_id} committed offset {committed}; worker log:\n{output[-3000:]}"
    assert all(f"consumed {m}" in output for m in messages), output[-3000:]
