"""Where a post's CPU goes in the worker: ``python -m bench.worker_profile``.

One ``python -m stream worker`` on the local stack (Kafka, Elasticsearch, Redis), the default model served by a
Triton of its own (as :mod:`bench.stream` serves it), real tweets with one image each from a local source (a URL of
its own per post: every image is fetched, decoded and cached). Two drains of ``--posts`` each, by the same worker:

1. unprofiled: the worker's CPU per post (its process tree, as :mod:`bench.stream` measures it), and how much of it
   is the main thread (the event loop: everything but image decoding and gRPC's own threads);
2. under :mod:`cProfile` (the main thread's CPU time, not its waits): each function's own time, put in the part of
   the work its package belongs to; time in shared helpers (the json module, aiohttp, builtins…) goes to the part of
   whoever called them.

The parts' shares of the profiled drain, applied to the unprofiled main thread's CPU, are the table's ms per post
(cProfile's own overhead inflates Python calls more than C ones, so the split is an estimate). Prints markdown; with
``--report``, replaces the "Worker profile" section of ``reports/bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.serving import ServingConfig, triton_serving
from bench.stream import PROFILE_SECTION, REPO, REPORTS, ImageSource, Phase, cpu_seconds, section, tweets
from deploy.demo import default_checkpoint
from deploy.process import LaunchSpec, free_port, is_alive, spawn, stop, tail
from postlens.io.connections import es_client, kafka_client_options
from postlens.io.kafka import ensure_topics
from postlens.settings import get_settings
from trainer.export import export_model

PROFILE_ON = signal.SIGRTMIN
PROFILE_OFF = signal.SIGRTMIN + 1
GC_MARK = signal.SIGRTMIN + 2

# The part of the work a function's own time belongs to, by where it is defined (first match wins). Functions that
# match none (the json module, aiohttp, builtins, typing…) count for their callers' parts.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("JSON parse and checks (ingest)", ("stream/stages/ingest.py",)),
    ("pydantic (validation, model_dump, copies)", ("pydantic/", "pydantic_core", "postlens/schemas.py")),
    (
        "image fetch, decode hand-off, Redis cache",
        (
            "postlens/io/fetch.py",
            "postlens/io/image_cache.py",
            "postlens/io/decode_pool.py",
            "postlens/io/ssrf.py",
            "redis/",
            "stream/stages/fetch.py",
            "PIL/",
            "numpy/",
        ),
    ),
    (
        "gRPC calls, request bytes, answer parse (stream.stages.infer)",
        ("tritonclient/", "grpc/", "google/protobuf", "stream/stages/infer.py"),
    ),
    ("bulk bodies (documents, actions)", ("stream/stages/index.py",)),
    ("Elasticsearch client (serialize, HTTP)", ("elasticsearch/", "elastic_transport/")),
    ("Kafka consume and decode (aiokafka)", ("aiokafka/", "kafka/")),
    ("Faust stream and events", ("faust/", "mode/", "venusian/", "stream/worker.py")),
    ("micro-batches, ledger, commits (stream.flow)", ("stream/flow.py", "stream/commits.py", "postlens/io/retry.py")),
    (
        "pipeline glue (stream.pipeline, results, dead letters)",
        ("stream/pipeline.py", "stream/results.py", "postlens/io/deadletter.py"),
    ),
    ("logging", ("logging/",)),
    ("metrics (prometheus_client)", ("prometheus_client/", "stream/metrics.py")),
    ("event loop (asyncio tasks, callbacks, selector)", ("asyncio/", "selectors.py", "select.epoll", "uvloop")),
]
OTHER = "other"


def part_of(function: tuple[str, int, str]) -> str | None:
    filename, _line, name = function
    where = f"{filename} {name}"
    for part, markers in PARTS:
        if any(marker in where for marker in markers):
            return part
    return None


def parts(stats: pstats.Stats) -> dict[str, float]:
    """Own CPU seconds per part; a function of no part shares its own time out like its callers', per call edge."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # function → (cc, nc, tt, ct, callers)
    resolved: dict[Any, dict[str, float]] = {}

    def split(function: tuple[str, int, str], path: frozenset) -> dict[str, float]:
        if (part := part_of(function)) is not None:
            return {part: 1.0}
        if function in resolved:
            return resolved[function]
        callers = table.get(function, (0, 0, 0.0, 0.0, {}))[4]
        edges = {caller: edge[2] + edge[3] for caller, edge in callers.items() if caller not in path}
        weight = sum(edges.values())
        shares: dict[str, float] = defaultdict(float)
        if not weight:
            shares[OTHER] = 1.0
        for caller, seconds in edges.items():
            for part, share in split(caller, path | {function}).items():
                shares[part] += share * seconds / weight
        resolved[function] = shares
        return shares

    totals: dict[str, float] = defaultdict(float)
    for function, (_cc, _nc, own, _cumulative, _callers) in table.items():
        for part, share in split(function, frozenset()).items():
            totals[part] += own * share
    return dict(totals)


