"""Redis cache of preprocessed image pixels, a short negative cache of fetch failures, and decode markers.

The cache is an optimisation, never a dependency: when Redis is unreachable, or answers with something that is not
Redis (a client error that is not a ``RedisError``), every call answers "not cached" at once, the worker fetches
uncached, and Redis is tried again after ``redis_retry_after_s`` (the client reconnects).

Decode markers are how a worker that died while decoding an image tells the next one: a counter per image URL is
incremented before its decoding starts and deleted once it ended (well or not); a counter found above zero counts
the workers that died meanwhile. They live in the same Redis, with a TTL of ``fetch_decode_marker_ttl_s``, so they
survive the worker's restart and reach whichever worker owns the partition next. While Redis is unavailable no
marker is read or written: decoding goes on, bounded only by the decode pool's pixel budget.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from postlens.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "postlens:image"
T = TypeVar("T")


@dataclass(frozen=True)
class CachedFailure:
    kind: str
    message: str


def _url_digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class ImageCache:
    """Pixels keyed by sha256(url) and model image size; failures keyed by sha256(url)."""

    def __init__(self, settings: Settings, image_size: int, client: aioredis.Redis | None = None) -> None:
        self._client = client or aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            # Once, at once, on a new connection: a pooled connection Redis closed (a restart) is no outage.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._image_size = image_size
        self._ttl_s = settings.image_cache_ttl_s
        self._negative_ttl_s = settings.image_negative_ttl_s
        self._retry_after_s = settings.redis_retry_after_s
        self._marker_ttl_s = settings.fetch_decode_marker_ttl_s
        self._unavailable_until = 0.0
        # A decode's start counted and the marker's TTL (re)set; its end: the pixels cached (none after a refusal) and
        # the marker deleted. Each one command (atomic), where a MULTI/EXEC or a pipeline would be several.
        self._count_start = self._client.register_script(
            "local started = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1]) return started"
        )
        self._count_end = self._client.register_script(
            "if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end redis.call('DEL', KEYS[2])"
        )

    def _pixels_key(self, url: str) -> str:
        return f"{KEY_PREFIX}:px:{self._image_size}:{_url_digest(url)}"

    @staticmethod
    def _failure_key(url: str) -> str:
        return f"{KEY_PREFIX}:fail:{_url_digest(url)}"

    @staticmethod
    def _decoding_key(url: str) -> str:
        return f"{KEY_PREFIX}:decoding:{_url_digest(url)}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._unavailable_until

    def _mark_unavailable(self, error: Exception) -> None:
        if self.available:
            # Not a RedisError: something else answers at redis_url (a parser's ValueError), or a client bug.
            unexpected = not isinstance(error, RedisError)
            log.warning(
                "Redis unavailable (%s: %s); fetching uncached for %.0f s",
                type(error).__name__,
                error,
                self._retry_after_s,
                exc_info=unexpected,
            )
        self._unavailable_until = time.monotonic() + self._retry_after_s

    async def get(self, url: str) -> np.ndarray | CachedFailure | None:
        """Cached pixels, a remembered failure, or None (not cached, or Redis down)."""
        [found] = await self.get_many([url])
        return found

    async def get_many(self, urls: list[str]) -> list[np.ndarray | CachedFailure | None]:
        """:meth:`get` for each URL, in order, in one round trip."""
        if not urls:
            return []
        keys = [key for url in urls for key in (self._pixels_key(url), self._failure_key(url))]
        found = await self._call(lambda: self._client.mget(keys))
        if found is None:
            return [None] * len(urls)
        return [self._read(pixels, failure) for pixels, failure in zip(found[::2], found[1::2], strict=True)]

    def _read(self, pixels: object, failure: object) -> np.ndarray | CachedFailure | None:
        size = self._image_size
        # The client returns bytes (no decode_responses); anything else is not ours: treat it as a miss.
        if isinstance(pixels, bytes) and len(pixels) == size * size * 3:
            return np.frombuffer(pixels, dtype=np.uint8).reshape(size, size, 3)
        if isinstance(failure, bytes):
            try:
                kind, _, message = failure.decode("utf-8").partition("\n")
            except UnicodeDecodeError:  # not written by us: a miss, like pixels of the wrong size
                return None
            return CachedFailure(kind, message)
        return None

    async def put_failure(self, url: str, failure: CachedFailure) -> None:
        await self._set(self._failure_key(url), f"{failure.kind}\n{failure.message}".encode(), self._negative_ttl_s)

    async def _set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._call(lambda: self._client.set(key, value, ex=ttl_s))

    async def start_decoding(self, url: str) -> int | None:
        """Record that decoding ``url`` starts; how many earlier decodes of it never ended (workers that died while
        decoding it), or None when Redis is unavailable."""
        started = await self._call(lambda: self._count_start(keys=[self._decoding_key(url)], args=[self._marker_ttl_s]))
        return None if started is None else int(started) - 1

    async def end_decoding(self, url: str, pixels: np.ndarray | None = None) -> None:
        """Decoding ``url`` ended (with ``pixels``, cached in the same command, or a refusal): the worker survived
        it."""
        value = b"" if pixels is None else pixels.astype(np.uint8, copy=False).tobytes()
        keys = [self._pixels_key(url), self._decoding_key(url)]
        await self._call(lambda: self._count_end(keys=keys, args=[value, self._ttl_s]))

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """``operation``'s answer, or None at once while Redis is unavailable or when it fails."""
        if not self.available:
            return None
        try:
            return await operation()
        except Exception as error:  # noqa: BLE001 — a cache must never fail a fetch, whatever its client raises
            self._mark_unavailable(error)
            return None

    async def close(self) -> None:
        await self._client.aclose()
