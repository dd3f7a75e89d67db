"""Serving benchmark: ``python -m bench.serving [--model DIR]`` (``make bench`` runs it).

1. The entry model ``postlens`` on a Triton of its own (a temporary repository, free ports — the shared one is
   never touched), through the stream's client (``stream.infer``), one request per post:
   - batch 1, sequential: one post at a time, on a configuration that never waits for a batch to fill;
   - concurrent: ``--concurrency`` posts in flight, Triton's dynamic batcher forming the batches, for each
     serving configuration tried (queue delay, max batch size, instances).
   Throughput (posts/s), p50/p99 latency, and the mean batch Triton executed (from its statistics).
2. The network in-process on identical encoded batches: ONNX Runtime (the exported version) vs PyTorch (the
   checkpoint), at batch 1 and 32.

Prints the figures and writes ``reports/serving.md`` and ``reports/serving.png``. Without ``--model`` a tiny
checkpoint is trained once on synthetic posts (cached under ``$POSTLENS_HOME/bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tqdm import tqdm
from tritonclient.grpc import aio as grpc_aio
from tritonclient.grpc import model_config_pb2

from deploy.local import triton_command
from deploy.process import free_port, is_alive, spawn, stop, tail
from postlens.settings import Settings, get_settings
from stream.infer import InferRequest, TritonInferer

REPORTS = Path(__file__).resolve().parent.parent / "reports"
TARGET_RATIO = 4.0


@dataclass(frozen=True)
class ServingConfig:
    """The knobs of ``config.pbtxt`` this benchmark varies."""

    max_queue_delay_us: int
    max_batch_size: int
    instances: int
    intra_op_threads: int = 0  # 0: every core

    @property
    def label(self) -> str:
        return f"delay {self.max_queue_delay_us / 1000:g} ms, max batch {self.max_batch_size}, {self.instances} inst."


# The batch-1 baseline runs on NO_WAIT (a lone request must not wait for company); the others are tried under load.
NO_WAIT = ServingConfig(max_queue_delay_us=0, max_batch_size=32, instances=1)
CONFIGS = (
    NO_WAIT,
    ServingConfig(max_queue_delay_us=5_000, max_batch_size=32, instances=1),
    ServingConfig(max_queue_delay_us=20_000, max_batch_size=64, instances=1),
    ServingConfig(max_queue_delay_us=5_000, max_batch_size=32, instances=2, intra_op_threads=1),
)


@dataclass(frozen=True)
class LoadResult:
    mode: str  # "batch 1, sequential" | "concurrent (C in flight)"
    config: ServingConfig
    posts: int
    seconds: float
    latencies_ms: np.ndarray
    executions: int

    @property
    def throughput(self) -> float:
        return self.posts / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.posts / max(self.executions, 1)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass(frozen=True)
class InProcessResult:
    runtime: str  # "ONNX Runtime" | "PyTorch"
    batch: int
    throughput: float  # posts/s
    latency_ms: float  # per batch, median


# --------------------------------------------------------------------------------------------------------------
# Model and posts
# --------------------------------------------------------------------------------------------------------------


def default_checkpoint(settings: Settings) -> tuple[Path, Path]:
    """(checkpoint, synthetic data dir): the tiny cross model, trained once and cached."""
    root = settings.home / "bench"
    data, checkpoint = root / "synthetic", root / "tiny-cross"
    if not (data / "test.jsonl").is_file():
        _run(["-m", "trainer.synth", "--out", str(data), "--posts", "400", "--seed", "1"])
    if not (checkpoint / "model.pt").is_file():
        _run(
            ["-m", "trainer.train", "--preset", "tiny", "--strategy", "cross", "--train", str(data / "train.jsonl"),
             "--valid", str(data / "valid.jsonl"), "--out", str(checkpoint)]
        )  # fmt: skip
    return checkpoint, data


def _run(argv: list[str]) -> None:
    print(f"$ python {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, *argv], check=True)


def load_requests(posts_file: Path, image_size: int) -> list[InferRequest]:
    from trainer.model.preprocess import load_images
    from trainer.predict import read_posts

    return [InferRequest(text=post.text, images=load_images(post.model_images, image_size, 4)) for post in read_posts(posts_file)]


# --------------------------------------------------------------------------------------------------------------
# Triton under load
# --------------------------------------------------------------------------------------------------------------


def write_config(source: Path, target: Path, config: ServingConfig) -> None:
    """``source``'s config.pbtxt with this benchmark's knobs set (comments are not kept)."""
    model = text_format.Parse(source.read_text(), model_config_pb2.ModelConfig())
    model.max_batch_size = config.max_batch_size
    model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    del model.instance_group[:]
    model.instance_group.add(count=config.instances, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    model.parameters["intra_op_threads"].string_value = str(config.intra_op_threads)
    target.write_text(text_format.MessageToString(model))


@contextmanager
def triton_serving(version_dir: Path, config: ServingConfig, workdir: Path) -> Iterator[str]:
    """A Triton on free ports serving ``version_dir`` as version 1 under ``config``; yields its gRPC address."""
    repo = workdir / f"repo-{config.max_queue_delay_us}-{config.max_batch_size}-{config.instances}"
    model_root = repo / "postlens"
    model_root.mkdir(parents=True)
    (model_root / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
    write_config(version_dir.parent / "config.pbtxt", model_root / "config.pbtxt", config)
    grpc_port, http_port = free_port(), free_port()
    log = repo / "tritonserver.log"
    pid = spawn(triton_command(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=free_port()), log)
    try:
        deadline = time.monotonic() + 600
        while True:
            if not is_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"Triton did not serve postlens ({config.label}); log {log}:\n{tail(log, 40)}")
            try:
                urllib.request.urlopen(f"http://localhost:{http_port}/v2/models/postlens/ready", timeout=2).close()
                break
            except OSError:
                time.sleep(1.0)
        yield f"localhost:{grpc_port}"
    finally:
        stop(pid)


async def _executions(url: str) -> tuple[int, int]:
    client = grpc_aio.InferenceServerClient(url)
    try:
        stats = (await client.get_inference_statistics("postlens", as_json=True))["model_stats"]
    finally:
        await client.close()
    return sum(int(m.get("inference_count", 0)) for m in stats), sum(int(m.get("execution_count", 0)) for m in stats)


async def sequential(url: str, config: ServingConfig, requests: Sequence[InferRequest], posts: int) -> LoadResult:
    inferer = await TritonInferer.connect(Settings(triton_url=url))
    try:
        for request in requests[:8]:  # warm-up: first calls allocate
            await inferer.infer([request])
        before = await _executions(url)
        latencies = []
        started = time.perf_counter()
        for index in tqdm(range(posts), desc=f"batch 1 ({config.label})", leave=False):
            sent = time.perf_counter()
            await inferer.infer([requests[index % len(requests)]])
            latencies.append((time.perf_counter() - sent) * 1000)
        seconds = time.perf_counter() - started
        after = await _executions(url)
    finally:
        await inferer.close()
    return LoadResult("batch 1, sequential", config, posts, seconds, np.array(latencies), after[1] - before[1])


async def concurrent(url: str, config: ServingConfig, requests: Sequence[InferRequest], posts: int, in_flight: int) -> LoadResult:
    inferer = await TritonInferer.connect(Settings(triton_url=url))
    latencies: list[float] = []
    progress = tqdm(total=posts, desc=f"{in_flight} in flight ({config.label})", leave=False)
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < posts:
            request = requests[next_index % len(requests)]
            next_index += 1
            sent = time.perf_counter()
            await inferer.infer([request])
            latencies.append((time.perf_counter() - sent) * 1000)
            progress.update()

    try:
        await asyncio.gather(*(inferer.infer([request]) for request in requests[:in_flight]))  # warm-up
        before = await _executions(url)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        seconds = time.perf_counter() - started
        after = await _executions(url)
    finally:
        progress.close()
        await inferer.close()
    return LoadResult(f"concurrent ({in_flight} in flight)", config, posts, seconds, np.array(latencies), after[1] - before[1])


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime vs PyTorch in-process
# --------------------------------------------------------------------------------------------------------------


def in_process(checkpoint: Path, version_dir: Path, requests: Sequence[InferRequest], seconds: float) -> list[InProcessResult]:
    import torch

    from postlens.schemas import ModelRef
    from trainer.export import ExportedModel, execution_providers
    from trainer.model.checkpoint import load_checkpoint
    from trainer.model.preprocess import stack_images

    threads = 2
    torch.set_num_threads(threads)
    network = load_checkpoint(checkpoint)[0].eval()
    exported = ExportedModel.load(version_dir, ModelRef(name="bench", version="1"), execution_providers("cpu"), threads)
    results = []
    for batch in (1, 32):
        chosen = [requests[i % len(requests)] for i in range(batch)]
        images, mask = stack_images([request.images for request in chosen], exported.image_size)
        inputs, _ = exported.preprocessor.encode([request.text for request in chosen], images, mask)
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}

        def run_torch() -> None:
            with torch.no_grad():
                network(**tensors)

        for runtime, run in (("ONNX Runtime", lambda: exported.run(inputs)), ("PyTorch", run_torch)):
            run()  # warm-up
            timings = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline or len(timings) < 5:
                started = time.perf_counter()
                run()
                timings.append(time.perf_counter() - started)
            median = float(np.median(timings))
            results.append(InProcessResult(runtime, batch, batch / median, median * 1000))
    return results


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def plot(loads: list[LoadResult], local: list[InProcessResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput_axes, latency_axes, runtime_axes) = plt.subplots(1, 3, figsize=(16, 5))
    labels = [f"{load.mode}\n{load.config.label}" for load in loads]
    colors = ["tab:gray" if load.mode.startswith("batch 1") else "tab:blue" for load in loads]
    positions = np.arange(len(loads))
    throughput_axes.barh(positions, [load.throughput for load in loads], color=colors)
    throughput_axes.set_yticks(positions, labels, fontsize=7)
    throughput_axes.invert_yaxis()
    throughput_axes.set_xlabel("posts/s")
    throughput_axes.set_title("Triton entry model: throughput")
    latency_axes.barh(positions - 0.2, [load.percentile(50) for load in loads], height=0.4, label="p50")
    latency_axes.barh(positions + 0.2, [load.percentile(99) for load in loads], height=0.4, label="p99")
    latency_axes.set_yticks(positions, [""] * len(loads))
    latency_axes.invert_yaxis()
    latency_axes.set_xlabel("latency per post (ms)")
    latency_axes.set_title("latency")
    latency_axes.legend()
    batches = sorted({result.batch for result in local})
    for offset, runtime in ((-0.2, "ONNX Runtime"), (0.2, "PyTorch")):
        values = [next(r.throughput for r in local if r.runtime == runtime and r.batch == b) for b in batches]
        runtime_axes.bar(np.arange(len(batches)) + offset, values, width=0.4, label=runtime)
    runtime_axes.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
    runtime_axes.set_ylabel("posts/s (network only)")
    runtime_axes.set_title("in-process: ONNX Runtime vs PyTorch")
    runtime_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(loads: list[LoadResult], local: list[InProcessResult], checkpoint: Path, command: str) -> str:
    baseline = loads[0]
    best = max(loads[1:], key=lambda load: load.throughput)
    ratio = best.throughput / baseline.throughput
    lines = [
        "# Serving benchmark",
        "",
        f"`{command}` — checkpoint `{checkpoint}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{len(os.sched_getaffinity(0))} CPU cores shared by the client, Triton and anything else running.",
        "",
        "## Triton entry model `postlens` (one request per post, through `stream.infer`)",
        "",
        "| mode | configuration | posts | posts/s | p50 ms | p99 ms | mean batch executed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for load in loads:
        lines.append(
            f"| {load.mode} | {load.config.label} | {load.posts} | {load.throughput:.1f} | {load.percentile(50):.1f} "
            f"| {load.percentile(99):.1f} | {load.mean_batch:.1f} |"
        )
    lines += [
        "",
        f"**Dynamic batching: {ratio:.2f}× the batch-1 sequential throughput** (best: {best.config.label}; "
        f"target ≥ {TARGET_RATIO:g}×: {'met' if ratio >= TARGET_RATIO else 'NOT met'}).",
        "",
        "## Network in-process, identical encoded batches (ONNX Runtime vs PyTorch, 2 threads each)",
        "",
        "| batch | ONNX Runtime posts/s | PyTorch posts/s | ORT / PyTorch | ORT ms/batch | PyTorch ms/batch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in sorted({result.batch for result in local}):
        onnx_result = next(r for r in local if r.runtime == "ONNX Runtime" and r.batch == batch)
        torch_result = next(r for r in local if r.runtime == "PyTorch" and r.batch == batch)
        lines.append(
            f"| {batch} | {onnx_result.throughput:.1f} | {torch_result.throughput:.1f} | "
            f"{onnx_result.throughput / torch_result.throughput:.2f}× | {onnx_result.latency_ms:.2f} | {torch_result.latency_ms:.2f} |"
        )
    lines += ["", "![serving](serving.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint dir (default: a tiny model trained once, cached)")
    parser.add_argument("--posts", type=Path, help="JSONL posts to send (default: the synthetic test split)")
    parser.add_argument("--sequential", type=int, default=300, help="posts sent one at a time")
    parser.add_argument("--requests", type=int, default=2000, help="posts sent under concurrent load, per config")
    parser.add_argument("--concurrency", type=int, default=64, help="posts in flight under concurrent load")
    parser.add_argument("--in-process-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    settings = get_settings()

    if args.model is None:
        checkpoint, data = default_checkpoint(settings)
    else:
        checkpoint, data = args.model, None
    posts_file = args.posts or (data / "test.jsonl" if data else None)
    if posts_file is None:
        parser.error("--posts is needed with --model")

    from trainer.export import export_model

    with tempfile.TemporaryDirectory(prefix="postlens-bench-") as tmp:
        workdir = Path(tmp)
        print(f"exporting {checkpoint} …", flush=True)
        version_dir = export_model(checkpoint, workdir / "export")
        requests = load_requests(posts_file, int(_image_size(version_dir)))
        loads: list[LoadResult] = []
        for config in CONFIGS:
            with triton_serving(version_dir, config, workdir) as url:
                if config == NO_WAIT:
                    loads.append(asyncio.run(sequential(url, config, requests, args.sequential)))
                loads.append(asyncio.run(concurrent(url, config, requests, args.requests, args.concurrency)))
                for load in loads[-2 if config == NO_WAIT else -1 :]:
                    print(
                        f"{load.mode:>26} | {config.label:<40} | {load.throughput:7.1f} posts/s | "
                        f"p50 {load.percentile(50):6.1f} ms | p99 {load.percentile(99):6.1f} ms | mean batch {load.mean_batch:4.1f}",
                        flush=True,
                    )
        local = in_process(checkpoint, version_dir, requests, args.in_process_seconds)
        for result in local:
            print(f"in-process {result.runtime:<12} batch {result.batch:>2}: {result.throughput:8.1f} posts/s ({result.latency_ms:.2f} ms/batch)")
        shutil.rmtree(workdir / "export", ignore_errors=True)

    REPORTS.mkdir(exist_ok=True)
    command = "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(loads, local, checkpoint, command.strip())
    (REPORTS / "serving.md").write_text(text)
    plot(loads, local, REPORTS / "serving.png")
    baseline = loads[0]
    best = max(loads[1:], key=lambda load: load.throughput)
    print(
        f"\ndynamic batching {best.throughput:.1f} posts/s vs batch-1 sequential {baseline.throughput:.1f} posts/s: "
        f"{best.throughput / baseline.throughput:.2f}× (target {TARGET_RATIO:g}×) — reports/serving.md, reports/serving.png"
    )


def _image_size(version_dir: Path) -> int:
    from trainer.export import read_model_config

    return read_model_config(version_dir).vision_encoder.image_size


if __name__ == "__main__":
    main()
