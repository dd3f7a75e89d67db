"""The local Redis, through ``redis.asyncio`` (the image cache's client)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.integration


async def test_set_get_with_ttl_expires(redis_client: aioredis.Redis) -> None:
    key = f"test:deploy:{uuid.uuid4().hex}"
    await redis_client.set(key, b"image bytes", ex=2)
    assert await redis_client.get(key) == b"image bytes"
    assert 0 < await redis_client.ttl(key) <= 2
    await asyncio.sleep(2.5)
    assert await redis_client.get(key) is None
    assert await redis_client.ttl(key) == -2  # the key is gone
