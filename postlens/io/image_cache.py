"""Redis cache of preprocessed image pixels, and a short negative cache of fetch failures.

The cache is an optimisation, never a dependency: when Redis is unreachable every call answers "not cached" at
once, the worker fetches uncached, and Redis is tried again after ``redis_retry_after_s`` (the client reconnects).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from postlens.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "postlens:image"


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
        )
        self._image_size = image_size
        self._ttl_s = settings.image_cache_ttl_s
        self._negative_ttl_s = settings.image_negative_ttl_s
        self._retry_after_s = settings.redis_retry_after_s
        self._unavailable_until = 0.0

    def _pixels_key(self, url: str) -> str:
        return f"{KEY_PREFIX}:px:{self._image_size}:{_url_digest(url)}"

    @staticmethod
    def _failure_key(url: str) -> str:
        return f"{KEY_PREFIX}:fail:{_url_digest(url)}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._unavailable_until

    def _mark_unavailable(self, error: RedisError) -> None:
        if self.available:
            log.warning("Redis unavailable (%s); fetching uncached for %.0f s", error, self._retry_after_s)
        self._unavailable_until = time.monotonic() + self._retry_after_s

    async def get(self, url: str) -> np.ndarray | CachedFailure | None:
        """Cached pixels, a remembered failure, or None (not cached, or Redis down)."""
        if not self.available:
            return None
        try:
            pixels, failure = await self._client.mget(self._pixels_key(url), self._failure_key(url))
        except RedisError as error:
            self._mark_unavailable(error)
            return None
        size = self._image_size
        # The client returns bytes (no decode_responses); anything else is not ours: treat it as a miss.
        if isinstance(pixels, bytes) and len(pixels) == size * size * 3:
            return np.frombuffer(pixels, dtype=np.uint8).reshape(size, size, 3)
        if isinstance(failure, bytes):
            kind, _, message = failure.decode("utf-8").partition("\n")
            return CachedFailure(kind, message)
        return None

    async def put_pixels(self, url: str, pixels: np.ndarray) -> None:
        await self._set(self._pixels_key(url), pixels.astype(np.uint8, copy=False).tobytes(), self._ttl_s)

    async def put_failure(self, url: str, failure: CachedFailure) -> None:
        await self._set(self._failure_key(url), f"{failure.kind}\n{failure.message}".encode(), self._negative_ttl_s)

    async def _set(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self.available:
            return
        try:
            await self._client.set(key, value, ex=ttl_s)
        except RedisError as error:
            self._mark_unavailable(error)

    async def close(self) -> None:
        await self._client.aclose()
