"""``make demo``: the whole pipeline on this machine, end to end, on real and on synthetic posts.

Two models are served side by side, because no one model here can show both:

- ``postlens``, the default model every worker asks unless told otherwise: the ``twitter`` preset (MiniLM with
  casing and character features, CRF) trained on the public Twitter-2015 + 2017 train splits. Real tweets from
  their valid splits go through two workers in the default consumer group, and the indexed entities are scored
  against the gold labels. (The tweets' images are not distributed, so these posts are text-only.)
- ``postlens-synthetic``, a small model trained on synthetic posts whose images decide an entity's type and show
  where it is (``trainer.synth``): one more worker, in a consumer group and topic of its own, indexes them with
  grounded boxes, scored against gold labels and boxes and drawn into ``reports/demo/``.

Both models are trained once and cached under ``POSTLENS_HOME/demo``, keyed by their data, preset and the training
code, so a second run reuses them. The default model is trained before the local stack starts (its downloads run
meanwhile), so that training has the machine to itself; then the stack is started, or reused if it is up. Each
model is exported to the Triton repository beside the next step, and Triton serves both once it is up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from deploy.local import Stack, report_up
from postlens.schemas import ModelRef, PostPrediction, PredictedEntity, Region
from postlens.settings import Settings, get_settings
from trainer.data.examples import Example

DEMO_PRESET = "tiny"
DEMO_STRATEGY = "cross"
DEMO_POSTS = 600  # synthetic posts generated (the test split is published)
DEMO_SEED = 7
DEFAULT_PRESET = "twitter"  # the default served model; the preset names its training data
REAL_DATASETS = ("twitter2015", "twitter2017")  # their valid splits are the real posts published
SYNTHETIC_MODEL = "postlens-synthetic"
SYNTHETIC_TOPIC = "postlens.demo.synthetic"
SYNTHETIC_GROUP = "postlens-demo-synthetic"
WORKER_PORTS = (6066, 6067)  # the default group's workers
SYNTHETIC_WORKER_PORT = 6068
CODE = Path(__file__).resolve().parent.parent


STARTED = time.monotonic()


def step(message: str) -> None:
    """A heading for the next step, with the time since the demo started (where a slow run spends it)."""
    minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
    print(f"\n==> [{minutes:02d}:{seconds:02d}] {message}", flush=True)


def run(command: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    """Run ``command``, failing the demo if it fails; with ``log``, its output goes there (a step running beside
    another keeps the screen to the other), and is shown if it fails."""
    print("$ " + " ".join(command) + (f"  (output: {log})" if log else ""), flush=True)
    if log is None:
        subprocess.run(command, check=True, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        finished = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise subprocess.CalledProcessError(finished.returncode, command)


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# ------------------------------------------------------------------------------------------------------------
# Data and model (cached under POSTLENS_HOME/demo: the second run skips both)
# ------------------------------------------------------------------------------------------------------------


def synthetic_data(home: Path, posts: int, seed: int) -> Path:
    from trainer.synth import generate

    data = home / f"synth-{posts}-{seed}"
    if not (data / "test.jsonl").is_file():
        generate(data, posts=posts, seed=seed)
    print(f"synthetic posts in {data}")
    return data


def training_key(*inputs: Path | str) -> str:
    """A digest of what a trained model depends on: the given data files and names, and the code that trains it
    (``trainer/``, ``postlens/runtime/``, the presets)."""
    digest = hashlib.sha256()
    sources = [
        *(CODE / "trainer").rglob("*.py"),
        *(CODE / "trainer" / "configs").glob("*.yaml"),
        *(CODE / "postlens" / "runtime").rglob("*.py"),
    ]
    for source in sorted(sources):
        digest.update(source.read_bytes())
    for item in inputs:
        digest.update(item.read_bytes() if isinstance(item, Path) else item.encode())
    return digest.hexdigest()[:12]


def cached_checkpoint(checkpoint: Path, train: Sequence[str]) -> Path:
    """``checkpoint``, trained with ``python -m trainer.train ARGS --out checkpoint`` unless it is there already."""
    if (checkpoint / "model.pt").is_file():
        print(f"cached model {checkpoint}")
        return checkpoint
    run(python("trainer.train", *train, "--out", str(checkpoint)))
    return checkpoint


def demo_checkpoint(home: Path, data: Path) -> Path:
    """The synthetic demo model: trained unless one for the same data, preset and training code is cached."""
    key = training_key(data.name, DEMO_PRESET, DEMO_STRATEGY)
    return cached_checkpoint(
        home / "models" / f"{DEMO_PRESET}-{DEMO_STRATEGY}-{key}",
        [
            "--preset",
            DEMO_PRESET,
            "--strategy",
            DEMO_STRATEGY,
            "--train",
            str(data / "train.jsonl"),
            "--valid",
            str(data / "valid.jsonl"),
        ],
    )


def default_checkpoint(settings: Settings, home: Path) -> Path:
    """The default served model (the ``twitter`` preset, on the shared Twitter data): trained unless cached."""
    from trainer.run_config import resolve_config

    named = resolve_config(DEFAULT_PRESET).named_data
    data = [settings.shared_data_dir / path for path in (*named.train, *named.valid)]
    if missing := [str(path) for path in data if not path.is_file()]:
        raise SystemExit(
            f"the {DEFAULT_PRESET} preset's data is missing: {', '.join(missing)} (POSTLENS_SHARED_DATA_DIR)"
        )
    key = training_key(DEFAULT_PRESET, *data)
    return cached_checkpoint(home / "models" / f"{DEFAULT_PRESET}-{key}", ["--preset", DEFAULT_PRESET])


def exported_version(repo: Path, name: str, checkpoint: Path) -> str | None:
    """The newest version of model ``name`` in ``repo`` exported from ``checkpoint``, if any."""
    versions = sorted((int(p.name) for p in (repo / name).glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for version in versions:
        card = repo / name / str(version) / "model_card.json"
        if card.is_file() and json.loads(card.read_text()).get("source_checkpoint") == str(checkpoint):
            return str(version)
    return None


def export_version(settings: Settings, name: str, checkpoint: Path, log: Path) -> str:
    """The version of Triton model ``name`` that holds ``checkpoint``: exported now as the newest one unless one
    does already. Only written (:func:`serve` has Triton load it), so it can run before the stack is up."""
    repo = settings.model_repository
    version = exported_version(repo, name, checkpoint)
    if version is None:
        try:
            run(
                python("trainer.export", "--model", str(checkpoint), "--repo", str(repo), "--name", name, "--no-load"),
                log=log,
            )
        except subprocess.CalledProcessError:
            raise SystemExit(f"the export of {checkpoint} as {name} failed (output: {log})") from None
        version = exported_version(repo, name, checkpoint)
        if version is None:
            raise SystemExit(f"the export did not write a version of {name} for {checkpoint}")
        print(f"wrote model_repository/{name}/{version}", flush=True)
    else:
        print(f"model_repository/{name}/{version} already holds this checkpoint", flush=True)
    return version


def serve(settings: Settings, name: str, version: str) -> None:
    """Have the local Triton serve ``version`` of model ``name`` (loaded at its start, or now if it was up)."""
    from trainer.export import ExportError, load_in_triton

    url = settings.triton_load_url(settings.model_repository)
    if url is None:
        raise SystemExit(f"no Triton HTTP endpoint known for {settings.model_repository}")
    try:
        print(load_in_triton(url, name, int(version)), flush=True)
    except ExportError as error:
        raise SystemExit(str(error)) from None


def real_posts(settings: Settings, home: Path) -> tuple[Path, list[Example]]:
    """The valid splits' tweets as posts (JSONL for ``stream publish``) and as gold examples, ids made unique."""
    from trainer.data.load import load_examples

    examples: dict[str, Example] = {}
    for dataset in REAL_DATASETS:
        for example in load_examples(settings.shared_data_dir / dataset / "valid.txt"):
            post_id = f"{dataset}-{example.id}"
            examples.setdefault(post_id, example.model_copy(update={"id": post_id}))
    path = home / "real-posts.jsonl"
    path.write_text(
        "".join(json.dumps({"id": e.id, "text": e.text}, ensure_ascii=False) + "\n" for e in examples.values())
    )
    return path, list(examples.values())


