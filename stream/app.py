"""The Faust application of a PostLens worker: broker, consumer group, topics and web port, from settings.

Messages are read as raw bytes (``raw`` serializers): validating them is the ingest stage's job, so a malformed
message becomes a dead letter instead of a deserialization crash inside Faust.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from postlens.settings import Settings


@dataclass(frozen=True)
class WorkerApp:
    app: faust.App
    posts: faust.TopicT
    dead_letters: faust.TopicT


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def create_app(settings: Settings, web_port: int | None = None) -> WorkerApp:
    port = web_port or settings.worker_web_port
    # Per worker: several workers may share a machine (and a working directory).
    datadir = settings.home / "faust" / f"{settings.consumer_group}-{port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,  # Faust's app id is the Kafka consumer group
        broker=broker_urls(settings.kafka_bootstrap),
        store="memory://",  # stateless pipeline: no tables to persist
        web_port=port,
        web_enabled=True,
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        stream_buffer_maxsize=settings.worker_buffer_max,
        # Stopping or rebalancing does not wait for the batch in flight (it may be stuck on an outage): only offsets
        # of finished batches are ever acked, so the next owner simply processes the unfinished ones again.
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",  # a new consumer group processes what is already on the topic
        producer_acks=-1,  # dead letters survive a broker failover
    )
    posts = app.topic(
        settings.topic_posts,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dead_letters = app.topic(
        settings.topic_dlq, partitions=1, key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw",
    )
    return WorkerApp(app, posts, dead_letters)
