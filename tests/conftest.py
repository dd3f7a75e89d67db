"""Session fixtures: the real local stack (Kafka, Elasticsearch, Redis, Triton) and thin clients for it.

Integration tests request ``stack`` (tests marked ``integration`` get it automatically, and tests that use it are
marked ``integration``), so ``-m "not integration"`` runs the unit tests without starting anything. Label Studio, on
demand in the stack, is started by the ``label_studio`` fixture for the tests that use it. The session
stops only the services it started itself, unless ``POSTLENS_KEEP_STACK=1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from deploy.local import ServiceStatus, Stack, StackError
from postlens.settings import Settings, get_settings

T = TypeVar("T")
# Model fixtures (synthetic data, a tiny trained checkpoint, an exported repository, a Triton serving it).
pytest_plugins = ["tests.fixtures_model"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration") and "stack" not in item.fixturenames:
            item.fixturenames.insert(0, "stack")  # type: ignore[attr-defined]
        elif "stack" in item.fixturenames and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


def in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` (which uses ``asyncio.run``) away from the test session's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[dict[str, ServiceStatus]]:
    local = Stack(settings)
    try:
        statuses = in_thread(local.up)
    except StackError as exc:
        failure = str(exc)
    else:
        failure = None
    if failure:  # outside the except block, so the report shows the reason once
        pytest.fail(f"the local stack (python -m deploy.local up) could not start:\n{failure}", pytrace=False)
    yield statuses
    started = [name for name, status in statuses.items() if status.started]
    if started and os.environ.get("POSTLENS_KEEP_STACK") != "1":
        local.down(started)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: dict[str, ServiceStatus], settings: Settings) -> str:
    return settings.kafka_bootstrap


@pytest.fixture
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    yield admin
    await admin.close()


@pytest.fixture(scope="session")
async def es(stack: dict[str, ServiceStatus], settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    password = settings.es_password.get_secret_value() if settings.es_password else None
    client = AsyncElasticsearch(
        settings.es_url, basic_auth=(settings.es_username, password) if settings.es_username else None
    )
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def redis_client(stack: dict[str, ServiceStatus], settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def triton_url(stack: dict[str, ServiceStatus], settings: Settings) -> str:
    """gRPC address of the stack's Triton (serving ``settings.model_repository``)."""
    return settings.triton_url


LABEL_STUDIO = "label-studio"


@pytest.fixture(scope="session")
def label_studio(stack: dict[str, ServiceStatus], settings: Settings) -> Iterator[ServiceStatus]:
    """Label Studio of the local stack, started if it does not run (and then stopped at the end)."""
    local = Stack(settings)
    try:
        status = in_thread(lambda: local.up([LABEL_STUDIO]))[LABEL_STUDIO]
    except StackError as exc:
        failure = str(exc)
    else:
        failure = None
    if failure:
        pytest.fail(f"Label Studio (python -m deploy.local up --only label-studio) did not start:\n{failure}", False)
    yield status
    if status.started and os.environ.get("POSTLENS_KEEP_STACK") != "1":
        local.down([LABEL_STUDIO])
