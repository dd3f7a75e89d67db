"""``python -m trainer.retrain --watch``: retraining as a long-running service.

It looks at the labels topic every ``POSTLENS_RETRAIN_WATCH_POLL_S`` and runs :func:`~trainer.retrain.run.retrain`
(the same audit and gates as a one-shot run) when at least ``POSTLENS_RETRAIN_WATCH_LABELS`` labels wait, or when
``POSTLENS_RETRAIN_WATCH_INTERVAL_S`` passed since the last run and at least ``--min-labels`` wait. Prometheus
metrics on ``POSTLENS_RETRAIN_METRICS_PORT`` (``/metrics``): labels waiting, last run's time, status and decision,
quarantined labels by finding, the served version.

SIGTERM (or SIGINT) stops it cleanly: while idle at once; during a run, a run still before its export is abandoned
(nothing was exported, published or committed: the labels wait for the next start), and a run exporting or
committing finishes first, so a version is never written without its labels being committed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from postlens.io.kafka import BacklogReader
from postlens.settings import Settings
from trainer.retrain.report import RetrainSummary, Status, summary_text
from trainer.retrain.run import Phase, RetrainOptions, retrain

log = logging.getLogger(__name__)

UNINTERRUPTIBLE: tuple[Phase, ...] = ("export", "settle")


class StopRequested(BaseException):
    """SIGTERM during a run that has not exported yet: the run is abandoned, nothing committed (a BaseException, so
    no handler for ordinary errors swallows it)."""


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.labels_waiting = Gauge(
            "postlens_retrain_labels_waiting", "label messages after the retrain group's offsets", registry=registry
        )
        self.last_run = Gauge(
            "postlens_retrain_last_run_timestamp_seconds", "when the last run ended (unix time)", registry=registry
        )
        self.last_run_seconds = Gauge("postlens_retrain_last_run_seconds", "the last run's duration", registry=registry)
        self.runs = Counter("postlens_retrain_runs", "retraining runs by status", ["status"], registry=registry)
        self.last_status = Gauge(
            "postlens_retrain_last_status", "1 for the last run's status", ["status"], registry=registry
        )
        self.quarantined = Counter(
            "postlens_retrain_quarantined_labels", "labels quarantined by the audit, by finding", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.served_version = Gauge(
            "postlens_retrain_served_version", "the newest (served) model version", registry=registry
        )

    def record(self, summary: RetrainSummary) -> None:
        self.runs.labels(summary.status).inc()
        for status in get_args(Status):
            self.last_status.labels(status).set(1 if status == summary.status else 0)
        self.last_run.set(time.time())
        self.last_run_seconds.set(summary.seconds.get("total", 0.0))
        if summary.served_version is not None:
            self.served_version.set(summary.served_version)
        if summary.audit is not None and summary.offsets_committed:
            for group in summary.audit.groups:
                for reason in {finding.split(":", 1)[0] for finding in group.findings}:  # "type swap", "unlabeled"
                    self.quarantined.labels(reason).inc(group.labels)


async def labels_waiting(settings: Settings) -> int:
    """Label messages after the retrain group's committed offsets."""
    async with BacklogReader(settings, settings.topic_labels, settings.retrain_group) as reader:
        return reader.remaining


def watch(options: RetrainOptions, settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0)."""
    registry = CollectorRegistry()
    metrics = WatchMetrics(registry)
    server, _ = start_http_server(settings.retrain_metrics_port, registry=registry)
    log.info("retrain --watch: metrics on http://localhost:%s/metrics", server.server_port)
    stopping = threading.Event()
    phase: list[Phase | None] = [None]  # the running run's phase, None while idle

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("retrain --watch: %s, stopping", signal.Signals(signum).name)
        stopping.set()
        if phase[0] is not None and phase[0] not in UNINTERRUPTIBLE:
            raise StopRequested

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    last_run = time.monotonic()
    try:
        while not stopping.is_set():
            waiting = asyncio.run(labels_waiting(settings))
            metrics.labels_waiting.set(waiting)
            due = waiting >= settings.retrain_watch_labels or (
                waiting >= options.min_labels and time.monotonic() - last_run >= settings.retrain_watch_interval_s
            )
            if due:
                log.info("retrain --watch: %d labels wait, retraining", waiting)
                try:
                    summary = retrain(options, settings, on_phase=lambda name: phase.__setitem__(0, name))
                except StopRequested:
                    log.info("retrain --watch: the run was abandoned before its export; nothing was committed")
                    break
                finally:
                    phase[0] = None
                last_run = time.monotonic()
                metrics.record(summary)
                log.info("%s", summary_text(summary))
            stopping.wait(settings.retrain_watch_poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
    return 0
