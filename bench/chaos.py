"""Chaos run: ``python -m bench.chaos [--faults a,b] [--rate N]`` (``make chaos``).

Real ``python -m stream worker`` processes under a steady load of real tweets (the valid splits of twitter2015 and
twitter2017 under ``shared_data_dir``; one post in four with a picture from a local image host, one in fifty not
JSON, so the image cache and the dead-letter topic are in use), at half the maximum measured first. One fault at a
time, each in a world of its own (topic, dead-letter topic, consumer group, indices):

worker SIGKILL · rolling SIGTERM restart · scale 1→3→1 · Elasticsearch down 60 s · an outage longer than Kafka's
max.poll.interval (shortened for that row) · Triton restart · the model unloaded and loaded · Redis down · Kafka
broker restart while posts arrive · the dead-letter topic refusing writes · Elasticsearch answering 401 until the
key is restored · one post id published twice with different texts while the first is in flight.

Every count comes from outside the workers: the posts index (each post's text carries its version, ``[v2] …``) and
a scan of the dead-letter topic, against the ids published. ``lost``: published, but neither indexed nor
dead-lettered when the row's settle time ran out; ``older won``: the index holds an older version than the last
published. ``recovery``: from the fault's end until every post published before it was settled (indexed or
dead-lettered), from the documents' ``indexed_at`` and the letters' Kafka times.

Nothing of the shared stack is stopped: the run starts its own Kafka (deploy.services.kafka, free ports, the shared
jars) and Redis, its own Triton (the tiny model of ``bench.serving.default_checkpoint``, trained on synthetic posts),
and reaches the shared Elasticsearch through proxies it can cut (a TCP relay) or make answer 401 (an HTTP proxy that
checks the workers' API key). Writes ``reports/chaos.md``, ``reports/chaos.json`` and ``reports/chaos.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.serving import ServingConfig, TritonServer, default_checkpoint
from bench.stream import ImageSource, commit, isolated_settings, machine
from deploy.process import LaunchSpec, free_port, is_alive, spawn, stop, tail
from deploy.services import Service
from deploy.services.kafka import Kafka
from deploy.services.redis import Redis
from postlens.io.connections import es_client, kafka_client_options
from postlens.io.kafka import BacklogReader, ensure_topics
from postlens.schemas import DeadLetter
from postlens.settings import Settings, get_settings
from tests.support.auth_proxy import AuthProxy
from tests.support.tcp_proxy import TcpProxy
from trainer.data.conll import read_conll
from trainer.export import export_model

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
READY_MARKERS = ("pipeline ready", "[^Worker]: Ready")
VERSION = re.compile(r"^\[v(\d+)\] ")
API_KEY = "chaos-run-key"
SESSION_TIMEOUT_S = 10.0  # the group notices a killed worker in 10 s instead of 30: shorter rows, same behaviour
POLL_INTERVAL_S = 20.0  # max.poll.interval of the outage-longer-than-the-poll-interval row


def tweets(settings: Settings) -> list[str]:
    texts = []
    for dataset in ("twitter2015", "twitter2017"):
        path = settings.shared_data_dir / dataset / "valid.txt"
        if path.is_file():
            texts += [example.text for example in read_conll(path)[0]]
    if not texts:
        raise SystemExit(f"no tweets under {settings.shared_data_dir} (twitter2015|2017/valid.txt)")
    return texts


# --------------------------------------------------------------------------------------------------------------
# The run's own services and proxies
# --------------------------------------------------------------------------------------------------------------


class OwnService:
    """A deploy.services service under the run's directory, on its own ports; stopped and started by the faults."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.pid: int | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.service.prepare)
        self.pid = spawn(self.service.launch_spec(), self.service.log_path)
        deadline = time.monotonic() + 180
        while not await self.service.probe():
            if not is_alive(self.pid) or time.monotonic() > deadline:
                raise RuntimeError(f"{self.service.name} did not start; log {self.service.log_path}:\n"
                                   f"{tail(self.service.log_path, 30)}")  # fmt: skip
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.pid is not None:
            await asyncio.to_thread(stop, self.pid)
            self.pid = None


