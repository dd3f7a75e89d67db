"""Image fetching against a real faulty image server and a real Redis: every fault gets its kind, the cache answers
repeated URLs, and a Redis outage only costs the cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from postlens.io.fetch import ImageFetcher
from postlens.io.image_cache import ImageCache
from postlens.settings import Settings
from tests.support.image_server import ImageServer
from tests.support.own_redis import OwnRedis

pytestmark = pytest.mark.integration
SIZE = 32


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer(slow_s=4.0, bomb_side=3000) as running:
        yield running


def limits(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        fetch_allowlist=["127.0.0.1/32"],
        fetch_connect_timeout_s=1.0,
        fetch_read_timeout_s=1.0,
        fetch_total_timeout_s=3.0,
        fetch_max_bytes=1024 * 1024,
        fetch_max_pixels=1_000_000,
        redis_retry_after_s=1.0,
    )


@pytest.fixture
async def fetcher(settings: Settings) -> AsyncIterator[ImageFetcher]:
    fetch_settings = limits(settings.redis_url)
    cache = ImageCache(fetch_settings, SIZE)
    images = ImageFetcher(fetch_settings, SIZE, cache)
    yield images
    await images.close()
    await cache.close()


def fresh(server: ImageServer, path: str) -> str:
    """The URL with a query no earlier run used, so the shared Redis has nothing cached for it."""
    return f"{server.url(path)}?run={uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/slow", "timeout"),
        ("/missing", "http_404"),
        ("/error", "http_5xx"),
        ("/html", "not_image"),
        ("/truncated.jpg", "truncated"),
        ("/huge", "too_large"),
        ("/huge-chunked", "too_large"),
        ("/bomb.png", "bomb"),
        ("/loop/a", "redirect_loop"),
        ("/to-private", "ssrf_blocked"),
        ("/redirect-ok", "ok"),
    ],
)
async def test_each_fault_gets_its_kind_and_is_remembered(
    fetcher: ImageFetcher, server: ImageServer, path: str, kind: str
) -> None:
    url = fresh(server, path)
    first = await fetcher.fetch(url)
    assert first.outcome.status == kind, first.outcome.message
    assert (first.pixels is not None) == (kind == "ok")
    requests = server.requests[path]

    again = await fetcher.fetch(url)
    assert again.outcome.status == kind and again.outcome.cached  # positive or negative cache
    assert server.requests[path] == requests  # answered without asking the server


async def test_a_batch_of_posts_is_answered_per_post_from_the_cache_and_the_server(
    fetcher: ImageFetcher, server: ImageServer
) -> None:
    known, new, missing = fresh(server, "/img/known.png"), fresh(server, "/img/shared.png"), fresh(server, "/missing")
    await fetcher.fetch(known)
    asked = server.requests["/img/shared.png"]
    posts = await fetcher.fetch_posts_images([[new, known], [], [missing], [new]])
    assert [[(image.outcome.status, image.outcome.cached) for image in images] for images in posts] == [
        [("ok", False), ("ok", True)],
        [],
        [("http_404", False)],
        [("ok", False)],
    ]
    assert server.requests["/img/shared.png"] == asked + 1  # posts sharing an image share its one fetch
    assert (await fetcher.fetch(new)).outcome.cached  # its pixels were cached as its decoding ended


async def test_second_fetch_is_a_cache_hit_with_identical_pixels(fetcher: ImageFetcher, server: ImageServer) -> None:
    url = fresh(server, "/img/cached.png")
    first, second = await fetcher.fetch(url), await fetcher.fetch(url)
    assert (first.outcome.cached, second.outcome.cached) == (False, True)
    assert server.requests["/img/cached.png"] == 1
    np.testing.assert_array_equal(first.pixels, second.pixels)


async def test_redis_down_costs_only_the_cache(server: ImageServer, tmp_path: Path) -> None:
    with OwnRedis(tmp_path) as redis_server:  # the shared Redis is never stopped
        fetch_settings = limits(redis_server.url)
        cache = ImageCache(fetch_settings, SIZE)
        fetcher = ImageFetcher(fetch_settings, SIZE, cache)
        try:
            before = fresh(server, "/img/before.png")
            await fetcher.fetch(before)
            assert (await fetcher.fetch(before)).outcome.cached

            redis_server.stop()
            during = fresh(server, "/img/during.png")
            outcomes = [(await fetcher.fetch(during)).outcome for _ in range(2)]
            assert [(o.status, o.cached) for o in outcomes] == [("ok", False), ("ok", False)]
            assert server.requests["/img/during.png"] == 2  # no cache, but the images still load

            redis_server.start()  # empty: it kept nothing
            await asyncio.sleep(fetch_settings.redis_retry_after_s + 0.2)
            after = fresh(server, "/img/after.png")
            assert (await fetcher.fetch(after)).outcome.cached is False
            assert (await fetcher.fetch(after)).outcome.cached is True  # the cache is used again
        finally:
            await fetcher.close()
            await cache.close()


async def _garbage_server() -> tuple[asyncio.Server, str]:
    """Something that is not Redis on the Redis URL: it answers every command with a reply redis-py's parser cannot
    read (``$abc``), on which the client raises a ValueError, not a RedisError."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            writer.write(b"$abc\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


async def test_a_cache_that_answers_garbage_costs_only_the_cache(server: ImageServer) -> None:
    garbage, url = await _garbage_server()
    fetch_settings = limits(url)
    cache = ImageCache(fetch_settings, SIZE)
    fetcher = ImageFetcher(fetch_settings, SIZE, cache)
    try:
        outcomes = [(await fetcher.fetch(fresh(server, "/img/garbage.png"))).outcome for _ in range(2)]
        assert [(o.status, o.cached) for o in outcomes] == [("ok", False), ("ok", False)]
    finally:
        await fetcher.close()
        await cache.close()
        garbage.close()


async def test_a_cached_failure_that_is_not_utf8_is_a_miss(
    fetcher: ImageFetcher, server: ImageServer, redis_client
) -> None:
    url = fresh(server, "/img/not-utf8.png")
    await redis_client.set(ImageCache._failure_key(url), b"\xff\xfe timeout\nnot ours", ex=60)  # noqa: SLF001
    fetched = await fetcher.fetch(url)
    assert (fetched.outcome.status, fetched.outcome.cached) == ("ok", False)
