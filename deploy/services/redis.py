"""Redis from Debian's redis-server, our own process (the Debian service is kept off our port)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from deploy.download import ensure_binaries
from deploy.process import LaunchSpec
from deploy.services import Service


class Redis(Service):
    name = "redis"

    @property
    def port(self) -> int:
        return self.settings.redis_port

    @property
    def endpoint(self) -> str:
        return f"redis://localhost:{self.port}"

    def prepare(self) -> None:
        if shutil.which("redis-server") is None:
            ensure_binaries({"redis-server": "redis-server"})
            _disable_distribution_service()
        (self.home / "data").mkdir(parents=True, exist_ok=True)

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(
            argv=[
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.home / "data"),
                # A cache: nothing to persist, and no fork for background saves on a small machine.
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ],
        )  # fmt: skip

    async def probe(self) -> str | None:
        client = aioredis.Redis(
            host="localhost", port=self.port, socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            if not await client.ping():
                return None
            return (await client.info("server"))["redis_version"]
        except (RedisError, OSError):
            return None
        finally:
            await client.aclose()


def _disable_distribution_service() -> None:
    """Installing the package may start Debian's redis on 6379; deploy.local runs its own process instead."""
    if Path("/run/systemd/system").exists():  # booted with systemd (sd_booted)
        subprocess.run(["systemctl", "disable", "--now", "redis-server"], capture_output=True)
