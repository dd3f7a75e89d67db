"""Fixtures of the stream tests: the image server, and a fresh pipeline world per test whose workers use the real
model (``served_model`` of tests/fixtures_model.py: the tiny model trained and exported in this session, served by
a Triton of its own)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from postlens.settings import Settings
from tests.stream.pipeline_run import PipelineRun
from tests.support.image_server import ImageServer

if TYPE_CHECKING:  # a pytest plugin (tests/conftest.py): imported here only for the type
    from tests.fixtures_model import ServedModel


@pytest.fixture(scope="session")
def image_server(model_data: Path) -> Iterator[ImageServer]:
    """Serves the synthetic set's pictures (``model_data``, what the test model was trained on) and faulty images."""
    with ImageServer(slow_s=4.0, files_dir=model_data) as server:
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


@pytest.fixture(scope="session")
def faulty_model(tmp_path_factory: pytest.TempPathFactory, start_triton: Callable[[Path], ServedModel]) -> ServedModel:
    """A Triton serving tests/stream/faulty_model as ``postlens`` version 1 (posts that break the model)."""
    repo = tmp_path_factory.mktemp("faulty-repository")
    shutil.copytree(
        Path(__file__).parent / "faulty_model", repo / "postlens", ignore=shutil.ignore_patterns("model.py")
    )
    (repo / "postlens" / "1").mkdir()
    shutil.copy(Path(__file__).parent / "faulty_model" / "model.py", repo / "postlens" / "1" / "model.py")
    return start_triton(repo)


@pytest.fixture
async def faulty_pipeline(
    request: pytest.FixtureRequest,
    settings: Settings,
    faulty_model: ServedModel,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
) -> AsyncIterator[PipelineRun]:
    """A pipeline world whose workers use the faulty model (no training needed; it answers plain posts like any
    model, SLOW ones after 2.5 s), on two partitions."""
    log_dir = Path(tempfile.gettempdir()) / "postlens-stream-tests" / f"{request.node.name}-{time.strftime('%H%M%S')}"
    run = PipelineRun(settings, faulty_model.url, log_dir, POSTLENS_TOPIC_PARTITIONS="2")
    yield run
    await run.cleanup(es, kafka_admin)
    print(f"\nworker logs: {log_dir}")
