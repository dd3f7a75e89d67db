"""A real worker on a secured Kafka and Elasticsearch uses its secrets and never shows them.

The worker (``python -m stream worker``) runs against a throw-away Kafka whose only client listener wants SASL
SCRAM-SHA-256, and reaches Elasticsearch through a gate that answers 401 unless the request carries the API key —
so a post indexed end to end proves both secrets were used. Its log and its /metrics page must not contain them,
nor may the log of a worker refused for a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from deploy.process import LaunchSpec, free_port, spawn, stop, tail
from deploy.services import java_home
from deploy.services.kafka import SINGLE_NODE_PROPERTIES, Kafka
from postlens.io.connections import kafka_client_options
from postlens.settings import Settings
from tests.stream.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KAFKA_USER = "postlens"
KAFKA_PASSWORD = f"kafka-pw-{secrets.token_hex(12)}"
ES_API_KEY = base64.b64encode(f"postlens-key:{secrets.token_hex(16)}".encode()).decode()
BROKER_PASSWORD = secrets.token_hex(12)  # the broker's own inter-broker login


def broker_config(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@localhost:{controller_port}",
            f"listeners=SASL_PLAINTEXT://localhost:{port},CONTROLLER://localhost:{controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://localhost:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256",
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="broker" password="{BROKER_PASSWORD}";',
            f"log.dirs={data_dir}",
            *SINGLE_NODE_PROPERTIES,
            "",
        ]
    )


def worker_kafka_settings(bootstrap: str, password: str = KAFKA_PASSWORD) -> dict[str, str]:
    return {
        "POSTLENS_KAFKA_BOOTSTRAP": bootstrap,
        "POSTLENS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "POSTLENS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "POSTLENS_KAFKA_SASL_USERNAME": KAFKA_USER,
        "POSTLENS_KAFKA_SASL_PASSWORD": password,
    }


def as_settings(env: dict[str, str]) -> Settings:
    return Settings(_env_file=None, **{key.removeprefix("POSTLENS_").lower(): value for key, value in env.items()})


@pytest.fixture(scope="module")
def sasl_kafka(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Kafka (the local stack's jars) whose client listener accepts only SCRAM logins; its bootstrap."""
    home = tmp_path_factory.mktemp("sasl-kafka")
    port, controller_port = free_port(), free_port()
    config = home / "server.properties"
    config.write_text(broker_config(home / "data", port, controller_port))
    kafka = Kafka(settings)
    java = [
        str(java_home(settings) / "bin" / "java"),
        "-Xms256m",
        "-Xmx384m",
        "-cp",
        f"{kafka.libs}/*",
        f"-Dlog4j2.configurationFile={kafka.home / 'config' / 'log4j2.properties'}",
    ]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    # SCRAM users live in the cluster metadata; in KRaft they are written when the storage is formatted.
    users = [
        f"SCRAM-SHA-256=[name={name},password={password}]"
        for name, password in (("broker", BROKER_PASSWORD), (KAFKA_USER, KAFKA_PASSWORD))
    ]
    subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
            *[arg for user in users for arg in ("--add-scram", user)],
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log_path = home / "kafka.log"
    pid = spawn(LaunchSpec([*java, "kafka.Kafka", str(config)], cwd=home), log_path)
    bootstrap = f"localhost:{port}"
    try:
        asyncio.run(wait_for_sasl_broker(as_settings(worker_kafka_settings(bootstrap)), log_path))
        yield bootstrap
    finally:
        stop(pid)


