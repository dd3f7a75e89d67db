"""The Faust application of a PostLens worker: broker, consumer group, topics and web port, from settings.

Messages are read as raw bytes (``raw`` serializers): validating them is the ingest stage's job, so a malformed
message becomes a dead letter instead of a deserialization crash inside Faust.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import faust

from postlens.io.connections import faust_broker_options
from postlens.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerApp:
    app: faust.App
    posts: faust.TopicT
    dead_letters: faust.TopicT


def web_port(settings: Settings, requested: int | None) -> int:
    """The port of the worker's web page (``/metrics``).

    A port asked for (``--web-port`` or ``POSTLENS_WORKER_WEB_PORT``) is used as is; by default the worker takes
    ``worker_web_port`` when it is free and any free port otherwise, so a second worker on the machine just starts.
    """
    if requested is not None:
        return requested
    if "worker_web_port" in settings.model_fields_set or _is_free(settings.worker_web_port):
        return settings.worker_web_port
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    log.warning("web port %d is taken (another worker?); serving /metrics on port %d", settings.worker_web_port, port)
    return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT does not count
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def create_app(settings: Settings, requested_web_port: int | None = None) -> WorkerApp:
    port = web_port(settings, requested_web_port)
    log.info("web page (/metrics) on port %d", port)
    # Per worker: several workers may share a machine (and a working directory).
    datadir = settings.home / "faust" / f"{settings.consumer_group}-{port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,  # Faust's app id is the Kafka consumer group
        **faust_broker_options(settings),
        store="memory://",  # stateless pipeline: no tables to persist
        web_port=port,
        web_enabled=True,
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        broker_max_poll_interval=settings.worker_max_poll_interval_s,
        stream_buffer_maxsize=settings.worker_buffer_max,
        # Stopping or rebalancing does not wait for the batches in flight (they may be stuck on an outage): only
        # offsets of finished messages are ever committed, so the next owner processes the unfinished ones again.
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",  # a new consumer group processes what is already on the topic
        producer_acks=-1,  # dead letters survive a broker failover
    )
    posts = app.topic(
        settings.topic_posts,
        acks=False,  # offsets are committed by the worker's own ledger, in partition order (stream.commits)
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dead_letters = app.topic(
        settings.topic_dlq,
        partitions=1,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    return WorkerApp(app, posts, dead_letters)
