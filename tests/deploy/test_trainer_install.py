"""The trainer image's install, replayed without a container engine: the project installed from the lock NOT
editable (as deploy/docker/trainer.Dockerfile's `uv sync --no-editable`) into a fresh venv, run from a folder outside
the clone. trainer.export must find the entry model's committed source there, and the first bring-up's bootstrap
(deploy/docker/bootstrap-model.sh) exports the seed checkpoint once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, REPO
from tests.test_extras import SYSTEM_PYTHON, UV

pytestmark = pytest.mark.slow

BOOTSTRAP = DEPLOY / "docker" / "bootstrap-model.sh"


@pytest.fixture(scope="module")
def installed_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a venv holding the project and the trainer extra, not editable, exactly as locked."""
    venv = tmp_path_factory.mktemp("trainer-install") / "venv"
    command = [UV, "sync", "--frozen", "--offline", "--no-default-groups", "--extra", "trainer", "--no-editable"]
    result = subprocess.run(
        [str(arg) for arg in [*command, "--python", SYSTEM_PYTHON]],
        cwd=REPO,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"uv sync --no-editable failed:\n{result.stderr[-3000:]}"
    return venv / "bin"


def run_outside(installed_bin: Path, argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``argv`` with the installed venv first on PATH, from ``cwd``, without this clone on the import path."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("POSTLENS_", "PYTHON"))}
    environment.update(PATH=f"{installed_bin}:{os.environ['PATH']}", **env)
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)


def test_the_installed_trainer_exports_a_version(installed_bin: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    where = run_outside(installed_bin, ["python", "-c", "import trainer; print(trainer.__file__)"], tmp_path)
    assert where.stdout.startswith(str(installed_bin.parent)), f"not the installed copy: {where.stdout}{where.stderr}"
    repo = tmp_path / "models"
    export = ["python", "-m", "trainer.export", "--model", str(tiny_checkpoint), "--repo", str(repo), "--no-load"]
    result = run_outside(installed_bin, export, tmp_path)
    assert result.returncode == 0, f"export failed from a non-editable install:\n{result.stderr[-3000:]}"
    assert (repo / "postlens" / "config.pbtxt").is_file()
    assert (repo / "postlens" / "1" / "model.py").read_text() == (
        REPO / "model_repository/postlens/model.py"
    ).read_text()


def test_the_bootstrap_exports_the_seed_once_and_explains_a_missing_one(
    installed_bin: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    seed = tmp_path / "checkpoints" / "seed"
    env = {"POSTLENS_MODEL_REPOSITORY": str(tmp_path / "models"), "SEED_CHECKPOINT": str(seed)}
    missing = run_outside(installed_bin, ["sh", str(BOOTSTRAP)], tmp_path, **env)
    assert missing.returncode == 1 and "no seed checkpoint at" in missing.stderr

    shutil.copytree(tiny_checkpoint, seed)
    first = run_outside(installed_bin, ["sh", str(BOOTSTRAP)], tmp_path, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((tmp_path / "models" / "postlens" / "1" / "model_card.json").read_text())
    assert card["source_checkpoint"] == str(seed.resolve()), (
        "retraining fine-tunes from the seed in the checkpoints volume"
    )

    again = run_outside(installed_bin, ["sh", str(BOOTSTRAP)], tmp_path, **env)
    assert again.returncode == 0 and "nothing to bootstrap" in again.stdout
    assert sorted(p.name for p in (tmp_path / "models" / "postlens").iterdir() if p.name.isdigit()) == ["1"]
