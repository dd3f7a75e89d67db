"""Fixtures of the stream tests: synthetic posts and the image server that serves their pictures, and a fresh
pipeline world per test whose workers use the real model (``served_model`` of tests/fixtures_model.py: the tiny
model trained and exported in this session, served by a Triton of its own)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from image_server import ImageServer
from pipeline_run import PipelineRun

from postlens.settings import Settings
from tests.fixtures_model import ServedModel


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic posts (BRIEF §7) written by the trainer's generator, images included."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run(
        [sys.executable, "-m", "trainer.synth", "--out", str(out), "--posts", "400", "--seed", "11"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def image_server(synthetic_dir: Path) -> Iterator[ImageServer]:
    with ImageServer(slow_s=4.0, files_dir=synthetic_dir) as server:
        yield server


@pytest.fixture
async def pipeline(
    request: pytest.FixtureRequest,
    settings: Settings,
    served_model: ServedModel,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
) -> AsyncIterator[PipelineRun]:
    # Outside pytest's rotating tmp dirs (other test sessions on the machine rotate them away): kept for debugging.
    log_dir = Path(tempfile.gettempdir()) / "postlens-stream-tests" / f"{request.node.name}-{time.strftime('%H%M%S')}"
    run = PipelineRun(settings, served_model.url, log_dir)
    yield run
    await run.cleanup(es, kafka_admin)
    print(f"\nworker logs: {log_dir}")
