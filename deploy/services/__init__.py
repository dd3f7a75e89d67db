"""The four local services. Each knows how to prepare its files, how to start, and how to tell it is healthy."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from deploy.download import ensure_binaries
from deploy.process import LaunchSpec
from postlens.settings import Settings


class Service(ABC):
    name: str
    on_demand = False  # started only when named (``up --only NAME``), not by a plain ``up``

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home / self.name

    @property
    @abstractmethod
    def port(self) -> int:
        """The port that answers when the service is up (the one clients use)."""

    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @abstractmethod
    def prepare(self) -> None:
        """Download, install and configure (blocking, idempotent); everything before the process starts."""

    @abstractmethod
    def launch_spec(self) -> LaunchSpec: ...

    @abstractmethod
    async def probe(self) -> str | None:
        """The server's version when it answers a real client request and is ready, else None."""

    @property
    def start_timeout_s(self) -> float:
        """How long a start may take, launch to healthy."""
        return self.settings.service_start_timeout_s

    @property
    def log_path(self) -> Path:
        return self.settings.home / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.settings.home / "run" / f"{self.name}.pid"


async def get_json(url: str, timeout_s: float = 3.0) -> Any:
    """GET ``url`` and decode its JSON body; raises OSError when the server does not answer with 2xx."""

    def fetch() -> Any:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")

    return await asyncio.to_thread(fetch)


def java_home(settings: Settings) -> Path:
    """The JDK that runs Kafka and Elasticsearch (installed from apt when there is none)."""
    if settings.java_home is not None:
        return settings.java_home
    ensure_binaries({"java": "openjdk-17-jre-headless"})
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no `java` on PATH after installing openjdk-17-jre-headless")
    return Path(os.path.realpath(java)).parent.parent
