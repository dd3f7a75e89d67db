"""``make demo``: the whole pipeline on this machine, end to end.

Synthetic posts (images served by a local HTTP server) → a small demo model (trained once, then cached) exported to
Triton → two stream workers in one consumer group → Kafka → Elasticsearch; then the entities found, how they compare
with the gold labels, and pictures of the grounded boxes. Expects the local stack to be up (``make demo`` starts it).
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
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from postlens.schemas import ModelRef, PostPrediction, PredictedEntity, Region
from postlens.settings import Settings, get_settings

DEMO_PRESET = "tiny"
DEMO_STRATEGY = "cross"
DEMO_POSTS = 600  # synthetic posts generated (the test split is published)
DEMO_SEED = 7
WORKER_PORTS = (6066, 6067)


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(command: Sequence[str], env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


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


def demo_checkpoint(home: Path, data: Path) -> Path:
    """Train the demo model unless a checkpoint for the same data, preset and trainer code is cached."""
    code = hashlib.sha256()
    for source in sorted((Path(__file__).resolve().parent.parent / "trainer").rglob("*.py")):
        code.update(source.read_bytes())
    for config in sorted((Path(__file__).resolve().parent.parent / "trainer" / "configs").glob("*.yaml")):
        code.update(config.read_bytes())
    key = hashlib.sha256(f"{data.name}|{DEMO_PRESET}|{DEMO_STRATEGY}|{code.hexdigest()}".encode()).hexdigest()[:12]
    checkpoint = home / "models" / f"{DEMO_PRESET}-{DEMO_STRATEGY}-{key}"
    if (checkpoint / "model.pt").is_file():
        print(f"cached demo model {checkpoint}")
        return checkpoint
    run(python("trainer.train", "--preset", DEMO_PRESET, "--strategy", DEMO_STRATEGY,
               "--train", str(data / "train.jsonl"), "--valid", str(data / "valid.jsonl"), "--out", str(checkpoint)))
    return checkpoint


def exported_version(repo: Path, checkpoint: Path) -> str | None:
    """The newest version of ``postlens`` in ``repo`` exported from ``checkpoint``, if any."""
    versions = sorted((int(p.name) for p in (repo / "postlens").glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for version in versions:
        card = repo / "postlens" / str(version) / "model_card.json"
        if card.is_file() and json.loads(card.read_text()).get("source_checkpoint") == str(checkpoint):
            return str(version)
    return None


def serve_model(settings: Settings, checkpoint: Path) -> str:
    repo = settings.model_repository
    version = exported_version(repo, checkpoint)
    if version is None:
        run(python("trainer.export", "--model", str(checkpoint), "--repo", str(repo)))
        version = exported_version(repo, checkpoint)
    else:
        print(f"model_repository/postlens/{version} already holds this checkpoint")
    if version is None:
        raise SystemExit("the export did not write a version for the demo checkpoint")
    return version


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
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@contextlib.contextmanager
def workers(logs: Path, env: dict[str, str]) -> Iterator[list[subprocess.Popen]]:
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        for port in WORKER_PORTS:
            log = open(logs / f"worker-{port}.log", "w")  # noqa: SIM115 - closed with the process below
            process = subprocess.Popen(python("stream", "worker", "--web-port", str(port)), stdout=log,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
            started.append((process, log))
            print(f"worker pid {process.pid}, metrics http://localhost:{port}/metrics, log {log.name}")
        yield [process for process, _ in started]
    finally:
        for process, log in started:
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
        predictions = {post_id: PostPrediction(id=post_id, model=ModelRef(name="postlens", version="?"))
                       for post_id in post_ids}
        response = await es.search(index=settings.es_index_entities, size=10_000,
                                   query={"terms": {"post_id": list(post_ids)}})
        for hit in response["hits"]["hits"]:
            doc = hit["_source"]
            prediction = predictions[doc["post_id"]]
            prediction.model = ModelRef(**doc["model"])
            prediction.entities.append(PredictedEntity(
                text=doc["text"], type=doc["type"], start=doc["start"], end=doc["end"], confidence=doc["confidence"],
                regions=[Region(image_index=r["image_index"], box=tuple(r["box"]), score=r["score"])
                         for r in doc.get("regions", [])]))
        return predictions


def report(settings: Settings, data: Path, out: Path) -> None:
    from trainer.data.load import load_examples
    from trainer.evaluate import build_report, summary_table
    from trainer.plots import plot_grounding

    examples = load_examples(data / "test.jsonl")
    predictions = asyncio.run(indexed_predictions(settings, [example.id for example in examples]))
    ordered = [predictions[example.id] for example in examples]
    evaluation = build_report(examples, ordered)
    print("\nWhat the pipeline indexed, scored against the gold labels of the synthetic test split:")
    print(summary_table(evaluation.report))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_metrics.json").write_text(json.dumps(evaluation.report.to_json(), indent=2))
    picture = out / "grounded_posts.png"
    if plot_grounding(examples, ordered, picture, limit=12):
        print(f"pictures of grounded entities (gold green, predicted red): {picture}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument("--posts", type=int, default=DEMO_POSTS, help="synthetic posts generated (the test split is published)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the index")
    args = parser.parse_args(argv)

    settings = get_settings()
    home = settings.home / "demo"
    started = time.perf_counter()

    step("synthetic posts and images")
    data = synthetic_data(home, args.posts, args.seed)
    step("demo model (trained once, then cached)")
    checkpoint = demo_checkpoint(home, data)
    step("export to the Triton model repository")
    version = serve_model(settings, checkpoint)
    print(f"Triton serves postlens version {version}")

    test_posts = data / "test.jsonl"
    count = sum(1 for line in test_posts.read_text().splitlines() if line.strip())
    with image_server(data) as base_url:
        # The image server is on loopback, which the SSRF guard refuses unless allowed.
        env = {**os.environ, "POSTLENS_FETCH_ALLOWLIST": json.dumps(["127.0.0.1"])}
        step(f"two workers in consumer group {settings.consumer_group}; images served at {base_url}")
        with workers(home / "logs", env):
            since = datetime.now(timezone.utc).isoformat()
            step(f"publish {count} posts to {settings.topic_posts}")
            published = time.perf_counter()
            run(python("stream", "publish", str(test_posts), "--image-base", base_url), env=env)
            step("wait until every post is indexed")
            run(python("stream", "wait", "--count", str(count), "--since", since, "--timeout", str(args.timeout)))
            elapsed = time.perf_counter() - published
            print(f"{count} posts indexed in {elapsed:.1f} s ({count / elapsed:.1f} posts/s, publish to index)")

    step("entities in Elasticsearch")
    run(python("stream", "search", "--limit", "15"))
    report(settings, data, Path("reports") / "demo")

    step("where to look")
    print(f"  curl '{settings.es_url}/{settings.es_index_entities}/_search?q=type:PER&size=5&pretty'")
    print(f"  curl '{settings.es_url}/{settings.es_index_posts}/_count?pretty'")
    print("  python -m stream search Jordan --min-confidence 0.8")
    print("  Kibana: import deploy/kibana/postlens.ndjson (Stack Management → Saved objects)")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
