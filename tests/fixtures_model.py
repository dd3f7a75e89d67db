"""Shared model fixtures (a pytest plugin, registered by ``tests/conftest.py``).

- ``model_data``: a small synthetic data set (docs/architecture.md) written by ``trainer.synth``;
- ``tiny_checkpoint``: the tiny preset trained on it in this session (``trainer.train``, a few epochs);
- ``exported_repo``: a temporary Triton model repository with that checkpoint exported as version 1 (fp32);
- ``served_model``: a Triton of its own serving that repository on free ports, never the shared one (tests must
  not restart or reload it); ``start_triton`` starts more such servers (for a repository a test changes);
- ``seed_checkpoints``: the tiny preset with each seed strategy (``mpcfn``, ``mgips``, ``smcl``) trained the same
  way; ``served_seeds``: one Triton serving each of them as the model ``postlens-<strategy>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.local import triton_command
from deploy.process import free_port, is_alive, spawn, stop, tail
from postlens.settings import Settings

SYNTHETIC_POSTS = 240
TRAIN_EPOCHS = 6
SEED_STRATEGIES = ("mpcfn", "mgips", "smcl")
TRITON_START_TIMEOUT_S = 300.0  # the Python backend imports torch/transformers for each model instance


@dataclass(frozen=True)
class ServedModel:
    """A Triton serving one repository: where to reach it and what it serves."""

    url: str  # gRPC host:port, what stream.stages.infer talks to
    http_url: str
    repo: Path
    log: Path

    @property
    def version(self) -> str:
        """The entry model's newest version in the repository (what version policy "latest 1" serves once loaded)."""
        return self.version_of("postlens")

    def version_of(self, model: str) -> str:
        return str(max(int(entry.name) for entry in (self.repo / model).iterdir() if entry.name.isdigit()))

    @property
    def models(self) -> list[str]:
        """The models of the repository (its folders)."""
        return sorted(entry.name for entry in self.repo.iterdir() if entry.is_dir())

    def settings(self, **overrides: object) -> Settings:
        return Settings(**{"triton_url": self.url, **overrides})


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({' '.join(argv)}):\n{result.stderr[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def model_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` and ``images/`` of a small synthetic set."""
    out = tmp_path_factory.mktemp("model-data")
    _run(["-m", "trainer.synth", "--out", str(out), "--posts", str(SYNTHETIC_POSTS), "--seed", "3"], "trainer.synth")
    return out


@pytest.fixture(scope="session")
def valid_posts(model_data: Path) -> list:
    """The synthetic set's valid posts (``postlens.schemas.Post``): held out from the tiny models' training."""
    from trainer.predict import read_posts  # imports torch: only for the tests that use it

    return read_posts(model_data / "valid.jsonl")


def _train_tiny(model_data: Path, strategy: str, out: Path) -> Path:
    """The tiny preset with ``strategy`` trained TRAIN_EPOCHS on ``model_data`` (a ``trainer.train`` process)."""
    _run(
        [
            "-m", "trainer.train", "--preset", "tiny", "--strategy", strategy,
            "--train", str(model_data / "train.jsonl"), "--valid", str(model_data / "valid.jsonl"),
            "--out", str(out), "--set", f"train.epochs={TRAIN_EPOCHS}",
        ],
        "trainer.train",
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(model_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cross-attention model trained in this session (checkpoint dir of ``trainer.train``)."""
    return _train_tiny(model_data, "cross", tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="session")
def seed_checkpoints(model_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each seed strategy's tiny model trained in this session, by strategy."""
    return {
        strategy: _train_tiny(model_data, strategy, tmp_path_factory.mktemp(f"{strategy}-checkpoint"))
        for strategy in SEED_STRATEGIES
    }


@pytest.fixture(scope="session")
def exported_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the entry model with ``tiny_checkpoint`` as version 1."""
    from trainer.export import export_model

    repo = tmp_path_factory.mktemp("model-repository")
    export_model(tiny_checkpoint, repo, precision="fp32")  # served = in-process PyTorch, to 1e-4 (the parity tests)
    return repo


@pytest.fixture(scope="session")
def start_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], ServedModel]]:
    """Start a Triton (explicit model control, every model loaded) on a repository; all are stopped at the end."""
    pids: list[int] = []

    def start(repo: Path) -> ServedModel:
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
        pids.append(
            spawn(triton_command(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port), log)
        )
        served = ServedModel(f"localhost:{grpc_port}", f"http://localhost:{http_port}", repo, log)
        _wait_until_ready(served, pids[-1])
        return served

    yield start
    for pid in pids:
        stop(pid)


@pytest.fixture(scope="session")
def served_model(exported_repo: Path, start_triton: Callable[[Path], ServedModel]) -> ServedModel:
    """The exported tiny model, served by a Triton of this test session."""
    return start_triton(exported_repo)


@pytest.fixture(scope="session")
def served_seeds(
    seed_checkpoints: dict[str, Path],
    start_triton: Callable[[Path], ServedModel],
    tmp_path_factory: pytest.TempPathFactory,
) -> ServedModel:
    """One Triton of this session serving each seed strategy's tiny model as ``postlens-<strategy>``."""
    from trainer.export import export_model

    repo = tmp_path_factory.mktemp("seed-repository")
    for strategy, checkpoint in seed_checkpoints.items():
        export_model(checkpoint, repo, name=f"postlens-{strategy}", precision="fp32")
    return start_triton(repo)


def _wait_until_ready(served: ServedModel, pid: int) -> None:
    """Until every model of the repository is ready; fails at once when the server exits or a model failed to load."""
    deadline = time.monotonic() + TRITON_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not is_alive(pid):
            pytest.fail(f"tritonserver exited while starting; log {served.log}:\n{tail(served.log, 60)}", pytrace=False)
        try:
            index = urllib.request.urlopen(
                urllib.request.Request(f"{served.http_url}/v2/repository/index", data=b"{}", method="POST"), timeout=5
            )
        except OSError:  # not listening yet (it listens once the start-up models are loaded or failed)
            time.sleep(1.0)
            continue
        entries = [entry for entry in json.load(index) if entry["name"] in served.models]
        if {entry["name"] for entry in entries if entry.get("state") == "READY"} == set(served.models):
            return
        failures = [
            f"{entry['name']}: {entry['reason']}"
            for entry in entries
            if entry.get("state") == "UNAVAILABLE" and entry.get("reason")
        ]
        if failures:
            pytest.fail(f"Triton could not load {failures[0]} (repository {served.repo})", pytrace=False)
        time.sleep(1.0)
    pytest.fail(
        f"{served.models} not all ready after {TRITON_START_TIMEOUT_S:.0f}s; log {served.log}:\n{tail(served.log, 60)}",
        pytrace=False,
    )
