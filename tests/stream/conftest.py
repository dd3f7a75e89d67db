"""Fixtures of the stream tests: synthetic posts and the image server that serves their pictures, the real model
served by a Triton of its own, and a fresh pipeline world per test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from image_server import ImageServer
from pipeline_run import PipelineRun

from postlens.settings import Settings


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


@pytest.fixture(scope="session")
def model_triton_url(stack: object) -> str:
    return "localhost:28001"  # TODO(stream): the real exported model via tests/fixtures_model.py


@pytest.fixture(scope="session")
def model_version() -> str:
    return "1"  # TODO(stream): from the exported repository


@pytest.fixture
async def pipeline(
    settings: Settings,
    model_triton_url: str,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> AsyncIterator[PipelineRun]:
    run = PipelineRun(settings, model_triton_url, tmp_path)
    yield run
    await run.cleanup(es, kafka_admin)