def own_kafka(home: Path, base: Settings) -> OwnService:
    settings = base.model_copy(update={"home": home, "kafka_port": free_port(), "kafka_controller_port": free_port()})
    service = Kafka(settings)
    shared_libs = base.home / "kafka" / base.kafka_version / "libs"
    if shared_libs.is_dir():  # the shared stack's jars: no second download
        service.libs.parent.mkdir(parents=True, exist_ok=True)
        service.libs.symlink_to(shared_libs, target_is_directory=True)
    return OwnService(service)


@dataclass
class World:
    """What every row shares: the services, proxies, model server, image host and the load's parameters."""

    base: Settings  # the run's Kafka and Redis, the real Elasticsearch
    kafka: OwnService
    redis: OwnService
    triton: TritonServer
    es_relay: TcpProxy
    es_auth: AuthProxy
    images: ImageSource
    producer: AIOKafkaProducer
    texts: list[str]
    workdir: Path
    checkout: Path
    rate: float = 0.0


# --------------------------------------------------------------------------------------------------------------
# One row: its world, workers, load and counts
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Published:
    version: int
    at: float  # time.time() of the first send
    valid: bool


@dataclass
class Row:
    fault: str
    published: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    older_version_won: int = 0
    recovery_s: float | None = None  # None: not every post settled within the settle time
    worst_s: float = 0.0  # the longest any post took from publish to settled
    fault_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (published − fault start, settle latency)