# --------------------------------------------------------------------------------------------------------------
# The profiled worker (a process of its own: ``python -m bench.worker_profile --worker OUT -- <worker args>``)
# --------------------------------------------------------------------------------------------------------------


def profiled_worker(output: Path, worker_args: list[str]) -> int:
    """``python -m stream <worker_args>``, its main thread profiled between the signals PROFILE_ON and PROFILE_OFF;
    at GC_MARK, the CPU seconds its garbage collections took so far are appended to ``output`` + ``.gc``."""
    profile = cProfile.Profile(time.thread_time)  # CPU time: the event loop's waits are not work
    collecting = {"since": 0.0, "seconds": 0.0}

    def on_collection(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            collecting["since"] = time.thread_time()
        elif threading.current_thread() is threading.main_thread():
            collecting["seconds"] += time.thread_time() - collecting["since"]

    def start(_signal: int, _frame: object) -> None:
        profile.enable()

    def finish(_signal: int, _frame: object) -> None:
        profile.disable()
        profile.dump_stats(output)

    def mark(_signal: int, _frame: object) -> None:
        with output.with_suffix(".gc").open("a") as marks:
            marks.write(f"{collecting['seconds']}\n")

    gc.callbacks.append(on_collection)
    signal.signal(PROFILE_ON, start)
    signal.signal(PROFILE_OFF, finish)
    signal.signal(GC_MARK, mark)
    from stream.__main__ import main

    return main(worker_args)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def gc_seconds(marks: Path) -> float:
    """The main thread's CPU seconds in garbage collection between the worker's first two GC marks."""
    deadline = time.monotonic() + 10
    while len(lines := (marks.read_text().split() if marks.exists() else [])) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker wrote no GC marks to {marks}")
        time.sleep(0.1)
    return float(lines[1]) - float(lines[0])


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of the process's main thread and of its other threads together."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(task.name) == pid:
            main += seconds
        else:
            others += seconds
    return {"main": main, "others": others}


async def drain(phase: Phase, posts: list[dict], producer: AIOKafkaProducer, until: int, pid: int) -> None:
    for post in posts:
        await producer.send(phase.settings.topic_posts, key=post["id"].encode(), value=json.dumps(post).encode())
    await producer.flush()
    async with es_client(phase.settings) as es:
        while True:
            await es.indices.refresh(index=phase.settings.es_index_posts)
            if (await es.count(index=phase.settings.es_index_posts))["count"] >= until:
                return
            if not is_alive(pid):
                raise RuntimeError(f"the worker died; log {phase.logs[0]}:\n{tail(phase.logs[0], 40)}")
            await asyncio.sleep(0.25)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = get_settings()
    texts = tweets(settings)
    if args.export:
        version_dir, model = args.export, f"export {args.export}"
    else:
        checkpoint = Path(args.model) if args.model else default_checkpoint(settings, settings.home / "demo")
        version_dir, model = export_model(checkpoint, workdir / "export", precision="int8"), f"checkpoint {checkpoint}"
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=5, acks="all")
    await producer.start()
    phase = Phase.create(settings, f"{os.getpid()}-{int(time.time())}", "profile")
    profile_path = workdir / "worker.prof"
    try:
        with triton_serving(version_dir, ServingConfig.committed(), workdir) as (triton_url, _triton_pid):
            async with ImageSource() as source:
                await ensure_topics(phase.settings)
                log = workdir / "worker.log"
                argv = [sys.executable, "-m", "bench.worker_profile", "--worker", str(profile_path), "--"]
                spec = LaunchSpec(
                    [*argv, "worker", "--web-port", str(free_port())],
                    env=phase.env(triton_url, workdir / "home"),
                    cwd=args.worker_checkout,
                )
                pid = spawn(spec, log)
                phase.workers.append(pid)
                phase.logs.append(log)
                while "pipeline ready" not in log.read_text(errors="replace"):
                    if not is_alive(pid):
                        raise RuntimeError(f"the worker did not start; log {log}:\n{tail(log, 40)}")
                    await asyncio.sleep(0.5)
                await asyncio.sleep(3.0)
                idle_tree, idle_started = cpu_seconds([pid]), time.perf_counter()
                await asyncio.sleep(args.idle_seconds)
                idle_cores = (cpu_seconds([pid]) - idle_tree) / (time.perf_counter() - idle_started)

                def posts(round_: str) -> list[dict]:
                    return [
                        {
                            "id": f"{round_}-{n}",
                            "text": texts[n % len(texts)],
                            "images": [
                                f"http://127.0.0.1:{source.port}/{phase.settings.consumer_group}-{round_}-{n}.jpg"
                            ][: args.images],
                        }
                        for n in range(args.posts)
                    ]

                await drain(phase, posts("warm"), producer, args.posts, pid)  # connections, caches, first batches
                os.kill(pid, GC_MARK)
                tree, threads, started = cpu_seconds([pid]), thread_cpu_seconds(pid), time.perf_counter()
                await drain(phase, posts("plain"), producer, 2 * args.posts, pid)
                elapsed = time.perf_counter() - started
                after = thread_cpu_seconds(pid)
                os.kill(pid, GC_MARK)
                plain = {
                    "tree_ms": (cpu_seconds([pid]) - tree) / args.posts * 1000,
                    "main_ms": (after["main"] - threads["main"]) / args.posts * 1000,
                    "threads_ms": (after["others"] - threads["others"]) / args.posts * 1000,
                    "posts_s": args.posts / elapsed,
                    "idle_cores": idle_cores,
                    "idle_ms": idle_cores * elapsed / args.posts * 1000,
                    "gc_ms": gc_seconds(profile_path.with_suffix(".gc")) / args.posts * 1000,
                }
                print(f"unprofiled: {plain}", flush=True)
                os.kill(pid, PROFILE_ON)
                await drain(phase, posts("profiled"), producer, 3 * args.posts, pid)
                os.kill(pid, PROFILE_OFF)
                while not profile_path.exists():
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # written whole
                stop(pid)
    finally:
        await producer.stop()
        for pid in phase.workers:
            if is_alive(pid):
                stop(pid)
        await phase.cleanup()
    if args.keep_profile:
        shutil.copyfile(profile_path, args.keep_profile)
    stats = pstats.Stats(str(profile_path))
    seconds = parts(stats)
    profiled_s = sum(seconds.values())
    return {
        "posts": args.posts,
        "images": args.images,
        "model": model,
        "plain": plain,
        "profiled_main_ms": profiled_s / args.posts * 1000,
        "parts_share": {part: value / profiled_s for part, value in seconds.items()},
        "top": [
            (f"{Path(f[0]).name}:{f[1]}({f[2]})", row[2] / args.posts * 1000)
            for f, row in sorted(stats.stats.items(), key=lambda item: -item[1][2])[:15]  # type: ignore[attr-defined]
        ],
        "load": os.getloadavg(),
    }


