"""Triton Inference Server (CPU, Python backend) from the tritonserver binary shipped in the nvidia-pytriton wheel."""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from deploy.download import apt_install
from deploy.process import LaunchSpec
from deploy.services import Service, get_json
from postlens.settings import Settings, get_settings

# Located without importing pytriton (its client half takes over a second to import).
WHEEL_SERVER = Path(importlib.util.find_spec("pytriton").origin).resolve().parent / "tritonserver"  # type: ignore
WHEEL_LIBS = WHEEL_SERVER.parent.parent / "nvidia_pytriton.libs"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class Triton(Service):
    name = "triton"

    @property
    def port(self) -> int:
        return self.settings.triton_grpc_port

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"  # gRPC, what stream/infer.py talks to

    def prepare(self) -> None:
        prepare_backends(self.settings)
        self.settings.model_repository.mkdir(parents=True, exist_ok=True)

    def launch_spec(self) -> LaunchSpec:
        s = self.settings
        return triton_command(
            s.model_repository,
            grpc_port=s.triton_grpc_port,
            http_port=s.triton_http_port,
            metrics_port=s.triton_metrics_port,
            settings=s,
        )

    async def probe(self) -> str | None:
        return await triton_probe(self.settings.triton_http_port)


def backends_dir(settings: Settings) -> Path:
    return settings.home / "triton" / importlib.metadata.version("nvidia-pytriton") / "backends"


def prepare_backends(settings: Settings) -> Path:
    """A copy of the wheel's backends with the Python backend stub for this interpreter placed beside the backend.

    Triton looks for the stub next to ``libtriton_python.so``; the wheel keeps stubs per Python version apart,
    and site-packages stays untouched.
    """
    if ctypes.util.find_library(f"python{PYTHON_VERSION}") is None:
        apt_install([f"libpython{PYTHON_VERSION}"])  # the stub embeds the interpreter
    target = backends_dir(settings)
    stub = WHEEL_SERVER / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"
    if not (target / "python" / stub.name).exists():
        staging = target.with_name("backends.staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(WHEEL_SERVER / "backends", staging)
        shutil.copy2(stub, staging / "python" / stub.name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def triton_command(
    repository: Path,
    *,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    settings: Settings | None = None,
    poll_seconds: int | None = None,
) -> LaunchSpec:
    """How to serve ``repository`` on the given ports (tests start a second server on a temporary repository).

    Explicit model control with every model loaded at start: a new version is picked up by a load request,
    without a restart. A model that fails to load is logged but does not stop the server
    (``--exit-on-error=false``), and readiness means "the server answers" rather than "every model loaded"
    (``--strict-readiness=false``), so one broken model cannot take the serving of the others down.

    ``poll_seconds``: poll mode instead, as compose and the chart run Triton (every replica loads a new newest version
    of the shared repository by itself; no load API).
    """
    control = (
        ["--model-control-mode=explicit", "--load-model=*"]
        if poll_seconds is None
        else ["--model-control-mode=poll", f"--repository-poll-secs={poll_seconds}"]
    )
    backends = prepare_backends(settings or get_settings())
    venv_bin = Path(sys.prefix) / "bin"
    return LaunchSpec(
        argv=[
            str(WHEEL_SERVER / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            *control,
            f"--backend-directory={backends}",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--log-verbose=0",
        ],
        env={
            "LD_LIBRARY_PATH": ":".join(filter(None, [str(WHEEL_LIBS), _environ("LD_LIBRARY_PATH")])),
            # The stub runs model.py with the first python3 on PATH: the project's venv (NumPy < 2).
            "PATH": f"{venv_bin}:{_environ('PATH')}",
        },
    )


async def triton_probe(http_port: int) -> str | None:
    try:
        await get_json(f"http://localhost:{http_port}/v2/health/ready")
        metadata = await get_json(f"http://localhost:{http_port}/v2")
    except (OSError, ValueError):
        return None
    return metadata.get("version")


def _environ(name: str) -> str:
    return os.environ.get(name, "")