class Phase:
    def __init__(self, world: World, fault: str, run_id: str) -> None:
        self.world = world
        self.fault = fault
        self.settings = isolated_settings(world.base, f"chaos-{run_id}-{fault}")
        self.workers: list[int] = []
        self.logs: dict[int, Path] = {}
        self.env_extra: dict[str, str] = {}
        self.es_url = world.es_relay.url
        self.published: dict[str, Published] = {}
        self._sends: set[asyncio.Task] = set()
        self._publisher: asyncio.Future | None = None
        self._count = 0

    # --- workers --------------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        s, w = self.settings, self.world
        return {
            "PYTHONPATH": str(w.checkout),
            "POSTLENS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "POSTLENS_REDIS_URL": s.redis_url,
            "POSTLENS_ES_URL": self.es_url,
            "POSTLENS_ES_API_KEY": API_KEY,
            "POSTLENS_TRITON_URL": w.triton.url,
            "POSTLENS_TOPIC_POSTS": s.topic_posts,
            "POSTLENS_TOPIC_DLQ": s.topic_dlq,
            "POSTLENS_CONSUMER_GROUP": s.consumer_group,
            "POSTLENS_ES_INDEX_ENTITIES": s.es_index_entities,
            "POSTLENS_ES_INDEX_POSTS": s.es_index_posts,
            "POSTLENS_HOME": str(w.workdir / "home"),
            "POSTLENS_FETCH_ALLOWLIST": json.dumps(["127.0.0.1/32"]),
            "POSTLENS_WORKER_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
            **self.env_extra,
        }

    async def start_worker(self) -> int:
        index = len(self.logs)
        log = self.world.workdir / f"{self.fault}-worker-{index}.log"
        argv = [sys.executable, "-m", "stream", "worker", "--web-port", str(free_port())]
        pid = spawn(LaunchSpec(argv, env=self.env(), cwd=self.world.checkout), log)
        self.workers.append(pid)
        self.logs[pid] = log
        deadline = time.monotonic() + 180
        while not all(marker in log.read_text(errors="replace") for marker in READY_MARKERS):
            if not is_alive(pid):
                raise RuntimeError(f"worker exited while starting; log {log}:\n{tail(log, 40)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after 180 s; log {log}")
            await asyncio.sleep(0.5)
        return pid

    def kill(self, pid: int) -> None:
        os.killpg(pid, signal.SIGKILL)
        self.workers.remove(pid)

    async def terminate(self, pid: int) -> None:
        await asyncio.to_thread(stop, pid, 60.0)
        self.workers.remove(pid)

    # --- load -----------------------------------------------------------------------------------------------

    def publish(self, post_id: str, version: int, text: str, valid: bool = True) -> None:
        """Send (and, on failure, send again until Kafka has it) one version of one post; sends keep their order."""
        n = self._count
        self._count += 1
        document: dict[str, object] = {"id": post_id, "text": f"[v{version}] {text}"}
        if n % 4 == 0:  # a picture from a pool of 40, so the cache both hits and misses
            document["images"] = [f"http://127.0.0.1:{self.world.images.port}/pic-{n % 40}.jpg"]
        value = json.dumps(document).encode()
        if not valid:
            value = value[: len(value) // 2]  # cut short: not JSON
        self.published[post_id] = Published(version, time.time(), valid)

        async def send() -> None:
            while True:
                try:
                    await (await self.world.producer.send(self.settings.topic_posts, value, key=post_id.encode()))
                    return
                except Exception:  # noqa: BLE001 — the broker restarts in one row: keep the post until Kafka has it
                    await asyncio.sleep(1.0)

        task = asyncio.ensure_future(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def load(self, seconds: float) -> None:
        """Let ``seconds`` pass under the steady load; the first call starts it, :meth:`stop_load` ends it, so the
        load goes on meanwhile whatever the fault waits for (a worker or a broker starting)."""
        if self._publisher is None:
            self._publisher = asyncio.ensure_future(self._publish_steadily())
        await asyncio.sleep(seconds)

    async def _publish_steadily(self) -> None:
        started, rate, texts = time.perf_counter(), self.world.rate, self.world.texts
        for n in itertools.count():
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            number = len(self.published)
            self.publish(f"{self.fault}-{number:06d}", 1, texts[number % len(texts)], valid=number % 50 != 49)

    async def stop_load(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)

    async def sent(self) -> None:
        while self._sends:
            await asyncio.gather(*list(self._sends))

    # --- counts ---------------------------------------------------------------------------------------------

    async def settle(self, row: Row, fault_start: float, fault_end: float, timeout_s: float) -> None:
        """Wait until every post is settled (or ``timeout_s``), then fill ``row`` from the index and the DLQ."""
        await self.sent()
        deadline = time.monotonic() + timeout_s
        while True:
            indexed, letters = await self._indexed(), await self._letters()
            unsettled = [
                post_id
                for post_id, published in self.published.items()
                if (indexed.get(post_id, (0, 0.0))[0] < published.version) and post_id not in letters
            ]
            if not unsettled or time.monotonic() > deadline:
                break
            await asyncio.sleep(3.0)
        row.published = len(self.published)
        settled_at: list[float] = []
        for post_id, published in self.published.items():
            version, at = indexed.get(post_id, (0, 0.0))
            if version == published.version:
                row.indexed += 1
                done = at
            elif version:
                row.older_version_won += 1
                done = at
            elif post_id in letters:
                row.dead_lettered += 1
                done = letters[post_id]
            else:
                row.lost += 1
                continue
            if published.at <= fault_end:
                settled_at.append(done)
            row.latencies.append((published.at - fault_start, done - published.at))
        row.worst_s = max((latency for _, latency in row.latencies), default=0.0)
        if not unsettled:
            row.recovery_s = max(0.0, max(settled_at, default=fault_end) - fault_end)

    async def _indexed(self) -> dict[str, tuple[int, float]]:
        """Post id → (version its document holds, indexed_at)."""
        async with es_client(self.world.base) as es:
            if not await es.indices.exists(index=self.settings.es_index_posts):
                return {}
            await es.indices.refresh(index=self.settings.es_index_posts)
            found: dict[str, tuple[int, float]] = {}
            response = await es.search(
                index=self.settings.es_index_posts, size=10_000, source_includes=["text", "indexed_at"], scroll="1m"
            )
            while hits := response["hits"]["hits"]:
                for hit in hits:
                    match = VERSION.match(hit["_source"]["text"])
                    when = datetime.fromisoformat(hit["_source"]["indexed_at"]).timestamp()
                    found[hit["_id"]] = (int(match.group(1)) if match else 0, when)
                response = await es.scroll(scroll_id=response["_scroll_id"], scroll="1m")
            return found

    async def _letters(self) -> dict[str, float]:
        """Post id (the letter's key) → when Kafka took its letter (the first one)."""
        letters: dict[str, float] = {}
        async with BacklogReader(self.world.base, self.settings.topic_dlq, f"reader-{uuid.uuid4().hex}", True) as dlq:
            while not dlq.done:
                for message in (await dlq.read(5000)).messages:
                    letter = DeadLetter.model_validate_json(message.raw.value or b"{}")
                    if letter.key is not None:
                        letters.setdefault(letter.key, message.timestamp / 1000)
        return letters

    async def cleanup(self) -> None:
        await self.stop_load()
        for pid in list(self.workers):
            await asyncio.to_thread(stop, pid)
        self.workers.clear()
        async with es_client(self.world.base) as es:
            await es.indices.delete(
                index=f"{self.settings.es_index_posts},{self.settings.es_index_entities}", ignore_unavailable=True
            )
        admin = AIOKafkaAdminClient(**kafka_client_options(self.world.base))
        await admin.start()
        try:
            await admin.delete_topics([self.settings.topic_posts, self.settings.topic_dlq])
        except Exception as error:  # noqa: BLE001 — a leftover topic of a finished row harms nothing
            print(f"  (could not delete the row's topics: {error})")
        finally:
            await admin.close()


# --------------------------------------------------------------------------------------------------------------
# The faults: each returns (fault start, fault end), time.time()
# --------------------------------------------------------------------------------------------------------------

Fault = Callable[[Phase], Awaitable[tuple[float, float]]]


async def worker_sigkill(phase: Phase) -> tuple[float, float]:
    await phase.start_worker()
    victim = await phase.start_worker()
    await phase.load(10)
    start = time.time()
    phase.kill(victim)
    await phase.load(10)
    await phase.start_worker()  # the orchestrator's replacement
    return start, time.time()


async def rolling_restart(phase: Phase) -> tuple[float, float]:
    first, second = await phase.start_worker(), await phase.start_worker()
    await phase.load(10)
    start = time.time()
    for old in (first, second):
        stopping = asyncio.ensure_future(phase.terminate(old))
        await asyncio.gather(stopping, phase.start_worker(), phase.load(5))
    return start, time.time()


async def scale_1_3_1(phase: Phase) -> tuple[float, float]:
    first = await phase.start_worker()
    await phase.load(10)
    start = time.time()
    added = await asyncio.gather(phase.start_worker(), phase.start_worker(), phase.load(10))
    await phase.load(10)
    await asyncio.gather(phase.terminate(added[0]), phase.terminate(added[1]), phase.load(10))
    assert first in phase.workers
    return start, time.time()


async def _es_cut(phase: Phase, seconds: float) -> tuple[float, float]:
    await phase.start_worker()
    await phase.load(10)
    start = time.time()
    phase.world.es_relay.close()
    await phase.load(seconds)
    phase.world.es_relay.open()
    return start, time.time()


async def es_down_60s(phase: Phase) -> tuple[float, float]:
    return await _es_cut(phase, 60)


async def outage_beyond_poll_interval(phase: Phase) -> tuple[float, float]:
    phase.env_extra["POSTLENS_WORKER_MAX_POLL_INTERVAL_S"] = str(POLL_INTERVAL_S)
    return await _es_cut(phase, 3 * POLL_INTERVAL_S)


async def _down_then_up(
    phase: Phase, down: Callable[[], Awaitable[object]], down_s: float, up: Callable[[], Awaitable[object]], up_s: float
) -> tuple[float, float]:
    """One worker under load, then a service taken down (``down``, load for ``down_s`` meanwhile) and brought up again
    (``up``, load for ``up_s``): the fault spans both."""
    await phase.start_worker()
    await phase.load(10)
    start = time.time()
    await asyncio.gather(down(), phase.load(down_s))
    await asyncio.gather(up(), phase.load(up_s))
    return start, time.time()


async def triton_restart(phase: Phase) -> tuple[float, float]:
    triton = phase.world.triton
    return await _down_then_up(
        phase, lambda: asyncio.to_thread(triton.stop), 5, lambda: asyncio.to_thread(triton.start), 5
    )


async def model_unload_load(phase: Phase) -> tuple[float, float]:
    triton = phase.world.triton
    return await _down_then_up(
        phase,
        lambda: asyncio.to_thread(triton.control, "unload"),
        20,
        lambda: asyncio.to_thread(triton.control, "load"),
        2,
    )


async def redis_down(phase: Phase) -> tuple[float, float]:
    return await _down_then_up(phase, phase.world.redis.stop, 30, phase.world.redis.start, 1)


async def kafka_restart(phase: Phase) -> tuple[float, float]:
    return await _down_then_up(phase, phase.world.kafka.stop, 3, phase.world.kafka.start, 5)


async def dlq_refusing_writes(phase: Phase) -> tuple[float, float]:
    await phase.start_worker()
    await phase.load(10)

    async def set_max_bytes(value: str) -> None:
        admin = AIOKafkaAdminClient(**kafka_client_options(phase.world.base))
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, phase.settings.topic_dlq, {"max.message.bytes": value})]
            )
        finally:
            await admin.close()

    start = time.time()
    await set_max_bytes("64")  # smaller than any letter, even a minimal one
    await phase.load(30)
    await set_max_bytes("1048588")
    return start, time.time()


