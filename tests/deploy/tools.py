"""The deploy tools `make deploy-tools` installs under POSTLENS_HOME/deploy-tools, and the paths the checks read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from postlens.settings import get_settings
from tests.test_extras import makefile_variable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TOOLS = get_settings().home / "deploy-tools"
HELM = TOOLS / "bin" / "helm"
KUBERNETES_VALIDATE = TOOLS / "bin" / "kubernetes-validate"
# kubernetes-validate's own environment has jsonschema, which checks custom resources against their CRDs.
TOOLS_PYTHON = TOOLS / "uv-tools" / "kubernetes-validate" / "bin" / "python"
# KEDA's CRDs and its Kafka scaler's source (which trigger metadata names it reads), of the release the Makefile pins.
KEDA = TOOLS / f"keda-{makefile_variable('KEDA_VERSION')}"
# Holds cli-plugins/docker-compose: with DOCKER_CONFIG pointing here, `docker compose` is the build from its module.
DOCKER_CONFIG = TOOLS / "docker"


def installed(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make deploy-tools`", pytrace=False)
    return path


def run(argv: list[str | Path], *, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def output_of(argv: list[str | Path], *, cwd: Path = REPO, env: dict[str, str] | None = None) -> str:
    """stdout of a tool that must succeed; a failure shows the tool's own words."""
    result = run(argv, cwd=cwd, env=env)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} failed:\n{result.stdout}{result.stderr}", pytrace=False)
    return result.stdout


def settings_fields() -> set[str]:
    """Every environment variable PostLens reads (POSTLENS_ + a settings field, upper case)."""
    from postlens.settings import Settings

    return {f"POSTLENS_{name.upper()}" for name in Settings.model_fields}