def markdown(result: dict[str, Any], command: str) -> str:
    plain = result["plain"]
    share = result["parts_share"]
    load = ", ".join(f"{value:.2f}" for value in result["load"])
    posts_are = (
        "with one image each (a URL of its own per post: fetched, decoded, cached)" if result["images"] else "text only"
    )
    lines = [
        PROFILE_SECTION,
        "",
        f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load} (a shared "
        f"machine). One worker, {result['posts']} real tweets {posts_are}, {result['model']} served by Triton.",
        "",
        f"Unprofiled drain: worker {plain['tree_ms']:.2f} CPU-ms/post (process tree) at {plain['posts_s']:.0f} "
        f"posts/s: main thread {plain['main_ms']:.2f} (of which garbage collection {plain['gc_ms']:.2f}), other "
        f"threads {plain['threads_ms']:.2f} (image decoding, gRPC's); idle, the worker uses {plain['idle_cores']:.3f} "
        f"cores. Profiled drain (cProfile, main thread's CPU): {result['profiled_main_ms']:.2f} ms/post, split as:",
        "",
        "| part | share of the main thread | ms/post (of the unprofiled main thread) |",
        "|---|---:|---:|",
        *(
            f"| {part} | {value:.0%} | {value * plain['main_ms']:.3f} |"
            for part, value in sorted(share.items(), key=lambda item: -item[1])
        ),
        "",
        "Functions with the most own time (profiled ms/post):",
        "",
        "| function | ms/post |",
        "|---|---:|",
        *(f"| `{name}` | {ms:.3f} |" for name, ms in result["top"]),
        "",
    ]
    return "\n".join(lines)


def replace_section(report: Path, new: str) -> None:
    """``report`` with its worker-profile section replaced by ``new``, or ``new`` appended."""
    text = report.read_text() if report.exists() else ""
    old = section(text, PROFILE_SECTION).lstrip("\n")
    report.write_text(text.replace(old, new) if old else text.rstrip("\n") + "\n\n" + new)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        sys.exit(profiled_worker(Path(argv[1]), argv[3:]))
    parser = argparse.ArgumentParser(prog="python -m bench.worker_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: the default served model)")
    parser.add_argument("--export", type=Path, help="a version folder already exported (skips the export)")
    parser.add_argument("--posts", type=int, default=1000, help="tweets per drain")
    parser.add_argument("--images", type=int, choices=(0, 1), default=1, help="images per post (0: text only)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="the idle worker's CPU is measured this long")
    parser.add_argument(
        "--worker-checkout", type=Path, default=REPO, help="run the worker from this checkout (before/after)"
    )
    parser.add_argument("--keep-profile", type=Path, help="copy the cProfile stats here (for pstats)")
    parser.add_argument("--report", action="store_true", help="write the section into reports/bench.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="postlens-worker-profile-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    command = " ".join(["python -m bench.worker_profile", *argv])
    section = markdown(result, command)
    print(section)
    if args.report:
        replace_section(REPORTS / "bench.md", section)


if __name__ == "__main__":
    main()