async def es_401_until_restored(phase: Phase) -> tuple[float, float]:
    phase.es_url = phase.world.es_auth.url
    await phase.start_worker()
    await phase.load(10)
    start = time.time()
    phase.world.es_auth.revoked = True
    await phase.load(30)
    phase.world.es_auth.revoked = False
    return start, time.time()


async def same_id_twice(phase: Phase) -> tuple[float, float]:
    await phase.start_worker()
    await phase.load(10)
    start = time.time()
    texts = phase.world.texts

    async def twice(number: int) -> None:
        post_id = f"{phase.fault}-dup-{number:03d}"
        phase.publish(post_id, 1, texts[number])
        # 0 to 0.39 s later: the same batch, the next batch while the first is in flight, or after it finished.
        await asyncio.sleep(0.01 * number)
        phase.publish(post_id, 2, texts[-1 - number])

    await asyncio.gather(phase.load(20), *(_later(0.5 * n, twice(n)) for n in range(40)))
    return start, time.time()


async def _later(delay_s: float, coroutine: Awaitable[None]) -> None:
    await asyncio.sleep(delay_s)
    await coroutine


FAULTS: dict[str, tuple[Fault, str]] = {
    "worker_sigkill": (worker_sigkill, "1 of 2 workers SIGKILLed, a replacement started 10 s later"),
    "rolling_restart": (rolling_restart, "2 workers, each SIGTERMed while its replacement starts"),
    "scale_1_3_1": (scale_1_3_1, "1 worker, 2 added, then those 2 SIGTERMed"),
    "es_down_60s": (es_down_60s, "Elasticsearch unreachable 60 s (connections refused and cut)"),
    "outage_beyond_poll": (
        outage_beyond_poll_interval,
        f"Elasticsearch unreachable {3 * POLL_INTERVAL_S:.0f} s, max.poll.interval {POLL_INTERVAL_S:.0f} s",
    ),
    "triton_restart": (triton_restart, "Triton stopped (SIGTERM) and started again on its ports"),
    "model_unload_load": (model_unload_load, "model unloaded for 20 s, then loaded"),
    "redis_down": (redis_down, "Redis stopped 30 s, started again empty"),
    "kafka_restart": (kafka_restart, "the Kafka broker stopped (SIGTERM) and started again while posts arrive"),
    "dlq_refusing": (dlq_refusing_writes, "dead-letter topic max.message.bytes 64 for 30 s, then restored"),
    "es_401": (es_401_until_restored, "Elasticsearch answers 401 for 30 s, then the key is restored"),
    "same_id_twice": (same_id_twice, "40 post ids published twice (v1, then v2 0–0.39 s later, same key)"),
}


