"""Each extra installs exactly what its entry points import: a fresh virtualenv per extra, from the lock.

A user who installs ``postlens[worker]`` on a worker node, ``postlens[trainer]`` on a training box or
``postlens[serving]`` beside Triton gets working commands, and the worker and serving environments carry no torch.
The venvs are built by uv from its cache (``make setup`` filled it), offline, so the test needs no network.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def makefile_variable(name: str) -> str:
    """A ``NAME := value`` of the Makefile: the uv and the interpreter ``make setup`` uses are defined there once."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        key, separator, value = line.partition(":=")
        if separator and key.strip() == name:
            return value.strip()
    raise LookupError(f"the Makefile defines no {name}")


UV = (
    Path(os.environ.get("POSTLENS_HOME", Path.home() / ".cache" / "postlens"))
    / f"uv-{makefile_variable('UV_VERSION')}"
    / "bin"
    / "uv"
)
SYSTEM_PYTHON = makefile_variable("SYSTEM_PYTHON")

pytestmark = pytest.mark.slow

# What the serving extra must run: Triton's model code imports (with the backend's utilities on the path, as the
# stub provides them) and an exported version answers a post.
SERVE_ONE_POST = """
import importlib.util, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])  # triton_python_backend_utils, shipped in the nvidia-pytriton wheel
spec = importlib.util.spec_from_file_location("served_model", sys.argv[2])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
from postlens.runtime.exported import ExportedModel
from postlens.schemas import ModelRef
for precision in ("fp32", "bf16"):  # bf16: OpenVINO, which the serving extra carries
    model = ExportedModel.load(Path(sys.argv[3]), ModelRef(name="postlens", version="1"), precision=precision)
    size = model.image_size
    [prediction] = model.predict(["George Zimmerman visited Lake Como"], np.zeros((1, 4, size, size, 3), np.uint8),
                                 np.zeros((1, 4), bool))
    assert prediction.error is None, prediction.error
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
assert not heavy, f"serving imported {heavy}"
print("served", len(prediction.entities), "entities")
"""


def build_venv(extra: str, target: Path) -> Path:
    """A venv with the project and ``extra`` only, exactly as locked; returns its python."""
    if not UV.is_file():
        pytest.fail(f"uv is not at {UV}: run `make setup` first", pytrace=False)
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(target)}
    command = [
        str(UV),
        "sync",
        "--frozen",
        "--offline",
        "--no-default-groups",
        "--extra",
        extra,
        "--python",
        SYSTEM_PYTHON,
    ]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"uv sync --extra {extra} failed:\n{result.stderr[-3000:]}"
    return target / "bin" / "python"


def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(python), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def installed(python: Path, distribution: str) -> bool:
    probe = (
        "import importlib.metadata as m\n"
        f"try: m.version({distribution!r})\n"
        "except m.PackageNotFoundError: raise SystemExit(1)"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def test_worker_extra_runs_the_stream_commands_without_torch(tmp_path: Path) -> None:
    python = build_venv("worker", tmp_path / "worker")
    assert "worker" in run(python, "-m", "stream", "--help").stdout
    run(python, "-m", "stream", "worker", "--help")
    run(python, "-c", "import stream.worker")  # the Faust app and every stage import
    assert not installed(python, "torch") and not installed(python, "transformers")


def test_trainer_extra_runs_training_and_retraining(tmp_path: Path) -> None:
    python = build_venv("trainer", tmp_path / "trainer")
    assert "--preset" in run(python, "-m", "trainer.train", "--help").stdout
    run(python, "-m", "trainer.retrain", "--help")
    run(python, "-m", "trainer.label", "--help")
    run(python, "-m", "trainer.export", "--help")


def test_serving_extra_loads_an_exported_version_without_torch(tmp_path: Path, exported_repo: Path) -> None:
    python = build_venv("serving", tmp_path / "serving")
    backend_utils = run(
        python,
        "-c",
        "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('pytriton').origin)"
        ".parent / 'tritonserver' / 'backends' / 'python')",
    ).stdout.strip()
    version_dir = max(
        (path for path in (exported_repo / "postlens").iterdir() if path.name.isdigit()), key=lambda p: int(p.name)
    )
    output = run(python, "-c", SERVE_ONE_POST, backend_utils, str(version_dir / "model.py"), str(version_dir)).stdout
    assert "served" in output
    assert not installed(python, "torch") and not installed(python, "transformers")
