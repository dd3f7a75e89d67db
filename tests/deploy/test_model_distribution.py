"""One model version on every Triton replica: poll mode on one shared repository (deploy/README.md, model rollout).

Two Triton processes (the wheel's server, as compose and the chart run it: ``--model-control-mode=poll``) serve one
repository. A newly exported version, then a rollback (a new newest version holding the old model), must reach
both within POLL_S + CONVERGE_S, after which both answer with the same version and never the old one again; a
client asking both all along sees no failed request.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http

from deploy.local import triton_command
from deploy.process import free_port, spawn, stop, tail
from tests.fixtures_model import TRITON_START_TIMEOUT_S
from trainer.export import load_in_triton

pytestmark = pytest.mark.slow

MODEL = "postlens"
POLL_S = 2
# The stated bound, from the new version's rename into the repository to every replica answering with it: one poll
# interval plus loading the model (tokenizer, ONNX session) on a shared 2-core machine.
CONVERGE_S = 60.0


@dataclass
class Replica:
    url: str  # HTTP host:port
    log: Path
    answers: list[tuple[float, str]] = field(default_factory=list)  # (time, version answering)
    failures: list[str] = field(default_factory=list)

    def version_since(self, since: float) -> str | None:
        """The version of the answers after ``since`` when they all agree (None before any)."""
        versions = {version for at, version in self.answers if at > since}
        return versions.pop() if len(versions) == 1 else None


def infer_once(client: triton_http.InferenceServerClient, size: int) -> str:
    text = triton_http.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"Ada Lovelace visited London"]], dtype=object))
    images = triton_http.InferInput("IMAGES", [1, 4, size, size, 3], "UINT8")
    images.set_data_from_numpy(np.zeros((1, 4, size, size, 3), np.uint8))
    mask = triton_http.InferInput("IMAGE_MASK", [1, 4], "BOOL")
    mask.set_data_from_numpy(np.zeros((1, 4), bool))
    result = client.infer(MODEL, [text, images, mask])
    return json.loads(result.as_numpy("RESULT")[0][0])["model"]["version"]


def ask_continuously(replica: Replica, size: int, stop_asking: threading.Event) -> None:
    client = triton_http.InferenceServerClient(replica.url, network_timeout=30.0)
    while not stop_asking.is_set():
        try:
            replica.answers.append((time.monotonic(), infer_once(client, size)))
        except Exception as error:  # noqa: BLE001 - every failure is what the test counts
            replica.failures.append(f"{time.monotonic():.1f}: {error}")
        time.sleep(0.05)


def wait_until_serving(replica: Replica, pid: int) -> None:
    client = triton_http.InferenceServerClient(replica.url)
    deadline = time.monotonic() + TRITON_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(MODEL):
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(1.0)
    pytest.fail(f"Triton (pid {pid}) never served {MODEL}; log:\n{tail(replica.log, 40)}", pytrace=False)


@pytest.fixture
def repo(exported_repo: Path, tmp_path: Path) -> Path:
    """A repository of this test's own holding version 1 (the session's exported tiny model)."""
    copy = tmp_path / "repository"
    shutil.copytree(exported_repo, copy)
    return copy


@pytest.fixture
def replicas(repo: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    pids, started = [], []
    for index in range(2):
        http_port = free_port()
        log = tmp_path / f"triton-{index}.log"
        command = triton_command(
            repo, grpc_port=free_port(), http_port=http_port, metrics_port=free_port(), poll_seconds=POLL_S
        )
        pids.append(spawn(command, log))
        started.append(Replica(f"localhost:{http_port}", log))
    try:
        for replica, pid in zip(started, pids, strict=True):
            wait_until_serving(replica, pid)
        yield started
    finally:
        for pid in pids:
            stop(pid)


def publish(repo: Path, source_version: int, version: int) -> float:
    """A new newest version holding ``source_version``'s model, renamed into place as trainer.export does."""
    staging = repo / MODEL / f".staging-{version}"
    shutil.copytree(repo / MODEL / str(source_version), staging)
    staging.rename(repo / MODEL / str(version))
    return time.monotonic()


def converge(replicas: list[Replica], version: str, since: float) -> float:
    """Seconds from ``since`` until every replica answered ``version`` and nothing else afterwards."""
    deadline = since + CONVERGE_S
    while time.monotonic() < deadline:
        reached = []
        for replica in replicas:
            firsts = [at for at, answered in replica.answers if at > since and answered == version]
            later = [answered for at, answered in replica.answers if firsts and at > firsts[0]]
            if firsts and set(later) <= {version}:
                reached.append(firsts[0] - since)
        if len(reached) == len(replicas):
            return max(reached)
        time.sleep(0.5)
    seen = [sorted({answered for at, answered in replica.answers if at > since}) for replica in replicas]
    pytest.fail(f"version {version} not on every replica within {CONVERGE_S:.0f}s; answered since: {seen}")


def test_a_new_version_and_a_rollback_reach_every_replica_without_a_failed_request(
    repo: Path, replicas: list[Replica], exported_repo: Path
) -> None:
    size = int(triton_http.InferenceServerClient(replicas[0].url).get_model_metadata(MODEL)["inputs"][1]["shape"][2])
    stop_asking = threading.Event()
    askers = [threading.Thread(target=ask_continuously, args=(r, size, stop_asking), daemon=True) for r in replicas]
    for asker in askers:
        asker.start()
    try:
        time.sleep(2.0)
        assert all(replica.version_since(0) == "1" for replica in replicas)
        published = publish(repo, 1, 2)
        # What trainer.retrain tells the Triton it reaches after a promotion: a polling one loads by itself.
        assert "serves postlens version 2" in load_in_triton(
            f"http://{replicas[0].url}", MODEL, 2, timeout_s=CONVERGE_S
        )
        promoted = converge(replicas, "2", published)
        time.sleep(POLL_S * 2)  # a later poll must not move any replica again
        rolled_back = converge(replicas, "3", publish(repo, 1, 3))
        time.sleep(POLL_S * 2)
    finally:
        stop_asking.set()
        for asker in askers:
            asker.join(timeout=60)
    for replica in replicas:
        assert not replica.failures, f"{replica.url}: {len(replica.failures)} failed requests: {replica.failures[:3]}"
        versions = triton_http.InferenceServerClient(replica.url).get_model_metadata(MODEL)["versions"]
        assert versions == ["3"], f"{replica.url} serves {versions}"
    answered = sum(len(replica.answers) for replica in replicas)
    print(f"\nconvergence: promotion {promoted:.1f}s, rollback {rolled_back:.1f}s (poll {POLL_S}s); {answered} answers")