async def wait_for_sasl_broker(settings: Settings, log_path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(**kafka_client_options(settings), request_timeout_ms=3000)
        try:
            await admin.start()
            if (await admin.describe_cluster()).get("brokers"):
                return
        except Exception:  # noqa: BLE001 — polling a starting broker: any client failure means "not up yet"
            pass
        finally:
            await admin.close()
        assert time.monotonic() < deadline, f"SASL Kafka not ready:\n{tail(log_path)}"
        await asyncio.sleep(1.0)


class ApiKeyGate:
    """An Elasticsearch in front of the stack's, which refuses (401) any request without the API key."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.expected = f"ApiKey {api_key}"
        self.authorized = 0
        self.refused = 0
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.expected:
            self.refused += 1
            return web.json_response({"error": "missing or wrong API key"}, status=401)
        self.authorized += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "authorization"}}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as upstream:
            body = await upstream.read()
            passed = {k: v for k, v in upstream.headers.items() if k.lower() in {"content-type", "x-elastic-product"}}
            return web.Response(status=upstream.status, body=body, headers=passed)

    async def __aenter__(self) -> ApiKeyGate:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture
async def es_gate(settings: Settings) -> AsyncIterator[ApiKeyGate]:
    async with ApiKeyGate(settings.es_url, ES_API_KEY) as gate:
        yield gate


def worker_env(settings: Settings, bootstrap: str, gate: ApiKeyGate, triton_url: str, home: Path) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        **worker_kafka_settings(bootstrap),
        "POSTLENS_TOPIC_POSTS": f"test.secrets.{run}",
        "POSTLENS_TOPIC_DLQ": f"test.secrets.{run}.dlq",
        "POSTLENS_CONSUMER_GROUP": f"test-secrets-{run}",
        "POSTLENS_ES_URL": gate.url,
        "POSTLENS_ES_API_KEY": ES_API_KEY,
        "POSTLENS_ES_INDEX_ENTITIES": f"postlens-test-{run}-entities",
        "POSTLENS_ES_INDEX_POSTS": f"postlens-test-{run}-posts",
        "POSTLENS_REDIS_URL": settings.redis_url,
        "POSTLENS_TRITON_URL": triton_url,
        "POSTLENS_HOME": str(home),
        "POSTLENS_WORKER_SESSION_TIMEOUT_S": "8",
        "POSTLENS_RETRY_BACKOFF_MAX_S": "2",
    }


def assert_no_secret(text: str, where: str) -> None:
    for name, secret in (("Kafka password", KAFKA_PASSWORD), ("Elasticsearch API key", ES_API_KEY)):
        assert secret not in text, f"the {name} shows in {where}"
    # Not even decoded: the key's secret half.
    assert base64.b64decode(ES_API_KEY).decode().split(":")[1] not in text, f"the API key shows decoded in {where}"


async def remove_indices(es: AsyncElasticsearch, env: dict[str, str]) -> None:
    indices = [env["POSTLENS_ES_INDEX_ENTITIES"], env["POSTLENS_ES_INDEX_POSTS"]]
    await es.indices.delete(index=",".join(indices), ignore_unavailable=True)
    for index in indices:  # the worker installs one template per index (stream/stages/index_templates.py)
        await es.options(ignore_status=404).indices.delete_index_template(name=f"{index}-template")


async def wait_indexed(es: AsyncElasticsearch, index: str, worker: WorkerProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not (await es.indices.exists(index=index)) or (await es.count(index=index))["count"] < 1:
        assert not worker.died, f"the worker died:\n{worker.log()[-3000:]}"
        assert time.monotonic() < deadline, f"no post indexed in {timeout_s:g} s; log {worker.log_path}"
        await asyncio.sleep(1.0)
        if await es.indices.exists(index=index):
            await es.indices.refresh(index=index)


async def test_worker_uses_its_secrets_and_never_shows_them(
    settings: Settings, sasl_kafka: str, es_gate: ApiKeyGate, served_model, es: AsyncElasticsearch, tmp_path: Path
) -> None:
    env = worker_env(settings, sasl_kafka, es_gate, served_model.url, tmp_path / "home")
    worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        producer = AIOKafkaProducer(**kafka_client_options(as_settings(env)))
        await producer.start()
        try:
            post = {"id": "secret-test-1", "text": "Jordan flew to Paris with Microsoft staff"}
            await producer.send_and_wait(env["POSTLENS_TOPIC_POSTS"], json.dumps(post).encode(), key=b"secret-test-1")
        finally:
            await producer.stop()
        await wait_indexed(es, env["POSTLENS_ES_INDEX_POSTS"], worker)
        metrics_page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5).read().decode()
        )
    finally:
        worker.stop()
        await remove_indices(es, env)
    # Both secrets were used: SCRAM let the worker in, the gate let every Elasticsearch request through.
    assert es_gate.authorized > 0 and es_gate.refused == 0
    assert "postlens_posts_total" in metrics_page
    assert_no_secret(worker.log(), f"the worker's log {worker.log_path}")
    assert_no_secret(metrics_page, "the /metrics page")


async def test_a_refused_login_is_reported_without_the_password(
    settings: Settings, sasl_kafka: str, es_gate: ApiKeyGate, tmp_path: Path
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    env = {
        **worker_env(settings, sasl_kafka, es_gate, settings.triton_url, tmp_path / "home"),
        **worker_kafka_settings(sasl_kafka, password=wrong),
    }
    worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
    try:
        exit_code = await asyncio.to_thread(worker.process.wait, 120)
    finally:
        worker.stop()
    log = worker.log()
    assert exit_code != 0
    assert "Authentication failed" in log, log[-3000:]
    assert wrong not in log
