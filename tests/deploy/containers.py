"""The images `make images` builds (podman, as root), started in the tests on the host's network only: test
traffic stays on this machine's loopback, against the local stack and servers of the test session."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from tests.deploy.test_images import final_user_uid

# The tag deploy/images.sh gives each image it builds (deploy/docker/<name>.Dockerfile).
TAG = "local"
# The uid every image runs as (test_images checks that they agree): what a container writes is owned by it.
IMAGE_UID = final_user_uid("worker")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def built_image(name: str) -> str:
    """``localhost/postlens-<name>:local``, failing the test with the remedy when it is not built."""
    image = f"localhost/postlens-{name}:{TAG}"
    try:
        present = podman("image", "exists", image).returncode == 0
    except FileNotFoundError:
        present = False
    if not present:
        pytest.fail(f"{image} is not built: run `make images` (podman, as root)", pytrace=False)
    return image


def run_options(env: dict[str, str], volumes: Sequence[str] = ()) -> list[str]:
    return ["--network", "host", *[f"-e{key}={value}" for key, value in env.items()], *[f"-v{v}" for v in volumes]]


def run_once(
    image: str, argv: Sequence[str], *, env: dict[str, str] | None = None, volumes: Sequence[str] = (), timeout: float
) -> subprocess.CompletedProcess:
    """``argv`` run to its end in a new container of ``image``."""
    return podman("run", "--rm", *run_options(env or {}, volumes), image, *argv, timeout=timeout)


@contextmanager
def running(
    image: str, argv: Sequence[str] = (), *, env: dict[str, str] | None = None, volumes: Sequence[str] = ()
) -> Iterator[str]:
    """A container of ``image`` running in the background (its command, or ``argv``); its name. Stopped after."""
    name = f"postlens-test-{uuid.uuid4().hex[:10]}"
    started = podman("run", "-d", "--rm", "--name", name, *run_options(env or {}, volumes), image, *argv)
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        podman("stop", "-t", "45", name)


def logs(name: str) -> str:
    result = podman("logs", name)
    return (result.stdout + result.stderr)[-4000:]
