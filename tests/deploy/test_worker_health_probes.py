"""The orchestrators judge a worker by ``/healthz`` (stream.worker), not by ``/metrics``, which a wedged or zombie
worker still serves."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_chart_liveness_probe_asks_healthz() -> None:
    template = (DEPLOY / "helm" / "postlens" / "templates" / "worker.yaml").read_text()
    liveness = template.split("livenessProbe:", 1)[1].split("\n", 2)[1]
    assert "path: /healthz" in liveness


def test_the_compose_healthcheck_asks_healthz() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    test = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "/healthz" in test and "/metrics" not in test
