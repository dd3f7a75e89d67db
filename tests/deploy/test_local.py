"""python -m deploy.local: status shape, idempotent up, down stops only its own, clear failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local import Stack, StackError
from deploy.process import free_port, is_alive, port_open
from postlens.settings import Settings

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.local", *args], capture_output=True, text=True, timeout=600, env=os.environ
    )


def status_json() -> dict[str, dict]:
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_status_json_reports_every_service_up_with_its_version(settings: Settings) -> None:
    status = status_json()
    assert status.keys() == {"kafka", "elasticsearch", "redis", "triton"}
    assert status["kafka"]["endpoint"] == f"localhost:{settings.kafka_port}"
    assert status["elasticsearch"]["endpoint"] == f"http://localhost:{settings.es_port}"
    assert status["redis"]["endpoint"] == f"redis://localhost:{settings.redis_port}"
    assert status["triton"]["endpoint"] == f"localhost:{settings.triton_grpc_port}"
    for name, entry in status.items():
        assert entry["up"] is True, name
        assert entry["version"] not in (None, "", "unknown"), name
        assert "pid" in entry
    assert status["kafka"]["version"] == settings.kafka_version
    assert status["elasticsearch"]["version"] == settings.elasticsearch_version


def test_up_again_reuses_the_running_services() -> None:
    before = status_json()
    result = run_cli("up")
    assert result.returncode == 0, result.stdout + result.stderr
    after = status_json()
    assert {name: entry["pid"] for name, entry in after.items()} == {
        name: entry["pid"] for name, entry in before.items()
    }
    assert result.stdout.count("reused") == 4


@pytest.fixture
def isolated(tmp_path: Path, settings: Settings) -> Settings:
    """Settings for a separate stack: own cache dir, own ports (the shared stack stays untouched)."""
    return settings.model_copy(update={"home": tmp_path / "home", "redis_port": free_port()})


@pytest.fixture
def external_redis(isolated: Settings, tmp_path: Path) -> Iterator[int]:
    """A redis-server started by someone else than deploy.local, on the isolated stack's port."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(isolated.redis_port), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open(isolated.redis_port):
        assert time.monotonic() < deadline and process.poll() is None, "the external redis-server did not start"
        time.sleep(0.05)
    yield process.pid
    process.terminate()
    process.wait(timeout=10)


async def test_down_stops_what_up_started(isolated: Settings) -> None:
    stack = Stack(isolated)
    first = (await stack.up_async(["redis"]))["redis"]
    assert first.up and first.started and first.managed
    again = (await stack.up_async(["redis"]))["redis"]
    assert not again.started and again.pid == first.pid

    assert stack.down() == ["redis"]
    assert not is_alive(first.pid)
    assert not port_open(isolated.redis_port)


def test_prepare_readies_a_service_without_starting_it(isolated: Settings) -> None:
    stack = Stack(isolated)
    stack.prepare(["redis"])
    assert (isolated.home / "redis" / "data").is_dir()
    assert not port_open(isolated.redis_port)
    assert stack.down() == []  # nothing was started, so nothing is stopped


async def test_down_leaves_a_service_it_did_not_start(isolated: Settings, external_redis: int) -> None:
    stack = Stack(isolated)
    redis = (await stack.up_async(["redis"]))["redis"]
    assert redis.up and not redis.managed and redis.pid is None
    assert stack.down() == []
    assert is_alive(external_redis)
    assert (await stack.up_async(["redis"]))["redis"].up


async def test_a_port_held_by_something_else_fails_with_service_and_log(isolated: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", isolated.redis_port))
        squatter.listen()
        with pytest.raises(StackError) as failure:
            await Stack(isolated).up_async(["redis"])
    message = str(failure.value)
    assert failure.value.services == ["redis"]
    assert f"port {isolated.redis_port}" in message
    assert str(isolated.home / "logs" / "redis.log") in message