# ------------------------------------------------------------------------------------------------------------
# The running parts: image server and workers
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def image_server(root: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def workers(logs: Path, envs: dict[int, dict[str, str]]) -> Iterator[list[subprocess.Popen]]:
    """One ``stream worker`` per web port, each with its environment."""
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        for port, env in envs.items():
            log = open(logs / f"worker-{port}.log", "w")
            process = subprocess.Popen(
                python("stream", "worker", "--web-port", str(port)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            started.append((process, log))
            print(f"worker pid {process.pid}, metrics http://localhost:{port}/metrics, log {log.name}")
        yield [process for process, _ in started]
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, log in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            log.close()


# ------------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------------


async def indexed_predictions(settings: Settings, post_ids: Sequence[str]) -> dict[str, PostPrediction]:
    """What the index says about each post, rebuilt as model outputs so the trainer's metrics can score them."""
    from stream.commands.search import es_client

    async with es_client(settings) as es:
        await es.indices.refresh(index=settings.es_index_entities)
        predictions = {
            post_id: PostPrediction(id=post_id, model=ModelRef(name="postlens", version="?")) for post_id in post_ids
        }
        response = await es.search(
            index=settings.es_index_entities, size=10_000, query={"terms": {"post_id": list(post_ids)}}
        )
        for hit in response["hits"]["hits"]:
            doc = hit["_source"]
            prediction = predictions[doc["post_id"]]
            prediction.model = ModelRef(**doc["model"])
            prediction.entities.append(
                PredictedEntity(
                    text=doc["text"],
                    type=doc["type"],
                    start=doc["start"],
                    end=doc["end"],
                    confidence=doc["confidence"],
                    regions=[
                        Region(image_index=r["image_index"], box=tuple(r["box"]), score=r["score"])
                        for r in doc.get("regions", [])
                    ],
                )
            )
        return predictions


def print_score(examples: Sequence[Example], predictions: dict[str, PostPrediction], what: str, out: Path) -> None:
    """Score the index's predictions for ``examples`` against their gold labels; print and save the report."""
    from trainer.evaluate import build_report, summary_table

    evaluation = build_report(examples, [predictions[example.id] for example in examples])
    print(f"\nWhat the pipeline indexed for the {len(examples)} {what}, scored against their gold labels:")
    print(summary_table(evaluation.report))
    out.mkdir(parents=True, exist_ok=True)
    name = what.split()[0]
    (out / f"pipeline_metrics_{name}.json").write_text(json.dumps(evaluation.report.to_json(), indent=2))


def report_real(settings: Settings, examples: Sequence[Example], out: Path, shown: int = 8) -> None:
    predictions = asyncio.run(indexed_predictions(settings, [example.id for example in examples]))
    print(f"\nEntities found on real tweets (the first {shown} that have any; type and confidence):")
    for example in [e for e in examples if predictions[e.id].entities][:shown]:
        found = ", ".join(
            f"{entity.text} {entity.type} {entity.confidence:.2f}" for entity in predictions[example.id].entities
        )
        print(f"  {example.text[:100]}\n      → {found}")
    for dataset in REAL_DATASETS:
        subset = [example for example in examples if example.id.startswith(f"{dataset}-")]
        print_score(subset, predictions, f"{dataset} valid tweets", out)


def report_synthetic(settings: Settings, data: Path, out: Path) -> None:
    from trainer.data.load import load_examples
    from trainer.plots import plot_grounding

    examples = load_examples(data / "test.jsonl")
    predictions = asyncio.run(indexed_predictions(settings, [example.id for example in examples]))
    print_score(examples, predictions, "synthetic test posts (with images and gold boxes)", out)
    picture = out / "grounded_posts.png"
    if plot_grounding(examples, [predictions[example.id] for example in examples], picture, limit=12):
        print(f"pictures of grounded entities (gold green, predicted red): {picture}")


def line_count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument(
        "--posts", type=int, default=DEMO_POSTS, help="synthetic posts generated (the test split is published)"
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the index")
    args = parser.parse_args(argv)

    settings = get_settings()
    home = settings.home / "demo"
    stack = Stack(settings)

    # Training comes first, with the services not yet running (idle, they still take a share of the 2 cores);
    # their downloads overlap it. A failed download is retried, and reported service by service, by `up`. The
    # exports (mostly one core's tracing and checking) run beside the next step.
    logs = home / "logs"
    with ThreadPoolExecutor(1) as downloads:
        downloads.submit(stack.prepare)
        step(f"the default model: preset {DEFAULT_PRESET} on the Twitter train splits (trained once, then cached)")
        default = default_checkpoint(settings, home)
        step(
            "synthetic posts and images, and the small model that grounds them (trained once, then cached); "
            "the default model's export beside them"
        )
        with ThreadPoolExecutor(1) as beside:
            default_export = beside.submit(
                export_version, settings, settings.triton_model, default, logs / "export-default.log"
            )
            data = synthetic_data(home, args.posts, args.seed)
            synthetic = demo_checkpoint(home, data)
            default_version = default_export.result()
    step("the local stack: Kafka, Elasticsearch, Redis, Triton; the synthetic model's export beside it")
    with ThreadPoolExecutor(1) as beside:
        synthetic_export = beside.submit(
            export_version, settings, SYNTHETIC_MODEL, synthetic, logs / "export-synthetic.log"
        )
        if report_up(stack) != 0:
            raise SystemExit(
                "the local stack did not start (python -m deploy.local status; logs under POSTLENS_HOME/logs)"
            )
        synthetic_version = synthetic_export.result()
    step("Triton serves both models")
    serve(settings, settings.triton_model, default_version)
    serve(settings, SYNTHETIC_MODEL, synthetic_version)

    real_file, real_examples = real_posts(settings, home)
    synthetic_file = data / "test.jsonl"
    with image_server(data) as base_url:
        # The image server is on loopback, which the SSRF guard refuses unless allowed.
        env = {**os.environ, "POSTLENS_FETCH_ALLOWLIST": json.dumps(["127.0.0.1"])}
        synthetic_env = {
            **env,
            "POSTLENS_TRITON_MODEL": SYNTHETIC_MODEL,
            "POSTLENS_TOPIC_POSTS": SYNTHETIC_TOPIC,
            "POSTLENS_CONSUMER_GROUP": SYNTHETIC_GROUP,
        }
        step(
            f"workers: two in group {settings.consumer_group} (model {settings.triton_model}), one in group "
            f"{SYNTHETIC_GROUP} (model {SYNTHETIC_MODEL}); images served at {base_url}"
        )
        with workers(logs, {**{port: env for port in WORKER_PORTS}, SYNTHETIC_WORKER_PORT: synthetic_env}):
            since = datetime.now(UTC).isoformat()
            count = line_count(real_file) + line_count(synthetic_file)
            step(
                f"publish {line_count(real_file)} real tweets to {settings.topic_posts} and "
                f"{line_count(synthetic_file)} synthetic posts to {SYNTHETIC_TOPIC}"
            )
            published = time.perf_counter()
            run(python("stream", "publish", str(real_file)), env=env)
            # With the synthetic workers' settings, so publishing creates their topic with its partitions.
            run(python("stream", "publish", str(synthetic_file), "--image-base", base_url), env=synthetic_env)
            step("wait until every post is indexed")
            run(python("stream", "wait", "--count", str(count), "--since", since, "--timeout", str(args.timeout)))
            elapsed = time.perf_counter() - published
            print(f"{count} posts indexed in {elapsed:.1f} s ({count / elapsed:.1f} posts/s, publish to index)")

    step("entities in Elasticsearch")
    run(python("stream", "search", "--limit", "15"))
    out = Path("reports") / "demo"
    report_real(settings, real_examples, out)
    report_synthetic(settings, data, out)

    step("where to look")
    print(f"  curl '{settings.es_url}/{settings.es_index_entities}/_search?q=type:PER&size=5&pretty'")
    print(f"  curl '{settings.es_url}/{settings.es_index_posts}/_count?pretty'")
    print("  python -m stream search Jordan --min-confidence 0.8")
    print("  Kibana: import deploy/kibana/postlens.ndjson (Stack Management → Saved objects)")
    print(f"\ndemo finished in {time.monotonic() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
