"""Serving benchmark: ``python -m bench.serving [--model DIR] [--device cpu|gpu]`` (``make bench`` runs it).

The model is the default served one (the ``twitter`` preset's checkpoint that ``make demo`` trains and caches; or
``--model``), exported once with both networks (fp32, also run at bf16 by OpenVINO, and int8), and the posts are the
Twitter valid tweets (or ``--posts``).

1. Triton: ONE server of its own (a temporary repository, free ports — the shared one is never touched) serves the
   exported version under every configuration tried, each as a model of its own; rounds alternate over the
   configurations, so each sees the same share of this shared machine. Per configuration: batch 1 (one post at a
   time) and concurrent (``--concurrency`` posts in flight, the dynamic batcher forming batches), through the
   stream's client, one request per post; posts/s (median over rounds), p50/p99 latency, mean executed batch.
   The configurations form a ladder from the fp32 export served as before (padded batches, one instance using all
   cores) through int8, bf16 and length batching, the shipped ``config.pbtxt`` among them, plus instances × threads
   alternatives.
2. In-process, the same version through ``ExportedModel.predict`` (tokenize, network, decode) on batches of 32 with
   the cores this process may use — the ceiling Triton's figures are divided by; the padding each batching leaves;
   each stage's time per post; and the network alone (each CPU precision, PyTorch; one thread each).
3. Quality: entity F1 of each CPU precision as served on the Twitter-2015 and 2017 valid splits, and the share of
   entities it and fp32 both find (``--no-quality`` skips it).

``--device gpu`` (a machine with a GPU, onnxruntime-gpu installed): the version exported with its GPU config,
served by Triton with ``--model-config-name gpu``; posts/s and latency at 1, 8, 32 and 64 posts in flight.

Prints the figures and writes ``reports/serving.md`` and ``reports/serving.png`` (``reports/serving-gpu.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tqdm import tqdm
from tritonclient.grpc import aio as grpc_aio
from tritonclient.grpc import model_config_pb2

from bench.machine import machine
from deploy.demo import default_checkpoint as default_model_checkpoint
from deploy.local import triton_command
from deploy.process import descendants, free_port, is_alive, spawn, stop, tail
from postlens.runtime.cores import usable_cores
from postlens.runtime.exported import (
    CARD_FILE,
    CPU_PRECISIONS,
    ExportedModel,
    execution_providers,
    length_buckets,
    read_model_config,
)
from postlens.runtime.images import empty_images, load_images, stack_images
from postlens.schemas import ModelRef
from postlens.settings import Settings, get_settings
from stream.stages.infer import InferRequest, TritonInferer
from trainer.data.conll import read_conll
from trainer.data.load import load_examples
from trainer.evaluate import build_report, entity_agreement, entity_sets, predict_all
from trainer.export import MODEL_SOURCE, export_model
from trainer.model.checkpoint import load_checkpoint
from trainer.plots import LoadFigures, plot_serving
from trainer.predict import ExportedPredictor, read_posts
from trainer.serving_config import GPU_CONFIG, GPU_CONFIG_NAME

REPORTS = Path(__file__).resolve().parent.parent / "reports"
TARGET_RATIO = 4.0
TARGET_SPEEDUP = 2.5  # the shipped config's posts/s over the fp32 export served as before
VALID_SPLITS = ("twitter2015", "twitter2017")
GPU_IN_FLIGHT = (1, 8, 32, 64)


@dataclass(frozen=True)
class ServingConfig:
    """The knobs of ``config.pbtxt`` this benchmark varies."""

    max_queue_delay_us: int
    max_batch_size: int
    instances: int
    intra_op_threads: int  # ONNX Runtime threads per instance; 0 = the usable cores ÷ instances
    precision: str = "int8"
    length_batching: bool = True

    @classmethod
    def committed(cls) -> ServingConfig:
        """The configuration ``model_repository/postlens/config.pbtxt`` ships."""
        model = text_format.Parse((MODEL_SOURCE / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        return cls(
            max_queue_delay_us=model.dynamic_batching.max_queue_delay_microseconds,
            max_batch_size=model.max_batch_size,
            instances=sum(group.count for group in model.instance_group),
            intra_op_threads=int(model.parameters["intra_op_threads"].string_value),
            precision=model.parameters["precision"].string_value,
            length_batching=model.parameters["length_batching"].string_value == "true",
        )

    @property
    def label(self) -> str:
        threads = self.intra_op_threads or max(1, usable_cores() // self.instances)
        batching = "length batches" if self.length_batching else "padded batches"
        return (
            f"{self.precision}, {batching}, {self.instances} inst. × {threads} thr., delay "
            f"{self.max_queue_delay_us / 1000:g} ms, max batch {self.max_batch_size}"
        )


def cpu_configs() -> list[ServingConfig]:
    """From the fp32 export served as before (padded batches, one instance on all cores), one step at a time (int8,
    bf16, then length batching), the shipped configuration (the committed config.pbtxt), then its alternatives: each
    other precision, one instance on all cores, one single-threaded instance per usable core, and no queue delay."""
    shipped = ServingConfig.committed()
    before = replace(shipped, precision="fp32", length_batching=False, instances=1, intra_op_threads=0)
    return list(
        dict.fromkeys(
            [
                before,
                *(replace(before, precision=precision) for precision in CPU_PRECISIONS),
                replace(before, length_batching=True),
                shipped,
                *(replace(shipped, precision=precision) for precision in CPU_PRECISIONS),
                replace(shipped, instances=1, intra_op_threads=0),
                replace(shipped, instances=usable_cores(), intra_op_threads=0),
                replace(shipped, max_queue_delay_us=0),
            ]
        )
    )


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds used so far by the benchmark's own processes (this client and the Triton tree) and by the
    whole machine, so a round can tell how many cores it got and how many other processes took."""

    ours: float
    machine: float

    @classmethod
    def read(cls, triton_pid: int) -> CpuClock:
        tick = os.sysconf("SC_CLK_TCK")
        triton = 0
        for pid in [triton_pid, *descendants(triton_pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            triton += int(fields[11]) + int(fields[12])  # utime, stime
        times = os.times()
        cpu = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = sum(cpu) - cpu[3] - cpu[4]  # all but idle and iowait
        return cls(ours=triton / tick + times.user + times.system, machine=busy / tick)


@dataclass
class Load:
    """One mode on one server, over several rounds."""

    round_throughputs: list[float] = field(default_factory=list)  # posts/s per round
    round_cores: list[tuple[float, float]] = field(default_factory=list)  # (ours, other processes') busy cores
    latencies_ms: list[float] = field(default_factory=list)
    posts: int = 0
    executions: int = 0

    @property
    def throughput(self) -> float:
        return float(np.median(self.round_throughputs))

    @property
    def cores_ours(self) -> float:
        return float(np.median([ours for ours, _ in self.round_cores]))

    @property
    def cores_others(self) -> float:
        return float(np.median([others for _, others in self.round_cores]))

    @property
    def mean_batch(self) -> float:
        return self.posts / max(self.executions, 1)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class ConfigResult:
    config: ServingConfig
    loads: dict[int, Load] = field(default_factory=dict)  # by posts in flight

    @property
    def sequential(self) -> Load:
        return self.loads[min(self.loads)]

    @property
    def concurrent(self) -> Load:
        return self.loads[max(self.loads)]

    @property
    def ratio(self) -> float:
        return self.concurrent.throughput / self.sequential.throughput


@dataclass(frozen=True)
class InProcessResult:
    runtime: str  # "ONNX Runtime" | "PyTorch"
    batch: int
    latency_ms: float  # per batch, median

    @property
    def throughput(self) -> float:
        return self.batch / self.latency_ms * 1000


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds per post of each stage of the served pipeline (medians)."""

    batch: int
    preprocess_ms: float  # word tokenizer, sub-word tokenizer, pixel normalisation
    network_ms: float  # ONNX Runtime
    decode_ms: float  # Viterbi, span marginals, grounding, the JSON document

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.network_ms + self.decode_ms


# --------------------------------------------------------------------------------------------------------------
# Model and posts
# --------------------------------------------------------------------------------------------------------------


def default_checkpoint(settings: Settings) -> tuple[Path, Path]:
    """(checkpoint, synthetic data dir): the tiny cross model, trained once and cached (``bench.stream``'s)."""
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
    """Posts of a JSONL file (images read), or the tweets of a CoNLL file (text only, as the Twitter sets are)."""
    if posts_file.suffix == ".txt":
        return [InferRequest(text=e.text, images=empty_images(0, image_size)) for e in read_conll(posts_file)[0]]
    return [
        InferRequest(text=post.text, images=load_images(post.model_images, image_size, 4))
        for post in read_posts(posts_file)
    ]


def valid_tweets(settings: Settings, image_size: int) -> list[InferRequest]:
    """The Twitter-2015 and 2017 valid tweets, interleaved (both sets' lengths in every stretch of posts)."""
    splits = [load_requests(settings.shared_data_dir / name / "valid.txt", image_size) for name in VALID_SPLITS]
    return [request for pair in zip(*splits, strict=False) for request in pair] + [
        request for split in splits for request in split[min(map(len, splits)) :]
    ]


# --------------------------------------------------------------------------------------------------------------
# Triton under load
# --------------------------------------------------------------------------------------------------------------


def write_config(source: Path, target: Path, config: ServingConfig, name: str) -> None:
    """``source``'s config.pbtxt with this benchmark's knobs set, as model ``name`` (comments are not kept)."""
    model = text_format.Parse(source.read_text(), model_config_pb2.ModelConfig())
    model.name = name
    model.max_batch_size = config.max_batch_size
    model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    del model.instance_group[:]
    model.instance_group.add(count=config.instances, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    model.parameters["intra_op_threads"].string_value = str(config.intra_op_threads)
    model.parameters["precision"].string_value = config.precision
    model.parameters["length_batching"].string_value = "true" if config.length_batching else "false"
    target.write_text(text_format.MessageToString(model))


def model_name(index: int) -> str:
    return f"postlens-{index}"


class TritonServer:
    """A Triton on free ports serving ``version_dir`` as ``postlens`` version 1 under ``config``; it can be stopped
    and started again on the same ports, and asked to unload and load the model (bench.chaos)."""

    def __init__(self, version_dir: Path, config: ServingConfig, workdir: Path) -> None:
        self.repo = Path(tempfile.mkdtemp(prefix="repo-", dir=workdir))
        model_root = self.repo / "postlens"
        model_root.mkdir()
        (model_root / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
        write_config(version_dir.parent / "config.pbtxt", model_root / "config.pbtxt", config, "postlens")
        self.label = config.label
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = self.repo / "tritonserver.log"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def start(self) -> None:
        """Start and wait until ``postlens`` is ready."""
        spec = triton_command(
            self.repo, grpc_port=self.grpc_port, http_port=self.http_port, metrics_port=self.metrics_port
        )
        self.pid = pid = spawn(spec, self.log)
        deadline = time.monotonic() + 600
        while not self.model_ready():
            if not is_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Triton did not serve postlens ({self.label}); log {self.log}:\n{tail(self.log, 40)}"
                )
            time.sleep(1.0)

    def stop(self) -> None:
        if self.pid is not None:
            stop(self.pid)
            self.pid = None

    def model_ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://localhost:{self.http_port}/v2/models/postlens/ready", timeout=2).close()
        except OSError:
            return False
        return True

    def control(self, action: str) -> None:
        """``load`` or ``unload`` the model (the server runs with explicit model control)."""
        request = urllib.request.Request(
            f"http://localhost:{self.http_port}/v2/repository/models/postlens/{action}", data=b"{}", method="POST"
        )
        urllib.request.urlopen(request, timeout=120).close()


@contextmanager
def triton_serving(version_dir: Path, config: ServingConfig, workdir: Path) -> Iterator[tuple[str, int]]:
    """A Triton on free ports serving ``version_dir`` as version 1 of ``postlens`` under ``config``; yields its gRPC
    address and pid."""
    with triton_repository(version_dir, {"postlens": config}, workdir) as server:
        yield server


def serving_at(version_dir: Path, precision: str, target: Path) -> None:
    """``version_dir`` as a version folder exported to serve ``precision`` at ``target``: its files linked, its card
    saying so. A version's card wins over the config's precision (``postlens.runtime.exported.version_precision``),
    so each configuration's precision needs a version of its own."""
    target.mkdir()
    for item in version_dir.resolve().iterdir():
        if item.name != CARD_FILE:
            (target / item.name).symlink_to(item, target_is_directory=item.is_dir())
    card = json.loads((version_dir / CARD_FILE).read_text())
    (target / CARD_FILE).write_text(json.dumps({**card, "precision": precision}, indent=2) + "\n")


@contextmanager
def triton_repository(
    version_dir: Path, configs: Mapping[str, ServingConfig | None], workdir: Path, config_name: str | None = None
) -> Iterator[tuple[str, int]]:
    """A Triton on free ports serving ``version_dir`` as version 1 of each model named in ``configs``, under its
    configuration (None: the export's own configs, read with ``--model-config-name config_name``); yields its gRPC
    address and pid."""
    repo = Path(tempfile.mkdtemp(prefix="repo-", dir=workdir))
    for name, config in configs.items():
        model_root = repo / name
        model_root.mkdir()
        if config is None:
            (model_root / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
            shutil.copytree(version_dir.parent / GPU_CONFIG.parent, model_root / GPU_CONFIG.parent)
        else:
            serving_at(version_dir, config.precision, model_root / "1")
            write_config(version_dir.parent / "config.pbtxt", model_root / "config.pbtxt", config, name)
    grpc_port, http_port = free_port(), free_port()
    log = repo / "tritonserver.log"
    command = triton_command(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=free_port())
    if config_name is not None:
        command = replace(command, argv=[*command.argv, f"--model-config-name={config_name}"])
    pid = spawn(command, log)
    try:
        deadline = time.monotonic() + 900
        waiting = list(configs)
        while waiting:
            if not is_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"Triton did not serve {waiting}; log {log}:\n{tail(log, 40)}")
            try:
                url = f"http://localhost:{http_port}/v2/models/{waiting[0]}/ready"
                urllib.request.urlopen(url, timeout=2).close()
                waiting.pop(0)
            except OSError:
                time.sleep(1.0)
        yield f"localhost:{grpc_port}", pid
    finally:
        stop(pid)


async def _counts(client: grpc_aio.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` so far."""
    stats = (await client.get_inference_statistics(model, as_json=True))["model_stats"]
    return sum(int(m.get("inference_count", 0)) for m in stats), sum(int(m.get("execution_count", 0)) for m in stats)


async def _round(
    load: Load,
    send: Callable[[], Awaitable[None]],
    posts: int,
    statistics: grpc_aio.InferenceServerClient,
    model: str,
    triton_pid: int,
) -> None:
    before = await _counts(statistics, model)
    clock = CpuClock.read(triton_pid)
    started = time.perf_counter()
    await send()
    seconds = time.perf_counter() - started
    used = CpuClock.read(triton_pid)
    load.round_throughputs.append(posts / seconds)
    ours = (used.ours - clock.ours) / seconds
    load.round_cores.append((ours, max((used.machine - clock.machine) / seconds - ours, 0.0)))
    after = await _counts(statistics, model)
    load.posts += after[0] - before[0]
    load.executions += after[1] - before[1]


async def measure(
    server: tuple[str, int],
    models: dict[str, ServingConfig],
    requests: Sequence[InferRequest],
    rounds: int,
    in_flight: Sequence[int],
    posts_at: Callable[[int], int],
) -> dict[str, ConfigResult]:
    """Each model under each load (``posts_at(n)`` posts with ``n`` in flight, each post sent once), rounds
    alternating over the models so every configuration sees the same share of the machine."""
    url, triton_pid = server
    results = {name: ConfigResult(config, {n: Load() for n in in_flight}) for name, config in models.items()}
    inferers = {name: await TritonInferer.connect(Settings(triton_url=url, triton_model=name)) for name in models}
    statistics = grpc_aio.InferenceServerClient(url)
    progress = tqdm(total=rounds * len(models) * sum(map(posts_at, in_flight)), desc="Triton", leave=False)

    async def send(inferer: TritonInferer, load: Load, level: int) -> None:
        queue = iter(range(posts_at(level)))

        async def client() -> None:
            for index in queue:  # the clients share one iterator: each post is sent once
                sent = time.perf_counter()
                await inferer.infer([requests[index % len(requests)]])
                load.latencies_ms.append((time.perf_counter() - sent) * 1000)
                progress.update()

        await asyncio.gather(*(client() for _ in range(level)))

    try:
        for inferer in inferers.values():  # warm-up
            await asyncio.gather(*(inferer.infer([request]) for request in requests[: max(in_flight)]))
        for _ in range(rounds):
            for name, inferer in inferers.items():
                for level, load in results[name].loads.items():
                    await _round(
                        load,
                        functools.partial(send, inferer, load, level),
                        posts_at(level),
                        statistics,
                        name,
                        triton_pid,
                    )
    finally:
        progress.close()
        await statistics.close()
        for inferer in inferers.values():
            await inferer.close()
    return results


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime vs PyTorch in-process
# --------------------------------------------------------------------------------------------------------------


def stage_times(
    version_dir: Path, requests: Sequence[InferRequest], batch: int, seconds: float, precision: str
) -> StageTimes:
    """Per-post time of each stage as one model instance (one ONNX Runtime thread) runs it, for a padded batch of
    the first posts."""
    exported = ExportedModel.load(
        version_dir, ModelRef(name="bench", version="1"), intra_op_threads=1, precision=precision
    )
    chosen = [requests[i % len(requests)] for i in range(batch)]
    texts = [request.text for request in chosen]
    images, mask = stack_images([request.images for request in chosen], exported.image_size)
    timings: list[np.ndarray] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(timings) < 5:
        marks = [time.perf_counter()]
        inputs, words = exported.preprocessor.encode(texts, images, mask)
        marks.append(time.perf_counter())
        outputs = exported.run(inputs)
        marks.append(time.perf_counter())
        for prediction in exported.decode(texts, words, inputs, outputs):
            prediction.model_dump_json()
        marks.append(time.perf_counter())
        timings.append(np.diff(marks))
    preprocess, network, decode = np.median(np.array(timings[1:]), axis=0) / batch * 1000
    return StageTimes(batch, float(preprocess), float(network), float(decode))


def in_process(
    checkpoint: Path, version_dir: Path, requests: Sequence[InferRequest], seconds: float
) -> list[InProcessResult]:
    """Median time per batch of the network alone, at each CPU precision and in PyTorch, timed alternately, one
    thread each (as one serving instance runs; on this shared machine PyTorch's two-thread OpenMP pool collapses
    whenever another process holds a core)."""
    threads = 1
    torch.set_num_threads(threads)
    network = load_checkpoint(checkpoint)[0].eval()
    exported = {
        precision: ExportedModel.load(
            version_dir, ModelRef(name="bench", version="1"), execution_providers("cpu"), threads, precision
        )
        for precision in CPU_PRECISIONS
    }
    results = []
    for batch in (1, 32):
        chosen = [requests[i % len(requests)] for i in range(batch)]
        images, mask = stack_images([request.images for request in chosen], exported["fp32"].image_size)
        inputs, _ = exported["fp32"].preprocessor.encode([request.text for request in chosen], images, mask)
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}

        def run_torch(tensors: dict[str, torch.Tensor] = tensors) -> None:
            with torch.no_grad():
                network(**tensors)

        calls: dict[str, Callable[[], object]] = {
            **{
                f"{precision} ({model.engine})": functools.partial(model.run, inputs)
                for precision, model in exported.items()
            },
            "PyTorch": run_torch,
        }
        timings: dict[str, list[float]] = {runtime: [] for runtime in calls}
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or min(len(t) for t in timings.values()) < 5:
            for runtime, run in calls.items():
                started = time.perf_counter()
                run()
                timings[runtime].append(time.perf_counter() - started)
        # The first call of each allocates; it is not what a server pays per batch.
        results += [InProcessResult(runtime, batch, float(np.median(t[1:])) * 1000) for runtime, t in timings.items()]
    return results


@dataclass(frozen=True)
class Ceiling:
    """Posts/s of ``ExportedModel.predict`` in this process (tokenize, network, decode; batches of ``batch``,
    ONNX Runtime on every usable core): what a server without any serving overhead would do."""

    precision: str
    length_batching: bool
    posts_per_s: float

    @property
    def label(self) -> str:
        return f"{self.precision}, {'length batches' if self.length_batching else 'padded batches'}"


def ceilings(version_dir: Path, requests: Sequence[InferRequest], seconds: float, batch: int = 32) -> list[Ceiling]:
    """Each precision × batching in process, batches alternating between them."""
    variants = {
        (precision, grouped): ExportedModel.load(
            version_dir, ModelRef(name="bench", version="1"), precision=precision, length_batching=grouped
        )
        for precision in CPU_PRECISIONS
        for grouped in (False, True)
    }
    image_size = next(iter(variants.values())).image_size
    spent = dict.fromkeys(variants, 0.0)
    posts = dict.fromkeys(variants, 0)
    deadline, first = time.perf_counter() + seconds * len(variants), 0
    while time.perf_counter() < deadline or min(posts.values()) < 2 * batch:
        chosen = [requests[(first + i) % len(requests)] for i in range(batch)]
        first += batch
        images, mask = stack_images([request.images for request in chosen], image_size)
        texts = [request.text for request in chosen]
        for key, model in variants.items():
            started = time.perf_counter()
            model.predict(texts, images, mask)
            spent[key] += time.perf_counter() - started
            posts[key] += batch
    return [Ceiling(*key, posts[key] / spent[key]) for key in variants]


@dataclass(frozen=True)
class Quality:
    """Entity F1 of the served network at each precision on one valid split, and how many entities each shares with
    fp32."""

    split: str
    f1: dict[str, float]  # by precision
    agreement: dict[str, float]  # by precision: entities it and fp32 both find ÷ entities either finds


def quality(version_dir: Path, settings: Settings) -> list[Quality]:
    """Each CPU precision against fp32, as served (``trainer.evaluate --model VERSION --precision P``), on both valid
    splits."""
    results = []
    for split in VALID_SPLITS:
        examples = load_examples(settings.shared_data_dir / split / "valid.txt")
        f1, found = {}, {}
        for precision in CPU_PRECISIONS:
            predictions = predict_all(ExportedPredictor.load(version_dir, precision), examples, 32)
            f1[precision] = build_report(examples, predictions).report.entity.f1
            found[precision] = entity_sets(predictions)
        agreement = {precision: entity_agreement(found["fp32"], found[precision]) for precision in CPU_PRECISIONS[1:]}
        results.append(Quality(split, f1, agreement))
    return results


@dataclass(frozen=True)
class Padding:
    """Sub-tokens per post the encoder computes, by how batches of ``batch`` posts are formed, and the posts' own
    lengths (the model's cap ``max_subtokens`` beside them)."""

    batch: int
    real: float
    padded: float
    length_batched: float
    runs_per_batch: float
    p50: int
    p99: int
    longest: int
    max_subtokens: int


def padding(version_dir: Path, requests: Sequence[InferRequest], batch: int = 32) -> Padding:
    model = ExportedModel.load(version_dir, ModelRef(name="bench", version="1"))
    lengths = []
    for first in range(0, len(requests), 256):
        chunk = [request.text for request in requests[first : first + 256]]
        inputs, _ = model.preprocessor.encode(
            chunk, *stack_images([empty_images(0, model.image_size)] * len(chunk), model.image_size)
        )
        lengths += inputs["attention_mask"].sum(axis=1).tolist()
    batches = [lengths[first : first + batch] for first in range(0, len(lengths) - batch + 1, batch)]
    groups = [length_buckets(part) for part in batches]
    grouped = sum(
        len(group) * max(part[i] for i in group) for part, parts in zip(batches, groups, strict=True) for group in parts
    )
    return Padding(
        batch=batch,
        real=float(np.mean(lengths[: len(batches) * batch])),
        padded=float(np.mean([max(part) for part in batches])),
        length_batched=grouped / (len(batches) * batch),
        runs_per_batch=float(np.mean([len(parts) for parts in groups])),
        p50=int(np.percentile(lengths, 50)),
        p99=int(np.percentile(lengths, 99)),
        longest=max(lengths),
        max_subtokens=model.preprocessor.max_subtokens,
    )


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def plot(results: list[ConfigResult], local: list[InProcessResult], path: Path) -> None:
    def figures(load: Load) -> LoadFigures:
        return LoadFigures(load.throughput, load.percentile(50), load.percentile(99))

    configs = {r.config.label: {f"{n} in flight": figures(load) for n, load in r.loads.items()} for r in results}
    runtimes = dict.fromkeys(r.runtime for r in local)
    in_process = {runtime: {r.batch: r.throughput for r in local if r.runtime == runtime} for runtime in runtimes}
    plot_serving(configs, in_process, path)


def speedup_sentence(results: list[ConfigResult]) -> str:
    """The shipped configuration against the fp32 export served as before, under concurrent load."""
    before, shipped = results[0], next(r for r in results if r.config == ServingConfig.committed())
    ratio = shipped.concurrent.throughput / before.concurrent.throughput
    verdict = "met" if ratio >= TARGET_SPEEDUP else "NOT met"
    return (
        f"Shipped configuration ({shipped.config.label}) {shipped.concurrent.throughput:.1f} posts/s vs the fp32 "
        f"export served as before ({before.config.label}) {before.concurrent.throughput:.1f} posts/s: {ratio:.2f}× "
        f"(target ≥ {TARGET_SPEEDUP:g}×: {verdict})"
    )


def report(
    results: list[ConfigResult],
    stages: dict[str, list[StageTimes]],
    local: list[InProcessResult],
    roofs: list[Ceiling],
    pads: Padding,
    scores: list[Quality],
    checkpoint: Path,
    command: str,
    in_flight: int,
) -> str:
    host = machine()
    flags = ", ".join(host["dot_product_flags"]) or "none"  # type: ignore[arg-type]
    before = results[0].concurrent.throughput
    roof = {ceiling.label: ceiling.posts_per_s for ceiling in roofs}
    lines = [
        "# Serving benchmark",
        "",
        f"`{command}` — checkpoint `{checkpoint}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. CPU: "
        f"{host['cpu_model']}, {host['cpus']} cores ({host['usable_cores']} usable by the cgroup quota and "
        f"affinity), int8/bf16 dot-product flags: **{flags}**; shared with other jobs (1-min load average "
        f"{host['load_average_1m_at_end']} at the end). Posts/s are medians over rounds that alternate over the "
        "configurations, all served by one Triton.",
        "",
        "## Triton entry model (one request per post through `stream.stages.infer`; concurrent = "
        f"{in_flight} in flight)",
        "",
        "| configuration | batch-1 posts/s | p50 ms | concurrent posts/s | p50 ms | p99 ms | mean batch | cores "
        "| vs first row | ÷ in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        sequential, concurrent = result.sequential, result.concurrent
        ceiling = roof[Ceiling(result.config.precision, result.config.length_batching, 0).label]
        lines.append(
            f"| {result.config.label} | {sequential.throughput:.1f} | {sequential.percentile(50):.1f} | "
            f"{concurrent.throughput:.1f} | {concurrent.percentile(50):.1f} | {concurrent.percentile(99):.1f} | "
            f"{concurrent.mean_batch:.1f} | {concurrent.cores_ours:.2f} (+{concurrent.cores_others:.2f}) | "
            f"{concurrent.throughput / before:.2f}× | {concurrent.throughput / ceiling:.2f} |"
        )
    lines += [
        "",
        f"**{speedup_sentence(results)}.** The first rows add one step at a time (int8, bf16, then length "
        "batching: each row's *vs first row* is that step's share); the last rows are alternatives of the shipped "
        "configuration: each other precision, one instance on all cores, one single-threaded instance per usable "
        "core (the shipped one on 2 cores), and no queue delay. *cores*: CPU cores busy with the client and Triton "
        "(+ busy with other processes). *÷ in-process*: Triton's concurrent posts/s over the same network and "
        "batching in this process (below).",
        "",
        "## Each precision against fp32 on the valid splits (as served: `python -m trainer.evaluate --model VERSION "
        "--precision P`)",
        "",
        "| split | precision | entity F1 | − fp32 (pt) | entities it and fp32 both find ÷ either finds |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {q.split} | {precision} | {q.f1[precision]:.4f} | {(q.f1[precision] - q.f1['fp32']) * 100:+.2f} | "
            f"{q.agreement[precision]:.2%} |"
            for q in scores
            for precision in q.agreement
        ),
        "",
        *int8_choices(),
        "## In-process ceiling (`ExportedModel.predict`: tokenize, network, decode; batches of 32, all usable cores)",
        "",
        "| network, batching | posts/s |",
        "|---|---:|",
        *(f"| {ceiling.label} | {ceiling.posts_per_s:.1f} |" for ceiling in roofs),
        "",
        f"## Padding (batches of {pads.batch} consecutive posts)",
        "",
        f"Sub-tokens the encoder computes per post: {pads.padded:.1f} padded to each batch's longest, "
        f"{pads.length_batched:.1f} with length batching ({pads.runs_per_batch:.1f} network runs per batch), "
        f"{pads.real:.1f} without any padding: length batching removes "
        f"{1 - (pads.length_batched - pads.real) / max(pads.padded - pads.real, 1e-9):.0%} of the padding. The posts' "
        f"own lengths: median {pads.p50}, p99 {pads.p99}, longest {pads.longest} sub-tokens, against the model's cap "
        f"`max_subtokens` {pads.max_subtokens} (which only truncates: batches pad to their own longest post).",
        "",
        "## Where a post's time goes (in-process, one model instance, one thread, padded batch; ms per post)",
        "",
        "| network | batch | preprocess | network | decode + JSON | total |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {precision} | {stage.batch} | {stage.preprocess_ms:.2f} | {stage.network_ms:.2f} | "
            f"{stage.decode_ms:.2f} | {stage.total_ms:.2f} |"
            for precision, by_batch in stages.items()
            for stage in by_batch
        ),
        "",
        "## Network alone, in-process, identical encoded batches (one thread each)",
        "",
        "| batch | " + " | ".join(f"{runtime} posts/s" for runtime in dict.fromkeys(r.runtime for r in local)) + " |",
        "|---:|" + "---:|" * len(dict.fromkeys(r.runtime for r in local)),
    ]
    for batch in sorted({result.batch for result in local}):
        row = [f"{r.throughput:.1f} ({r.latency_ms:.1f} ms)" for r in local if r.batch == batch]
        lines.append(f"| {batch} | " + " | ".join(row) + " |")
    lines += ["", "![serving](serving.png)", ""]
    return "\n".join(lines)


def int8_choices() -> list[str]:
    """The section of the last ``python -m bench.int8_choices`` (what the int8 network quantizes, and why)."""
    choices = REPORTS / "int8_choices.md"
    return ["## int8 choices", "", choices.read_text().strip(), ""] if choices.is_file() else []


def gpu_report(results: list[ConfigResult], checkpoint: Path, command: str) -> str:
    lines = [
        "# Serving benchmark on a GPU",
        "",
        f"`{command}` — checkpoint `{checkpoint}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Triton with "
        f"`--model-config-name {GPU_CONFIG_NAME}` ({GPU_CONFIG}: KIND_GPU, TensorRT fp16).",
        "",
        "| posts in flight | posts/s | p50 ms | p99 ms | mean batch |",
        "|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for level, load in result.loads.items():
            lines.append(
                f"| {level} | {load.throughput:.1f} | {load.percentile(50):.1f} | {load.percentile(99):.1f} | "
                f"{load.mean_batch:.1f} |"
            )
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="checkpoint dir (default: the default served model, trained once and cached)"
    )
    parser.add_argument("--posts", type=Path, help="JSONL posts or a CoNLL file (default: the Twitter valid tweets)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations")
    parser.add_argument("--sequential", type=int, default=60, help="posts sent one at a time, per round")
    parser.add_argument("--requests", type=int, default=400, help="posts sent under concurrent load, per round")
    parser.add_argument("--concurrency", type=int, default=64, help="posts in flight under concurrent load")
    parser.add_argument("--in-process-seconds", type=float, default=3.0)
    parser.add_argument(
        "--no-quality", dest="quality", action="store_false", help="skip each precision's F1 on the valid splits"
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    checkpoint = args.model or default_model_checkpoint(settings, settings.home / "demo")
    command = " ".join(["python -m bench.serving", *(argv if argv is not None else sys.argv[1:])])
    REPORTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="postlens-bench-") as tmp:
        workdir = Path(tmp)
        print(f"exporting {checkpoint} …", flush=True)
        version_dir = export_model(checkpoint, workdir / "export", precision="int8", device=args.device)
        image_size = read_model_config(version_dir).vision_encoder.input_size
        requests = load_requests(args.posts, image_size) if args.posts else valid_tweets(settings, image_size)

        def posts_at(level: int) -> int:
            return args.sequential if level == 1 else args.requests

        if args.device == "gpu":
            with triton_repository(version_dir, {"postlens": None}, workdir, GPU_CONFIG_NAME) as server:
                gpu = ServingConfig.committed()
                results = asyncio.run(
                    measure(server, {"postlens": gpu}, requests, args.rounds, GPU_IN_FLIGHT, posts_at)
                )
            for level, load in results["postlens"].loads.items():
                print(f"{level:>3} in flight: {load.throughput:7.1f} posts/s, p50 {load.percentile(50):6.1f} ms, "
                      f"p99 {load.percentile(99):6.1f} ms, mean batch {load.mean_batch:4.1f}")  # fmt: skip
            (REPORTS / "serving-gpu.md").write_text(gpu_report(list(results.values()), checkpoint, command))
            print("reports/serving-gpu.md")
            return

        configs = {model_name(index): config for index, config in enumerate(cpu_configs())}
        with triton_repository(version_dir, configs, workdir) as server:
            by_model = asyncio.run(measure(server, configs, requests, args.rounds, (1, args.concurrency), posts_at))
        measured = list(by_model.values())
        for result in measured:
            print(
                f"{result.config.label:<72} batch 1: {result.sequential.throughput:6.1f} posts/s | concurrent: "
                f"{result.concurrent.throughput:6.1f} posts/s (p50 {result.concurrent.percentile(50):6.1f} ms, "
                f"mean batch {result.concurrent.mean_batch:4.1f}, {result.concurrent.cores_ours:.2f} cores ours, "
                f"{result.concurrent.cores_others:.2f} others')",
                flush=True,
            )
        roofs = ceilings(version_dir, requests, args.in_process_seconds)
        for ceiling in roofs:
            print(f"in-process {ceiling.label:<28} {ceiling.posts_per_s:7.1f} posts/s")
        scores = quality(version_dir, settings) if args.quality else []
        for q in scores:
            for precision, agreement in q.agreement.items():
                print(
                    f"{q.split}: entity F1 fp32 {q.f1['fp32']:.4f}, {precision} {q.f1[precision]:.4f}, "
                    f"agreement {agreement:.2%}"
                )
        pads = padding(version_dir, requests)
        print(
            f"sub-tokens per post: padded {pads.padded:.1f}, length batches {pads.length_batched:.1f}, "
            f"real {pads.real:.1f}"
        )
        stages = {
            precision: [
                stage_times(version_dir, requests, batch, args.in_process_seconds, precision) for batch in (1, 32)
            ]
            for precision in CPU_PRECISIONS
        }
        local = in_process(checkpoint, version_dir, requests, args.in_process_seconds)
        for entry in local:
            print(
                f"in-process {entry.runtime:<18} batch {entry.batch:>2}: {entry.throughput:8.1f} posts/s "
                f"({entry.latency_ms:.2f} ms/batch)"
            )

    (REPORTS / "serving.md").write_text(
        report(measured, stages, local, roofs, pads, scores, checkpoint, command, args.concurrency)
    )
    plot(measured, local, REPORTS / "serving.png")
    print(f"\n{speedup_sentence(measured)} — reports/serving.md, reports/serving.png")


if __name__ == "__main__":
    main()