# --------------------------------------------------------------------------------------------------------------
# Maximum rate, rows, report
# --------------------------------------------------------------------------------------------------------------


async def measure_max(world: World, run_id: str, posts: int) -> float:
    """Posts/s one worker indexes draining a backlog (10 %→90 % of the index count)."""
    phase = Phase(world, "max", run_id)
    try:
        await ensure_topics(phase.settings)
        await phase.start_worker()
        for number in range(posts):
            phase.publish(f"max-{number:06d}", 1, world.texts[number % len(world.texts)])
        await phase.sent()
        samples: list[tuple[float, int]] = []
        async with es_client(world.base) as es:
            while not samples or samples[-1][1] < posts * 0.9:
                await asyncio.sleep(0.5)
                if await es.indices.exists(index=phase.settings.es_index_posts):
                    await es.indices.refresh(index=phase.settings.es_index_posts)
                    count = (await es.count(index=phase.settings.es_index_posts))["count"]
                    samples.append((time.perf_counter(), count))
        (t0, n0), (t1, n1) = (next(s for s in samples if s[1] >= share * posts) for share in (0.1, 0.9))
        return (n1 - n0) / (t1 - t0)
    finally:
        await phase.cleanup()


async def run_row(world: World, run_id: str, fault: str, settle_s: float) -> Row:
    inject, _what = FAULTS[fault]
    phase = Phase(world, fault, run_id)
    row = Row(fault)
    print(f"--- {fault}: {FAULTS[fault][1]}", flush=True)
    try:
        await ensure_topics(phase.settings)
        start, end = await inject(phase)
        row.fault_s = end - start
        await phase.load(15)  # the load goes on after the fault
        await phase.stop_load()
        await phase.settle(row, start, end, settle_s)
        for pid in phase.workers:
            if not is_alive(pid):
                row.notes.append(f"a worker died: {phase.logs[pid]}")
    except Exception as error:  # noqa: BLE001 — one row's failure is reported in the table, the run goes on
        row.notes.append(f"row failed: {type(error).__name__}: {error}")
        print(f"  row failed: {error!r}", flush=True)
    finally:
        await phase.cleanup()
        world.es_relay.open()
        world.es_auth.revoked = False
        if world.redis.pid is None:
            await world.redis.start()
        if world.kafka.pid is None:
            await world.kafka.start()
        if world.triton.pid is None:
            await asyncio.to_thread(world.triton.start)
        if not world.triton.model_ready():
            await asyncio.to_thread(world.triton.control, "load")
    recovery = "unsettled" if row.recovery_s is None else f"{row.recovery_s:.1f} s"
    print(
        f"  published {row.published} indexed {row.indexed} dead-lettered {row.dead_lettered} lost {row.lost} "
        f"older-version-won {row.older_version_won} recovery {recovery}",
        flush=True,
    )
    return row


