"""deploy/compose brought up for real: the Docker Compose built from its module (`make deploy-tools`) drives podman's
Docker-compatible API (`podman system service`), from a fresh project with no model version to a post indexed.

Registries cannot be reached here, so the test override (compose.local-stack.yaml) stands in for Kafka, Redis and
Elasticsearch with idle containers that are healthy when the local stack's service answers; PostLens' own services —
model-bootstrap, triton-cpu, worker — run from the images `make images` built, with the host's network. The seed
checkpoint is the session's tiny model, fetched by the bootstrap as a .tar.gz from SEED_URL.

podman runs health checks from systemd timers and this machine has no systemd: they do not run by themselves, so the
test drives them (`podman healthcheck run` on every container of the project, every second), and compose's
`depends_on: condition: service_healthy` reads the results as it would Docker's.
Needs root and podman (marker `images`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from elasticsearch import AsyncElasticsearch

from deploy.process import free_port
from postlens.settings import Settings
from tests.deploy.containers import built_image, podman
from tests.deploy.tools import DEPLOY, DOCKER_CONFIG, installed
from tests.support.image_server import ImageServer

pytestmark = [pytest.mark.images, pytest.mark.integration]

OVERRIDE = Path(__file__).with_name("compose.local-stack.yaml")
SERVICES = ("kafka", "redis", "elasticsearch", "model-bootstrap", "triton-cpu", "worker")
UP_TIMEOUT_S = 600.0  # the bootstrap's export and Triton's first load, on a loaded machine
INDEX_TIMEOUT_S = 180.0
POSTS = 4


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of this test's own."""
    socket = tmp_path_factory.mktemp("podman-api") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            pytest.fail(f"podman system service did not start: {service.communicate()[1][-2000:]}", pytrace=False)
        time.sleep(0.2)
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=30)


class HealthChecks:
    """Runs the health check of every container of ``project`` every second, as podman's systemd timers would."""

    def __init__(self, project: str) -> None:
        self.project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-checks")

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            project = f"label=com.docker.compose.project={self.project}"
            names = podman("ps", "--filter", project, "--format", "{{.Names}}")
            for name in names.stdout.split():
                podman("healthcheck", "run", name, timeout=60)  # a container without a health check: an error, ignored

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def state(container: str) -> dict:
    return json.loads(podman("inspect", "--format", "{{json .State}}", container).stdout)


def moment(timestamp: str) -> datetime:
    """A podman State time (RFC 3339, nanoseconds) as a datetime (microseconds: what datetime holds)."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", timestamp))


async def test_compose_brings_up_a_fresh_project_in_order_and_indexes_a_post(
    docker_host: str, tiny_checkpoint: Path, settings: Settings, es: AsyncElasticsearch, tmp_path: Path
) -> None:
    installed(DOCKER_CONFIG / "cli-plugins" / "docker-compose")
    for image in ("worker", "triton-cpu", "trainer"):
        built_image(image)
    run = uuid.uuid4().hex[:10]
    project = f"postlens-test-{run}"
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    with tarfile.open(seeds / "seed.tar.gz", "w:gz") as archive:
        archive.add(tiny_checkpoint, arcname=".")
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "DOCKER_CONFIG": str(DOCKER_CONFIG),
        "COMPOSE_PROFILES": "cpu",
        "TEST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TEST_REDIS_URL": settings.redis_url,
        "TEST_ES_URL": settings.es_url,
        "TEST_TRITON_GRPC_PORT": str(free_port()),
        "TEST_TRITON_HTTP_PORT": str(free_port()),
        "TEST_TRITON_METRICS_PORT": str(free_port()),
        "TEST_TOPIC_POSTS": f"test.compose.{run}",
        "TEST_INDEX_PREFIX": f"postlens-test-compose-{run}",
        "TEST_WORKER_WEB_PORT": str(free_port()),
    }
    compose = ["docker", "compose", "-p", project, "-f", "compose.yaml", "-f", str(OVERRIDE)]

    def run_compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*compose, *args], cwd=DEPLOY / "compose", env=env, capture_output=True, text=True, timeout=timeout
        )

    def container_logs() -> str:
        return run_compose("logs", "--no-color", "--tail", "40").stdout[-6000:]

    with ImageServer(files_dir=seeds) as server, HealthChecks(project):
        env["TEST_SEED_URL"] = server.url("files/seed.tar.gz")
        try:
            up = run_compose("up", "-d", "--no-build", "--pull", "never", "--wait", "worker", timeout=UP_TIMEOUT_S)
            assert up.returncode == 0, f"compose up failed:\n{up.stdout}{up.stderr}\n{container_logs()}"

            containers = {service: f"{project}-{service}-1" for service in SERVICES}
            states = {service: state(name) for service, name in containers.items()}
            bootstrap = states["model-bootstrap"]
            assert bootstrap["ExitCode"] == 0
            assert "wrote /models/postlens/1" in podman("logs", containers["model-bootstrap"]).stdout, (
                "a fresh project has no version: the bootstrap exports the seed as version 1"
            )
            # In order: Triton only after the bootstrap finished, the worker only once Triton was healthy (its
            # first passing check is after Triton started; the worker started after that check).
            assert moment(states["triton-cpu"]["StartedAt"]) >= moment(bootstrap["FinishedAt"])
            triton_healthy = min(
                moment(check["Start"]) for check in states["triton-cpu"]["Health"]["Log"] if check["ExitCode"] == 0
            )
            assert moment(states["worker"]["StartedAt"]) >= triton_healthy
            for service in ("kafka", "redis", "elasticsearch", "triton-cpu", "worker"):
                assert states[service]["Health"]["Status"] == "healthy", service

            posts = tmp_path / "posts.jsonl"
            posts.write_text("".join(
                json.dumps({"id": f"compose-{run}-{i}", "text": f"Ada Lovelace visited London {i}"}) + "\n"
                for i in range(POSTS)))  # fmt: skip
            publish = subprocess.run(
                [sys.executable, "-m", "stream", "publish", str(posts), "--topic", env["TEST_TOPIC_POSTS"]],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert publish.returncode == 0, publish.stderr
            index = f"{env['TEST_INDEX_PREFIX']}-posts"
            indexed, deadline = 0, time.monotonic() + INDEX_TIMEOUT_S
            while indexed < POSTS and time.monotonic() < deadline:
                if await es.indices.exists(index=index):
                    await es.indices.refresh(index=index)
                    indexed = (await es.count(index=index))["count"]
                await asyncio.sleep(2.0)
            assert indexed == POSTS, f"{indexed}/{POSTS} indexed in {INDEX_TIMEOUT_S:.0f}s:\n{container_logs()}"
            document = (await es.get(index=index, id=f"compose-{run}-0"))["_source"]
            assert document["model"]["version"] == "1", "served by the version the bootstrap exported"
        finally:
            down = run_compose("down", "--volumes", "--timeout", "30", timeout=300)
            for suffix in ("entities", "posts"):
                await es.options(ignore_status=404).indices.delete(index=f"{env['TEST_INDEX_PREFIX']}-{suffix}")
            assert down.returncode == 0, down.stderr
