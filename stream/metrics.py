"""The worker's Prometheus metrics, served as text on its web port at ``/metrics``.

One registry per worker (not the process-global default), so tests can build several pipelines in one process.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

THROUGHPUT_WINDOW_S = 60.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.posts = Counter(
            "postlens_posts", "Posts finished, by outcome (indexed or dead_lettered)", ["outcome"], registry=registry
        )
        self.throughput = Gauge(
            "postlens_posts_per_second",
            f"Posts finished per second over the last {THROUGHPUT_WINDOW_S:g} s",
            registry=registry,
        )
        self.batch_size = Histogram(
            "postlens_batch_size",
            "Messages per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "postlens_stage_seconds", "Time a micro-batch spends in each stage", ["stage"], registry=registry
        )
        self.image_cache = Counter(
            "postlens_image_cache", "Image cache lookups by result", ["result"], registry=registry
        )
        self.fetch_failures = Counter(
            "postlens_image_fetch_failures", "Images that could not be used, by kind", ["kind"], registry=registry
        )
        self.dead_letters = Counter(
            "postlens_dead_letters", "Messages sent to the dead-letter topic", ["stage", "kind"], registry=registry
        )
        self.bulk_errors = Counter(
            "postlens_bulk_item_errors",
            "Elasticsearch bulk items that failed",
            ["kind", "retriable"],
            registry=registry,
        )
        self.dependency_retries = Counter(
            "postlens_dependency_retries",
            "Retries while a dependency was unavailable",
            ["dependency"],
            registry=registry,
        )
        self.triton_seconds = Histogram(
            "postlens_triton_seconds", "Triton inference time per micro-batch", registry=registry
        )
        self.agent_crashes = Counter(
            "postlens_agent_crashes",
            "Times the pipeline agent raised (Faust then restarts it); 0 when healthy",
            registry=registry,
        )
        self.batch_splits = Counter(
            "postlens_batch_splits",
            "Micro-batches split in halves to find the one post an unforeseen fault is about",
            registry=registry,
        )
        self.in_flight = Gauge(
            "postlens_messages_in_flight", "Messages received and not yet indexed or dead-lettered", registry=registry
        )
        self.model = Gauge(
            "postlens_model_info", "Model version serving this worker (value 1)", ["name", "version"], registry=registry
        )
        self._finished: deque[tuple[float, int]] = deque()
        self._model_serving: tuple[str, str] | None = None

    def record_finished(self, indexed: int, dead_lettered: int) -> None:
        self.posts.labels("indexed").inc(indexed)
        self.posts.labels("dead_lettered").inc(dead_lettered)
        now = time.monotonic()
        self._finished.append((now, indexed + dead_lettered))
        while self._finished and self._finished[0][0] < now - THROUGHPUT_WINDOW_S:
            self._finished.popleft()
        span = max(now - self._finished[0][0], 1.0)
        self.throughput.set(sum(count for _, count in self._finished) / span)

    def record_model(self, name: str, version: str) -> None:
        if (name, version) == self._model_serving:  # told once per post: only a change is work
            return
        self._model_serving = (name, version)
        self.model.clear()
        self.model.labels(name, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