def markdown(figures: dict, rows: list[Row]) -> str:
    lines = [
        "# Chaos run",
        "",
        f"`{figures['command']}` — workers at commit {figures['commit']}, {figures['date']}, {figures['minutes']:.0f} "
        f"min; machine: {figures['machine']['cpus']} CPUs, {figures['machine']['memory_gb']} GB, shared with other "
        "jobs (load average at the end "
        f"{figures['machine']['load_average_1m_at_end']}).",
        "",
        f"Model: {figures['model']}. Load: real tweets (twitter2015 + twitter2017 valid), one in four with a picture "
        "from a local image host, one in fifty cut short (not JSON, so dead-lettered), published at "
        f"{figures['rate']:.1f} posts/s = half of {figures['max_rate']:.1f} posts/s, the rate one worker drained a "
        f"backlog at. Workers: session timeout {SESSION_TIMEOUT_S:.0f} s, other settings default.",
        "",
        "Counts come from the posts index (each text tagged with its version) and a scan of the dead-letter topic "
        "against the ids published, never from the workers' metrics. *lost*: neither indexed nor dead-lettered when "
        f"the row's settle time ({figures['settle_s']:.0f} s after the load) ran out. *recovery*: fault end → every "
        "post published before it settled (unsettled: some never did within the settle time). The load runs through "
        "the whole row, also while a worker, Triton or the broker starts.",
        "",
        "| fault | what was done | fault s | published | indexed | dead-lettered | lost | older version won | "
        "recovery | worst publish → settled |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        recovery = "unsettled" if row.recovery_s is None else f"{row.recovery_s:.1f} s"
        lines.append(
            f"| {row.fault} | {FAULTS[row.fault][1]} | {row.fault_s:.0f} | {row.published} | {row.indexed} | "
            f"{row.dead_lettered} | {row.lost} | {row.older_version_won} | {recovery} | {row.worst_s:.1f} s |"
        )
    notes = [f"- {row.fault}: {note}" for row in rows for note in row.notes]
    expected_letters = "one in fifty posts is not JSON: about 2 % dead-lettered is the expected figure"
    lines += ["", "![latency per fault](chaos.png)", "", "## Notes", "", f"- {expected_letters}.", *notes, ""]
    lines += figures.get("findings", [])
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    fig, axes = plt.subplots(
        (len(rows) + columns - 1) // columns, columns, figsize=(13, 3 * ((len(rows) + 2) // 3)), squeeze=False
    )
    for ax, row in zip(axes.flat, rows, strict=False):
        if row.latencies:
            x, y = zip(*row.latencies, strict=True)
            ax.scatter(x, [max(v, 0.05) for v in y], s=3)
        ax.axvspan(0, row.fault_s, color="red", alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(f"{row.fault} (lost {row.lost}, older {row.older_version_won})", fontsize=9)
        ax.set_xlabel("published, s from fault start", fontsize=8)
        ax.set_ylabel("→ settled (s)", fontsize=8)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def run(args: argparse.Namespace, workdir: Path) -> tuple[dict, list[Row]]:
    shared = get_settings()
    texts = tweets(shared)
    checkpoint, _data = default_checkpoint(shared)
    exported = shared.home / "bench" / "chaos-export"  # exported once: the export takes minutes on a busy machine
    version_dir = exported / shared.triton_model / "1"
    if not version_dir.is_dir():
        print(f"exporting {checkpoint} …", flush=True)
        export_model(checkpoint, exported, version=1)
    figures: dict = {"commit": commit(args.worker_checkout)}  # what the workers run: HEAD now, archived below
    checkout = workdir / "checkout"
    checkout.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=args.worker_checkout, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)

    kafka = own_kafka(workdir / "stack", shared)
    redis = OwnService(Redis(shared.model_copy(update={"home": workdir / "stack", "redis_port": free_port()})))
    print("starting the run's own Kafka, Redis and Triton …", flush=True)
    await asyncio.gather(kafka.start(), redis.start())
    base = shared.model_copy(
        update={
            "kafka_bootstrap": kafka.service.endpoint,
            "redis_url": f"redis://127.0.0.1:{redis.service.port}/0",
        }
    )
    triton = TritonServer(version_dir, ServingConfig.committed(), workdir)
    await asyncio.to_thread(triton.start)
    es_host, es_port = shared.es_url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    producer = AIOKafkaProducer(**kafka_client_options(base), linger_ms=5, acks="all", request_timeout_ms=10_000)
    await producer.start()
    run_id = uuid.uuid4().hex[:6]
    rows: list[Row] = []
    try:
        with TcpProxy(es_host, int(es_port)) as relay:
            async with AuthProxy(shared.es_url, API_KEY) as auth, ImageSource() as images:
                world = World(base, kafka, redis, triton, relay, auth, images, producer, texts, workdir, checkout)
                figures["max_rate"] = args.rate * 2 if args.rate else await measure_max(world, run_id, args.max_posts)
                world.rate = figures["max_rate"] / 2
                figures["rate"] = world.rate
                print(f"load: {world.rate:.1f} posts/s (half of {figures['max_rate']:.1f})", flush=True)
                for fault in args.faults:
                    rows.append(await run_row(world, run_id, fault, args.settle_s))
    finally:
        await producer.stop()
        triton.stop()
        await kafka.stop()
        await redis.stop()
    figures["model"] = (
        f"tiny cross-attention model ({checkpoint}, trained by bench.serving.default_checkpoint on synthetic "
        "posts, valid F1 on them 0.98), served by a Triton of the run's own with model_repository/postlens/config.pbtxt"
    )
    return figures, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--rate", type=float, default=None, help="posts/s of the load (default: half the measured max)")
    parser.add_argument("--max-posts", type=int, default=1500, help="backlog drained to measure the maximum rate")
    parser.add_argument("--settle-s", type=float, default=120.0, help="how long a row waits for every post to settle")
    parser.add_argument("--worker-checkout", type=Path, default=REPO, help="the workers run this checkout's HEAD")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    args.faults = [fault.strip() for fault in args.faults.split(",") if fault.strip()]
    if unknown := set(args.faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="postlens-chaos-") as tmp:
        figures, rows = asyncio.run(run(args, Path(tmp)))
    figures.update(
        command=" ".join(["python -m bench.chaos", *(argv if argv is not None else sys.argv[1:])]),
        machine=machine(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        minutes=(time.monotonic() - started) / 60,
        settle_s=args.settle_s,
    )
    args.reports.mkdir(parents=True, exist_ok=True)
    serializable = [{k: v for k, v in vars(row).items() if k != "latencies"} for row in rows]
    (args.reports / "chaos.json").write_text(json.dumps({**figures, "rows": serializable}, indent=2) + "\n")
    (args.reports / "chaos.md").write_text(markdown(figures, rows))
    plot(rows, args.reports / "chaos.png")
    print(f"{args.reports}/chaos.md, chaos.json, chaos.png")


if __name__ == "__main__":
    main()
