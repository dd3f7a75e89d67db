"""A worker that dies while decoding an image must not die on it forever: the decode marker (in Redis, so it
outlives the process) makes the image a suspect after one death and refuses it (kind ``poison``) after two.

The deaths are real SIGKILLs of real processes, at the moment their decode runs — what the kernel's OOM killer does
to a worker over its memory limit — against the real Redis of the local stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from postlens.io.fetch import ImageFetcher
from postlens.io.image_cache import ImageCache
from postlens.settings import Settings
from tests.support.image_server import ImageServer

pytestmark = pytest.mark.integration
SIZE = 32
REPO = Path(__file__).resolve().parents[3]

# A worker process that fetches one URL and is killed (SIGKILL, no clean-up) inside the decode.
DYING_WORKER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import postlens.io.fetch as fetch
    from postlens.io.image_cache import ImageCache
    from postlens.settings import Settings

    def killed_while_decoding(*_args):
        os.kill(os.getpid(), signal.SIGKILL)

    fetch.decode_image = killed_while_decoding

    async def main(url):
        settings, size = Settings(redis_url=sys.argv[2], fetch_allowlist=["127.0.0.1/32"]), int(sys.argv[3])
        await fetch.ImageFetcher(settings, size, ImageCache(settings, size)).fetch(url)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(slow_s=4.0) as running:
        yield running


def die_decoding(url: str, settings: Settings, size: int = SIZE) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DYING_WORKER, url, settings.redis_url, str(size)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode(errors="replace")[-2000:]


async def fetch_once(url: str, settings: Settings, size: int = SIZE) -> str:
    """A fresh worker's fetch of ``url`` (a new process would have nothing but Redis in common with the last)."""
    fetch_settings = Settings(redis_url=settings.redis_url, fetch_allowlist=["127.0.0.1/32"])
    cache = ImageCache(fetch_settings, size)
    fetcher = ImageFetcher(fetch_settings, size, cache)
    try:
        return (await fetcher.fetch(url)).outcome.status
    finally:
        await fetcher.close()
        await cache.close()


async def test_an_image_that_killed_two_workers_is_not_decoded_again(server: ImageServer, settings: Settings) -> None:
    url = f"{server.url('/img/poison.png')}?run={uuid.uuid4().hex}"
    die_decoding(url, settings)
    die_decoding(url, settings)
    assert await fetch_once(url, settings) == "poison"
    assert await fetch_once(url, settings) == "poison"  # remembered, not retried


async def test_an_image_that_was_decoding_during_one_death_is_decoded_and_cleared(
    server: ImageServer, settings: Settings
) -> None:
    url = f"{server.url('/img/bystander.png')}?run={uuid.uuid4().hex}"
    die_decoding(url, settings)
    assert await fetch_once(url, settings) == "ok"  # decoded (alone) and survived: the marker is cleared
    # Workers of a model with another image size: the pixels cached above are not theirs, so they decode again.
    die_decoding(url, settings, size=SIZE * 2)
    assert await fetch_once(url, settings, size=SIZE * 2) == "ok"  # one death since the last clear, not two
