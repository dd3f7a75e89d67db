"""Real ``python -m stream worker`` subprocesses for the pipeline tests, each with its own web port and a log file
that is kept (under the test's tmp directory) for debugging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
READY_MARKERS = ("pipeline ready", "[^Worker]: Ready")


class WorkerProcess:
    def __init__(self, env: dict[str, str], web_port: int, log_path: Path) -> None:
        self.env = env
        self.web_port = web_port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.stopped_by_test = False

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker", "--web-port", str(self.web_port)],
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def died(self) -> bool:
        """Exited although the test did not stop it."""
        return self.process is not None and self.process.poll() is not None and not self.stopped_by_test

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(marker in self.log() for marker in READY_MARKERS):
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"worker exited before it was ready; log {self.log_path}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout_s:g} s; log {self.log_path}")
            time.sleep(0.5)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Sample name and sorted labels → value, from the worker's /metrics page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def health(self) -> tuple[int, dict]:
        """The status and body of the worker's /healthz page."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def metric(self, sample: str, /, **labels: str) -> float:
        return self.metrics().get((sample, tuple(sorted(labels.items()))), 0.0)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing more is committed."""
        assert self.process is not None
        self.stopped_by_test = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.stopped_by_test = True
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
