"""Retraining on the default model, as a user runs it: ``python -m bench.retrain --base CKPT``.

The ``twitter`` checkpoint ``CKPT`` (``python -m trainer.train --preset twitter --out CKPT``; it carries its
reference set — the Twitter-2015/2017 valid splits — and a replay sample of its training tweets) is exported as
version 1 of a fresh repository, which a Triton of this run serves. Then, on a labels topic of the run's own:

1. ``swapped``: 300 Twitter-2015 training tweets from one export whose types are swapped (PER↔LOC, ORG↔MISC) →
   ``python -m trainer.retrain`` (expected: quarantined, nothing trained, the served version unchanged);
2. ``clean``: 300 correct Twitter-2015 training tweets from one annotator → ``trainer.retrain`` (audit, fine-tune
   with replay, the new-labels and the reference gates; promoted and served, or refused with the gate's reason);
3. the lineage (``--history``), and — when 2 promoted — ``--rollback 1`` and the history again.

Each step runs the real command line (``python -m trainer.retrain``) against the local stack's Kafka. Writes
``reports/retrain.md`` (the commands' output and the seconds of each run) and ``reports/retrain.png`` (both gates,
base beside candidate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer

from deploy.process import free_port, is_alive, spawn, stop, tail
from deploy.services.triton import triton_command
from postlens.io.deadletter import RawMessage
from postlens.io.kafka import ConsumedMessage, ensure_topics
from postlens.schemas import ENTITY_TYPES
from postlens.settings import get_settings
from trainer.data.conll import read_conll
from trainer.evaluate import predict_all
from trainer.export import export_model
from trainer.predict import Predictor
from trainer.retrain.audit import AuditThresholds, audit_group
from trainer.retrain.labels import NewLabel

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
SWAP = {"PER": "LOC", "LOC": "PER", "ORG": "MISC", "MISC": "ORG"}
LABELS = 300


def tweets_as_labels(count: int, source: str, seed: int, swap: bool) -> list[bytes]:
    """``count`` Twitter-2015 training tweets in the label message's token/tag form."""
    examples = read_conll(get_settings().shared_data_dir / "twitter2015" / "train.txt")[0]
    chosen = random.Random(seed).sample(examples, count)
    labels = []
    for example in chosen:
        tags = [swap_tag(tag) if swap else tag for tag in example.tags or []]
        label = {
            "id": f"{source}-{example.id}",
            "tokens": [w.text for w in example.words],
            "tags": tags,
            "source": source,
        }
        labels.append(json.dumps(label).encode())
    return labels


def audit_margins(base: Path) -> str:
    """What the audit sees of clean and swapped tweets at several confidence thresholds: per type, the largest share
    of its gold spans the base predicts as one other type (the type-swap finding), and the share of its confident
    spans that overlap no label (the unlabeled finding) — the margin the audit's defaults stand on."""
    root = get_settings().shared_data_dir
    train = read_conll(root / "twitter2015" / "train.txt")[0]
    valid = read_conll(root / "twitter2017" / "valid.txt")[0]
    sets = {
        "correct, Twitter-2015 train": random.Random(2).sample(train, LABELS),
        "correct, Twitter-2017 valid": random.Random(3).sample(valid, LABELS),
        "swapped, Twitter-2015 train": [
            example.model_copy(update={"tags": [swap_tag(tag) for tag in example.tags or []]})
            for example in random.Random(1).sample(train, LABELS)
        ],
    }
    predictor = Predictor.load(base)
    message = ConsumedMessage(RawMessage(None, None, "bench", 0, 0), 0)
    rows = ["| labels | confidence ≥ | " + " | ".join(ENTITY_TYPES) + " | unlabeled |", "|---|---:|" + "---:|" * 5]
    for name, examples in sets.items():
        predictions = predict_all(predictor, examples, 32)
        labels = [NewLabel(example=example, source="bench", message=message) for example in examples]
        for confidence in (0.5, 0.7, 0.9):
            group = audit_group(name, labels, predictions, AuditThresholds(confidence=confidence, share=1, min_spans=1))
            shares = [
                max((n for other, n in group.confusion.get(t, {}).items() if other not in (t, "none")), default=0)
                / max(group.gold_spans.get(t, 0), 1)
                for t in ENTITY_TYPES
            ]
            unlabeled = group.confident_unlabeled / max(group.confident_spans, 1)
            rows.append(
                f"| {name} | {confidence} | " + " | ".join(f"{v:.2f}" for v in shares) + f" | {unlabeled:.0%} |"
            )
    return "\n".join(rows) + "\n"


def swap_tag(tag: str) -> str:
    return tag if tag == "O" else f"{tag[:2]}{SWAP[tag[2:]]}"


async def publish(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=json.loads(value)["id"].encode())
    finally:
        await producer.stop()


def served_version(http_url: str) -> str:
    with urllib.request.urlopen(f"{http_url}/v2/models/postlens", timeout=5) as response:
        return str(max(int(v) for v in json.load(response)["versions"]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a twitter-preset checkpoint (trainer.train)")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    settings = get_settings()
    work = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    repo = work / "model_repository"
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "POSTLENS_TOPIC_LABELS": f"bench.retrain.{run}.labels",
        "POSTLENS_TOPIC_LABELS_REJECTED": f"bench.retrain.{run}.labels.rejected",
        "POSTLENS_RETRAIN_GROUP": f"bench-retrain-{run}",
    }
    sections: list[str] = []

    def step(title: str, command: list[str]) -> tuple[str, float]:
        print(f"\n== {title}\n$ {' '.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
        seconds = time.perf_counter() - started
        print(done.stdout, flush=True)
        shown = " ".join(["python", *command[1:]]).replace(str(work), "$WORK")
        sections.append(f"### {title} ({seconds:.0f} s, exit {done.returncode})\n\n```\n$ {shown}\n{done.stdout}```\n")
        return done.stdout, seconds

    print("what the audit sees of clean and swapped tweets", flush=True)
    sections.append(
        "### What the audit sees (largest share of a type's gold spans predicted as one other type)\n\n"
        + audit_margins(args.base)
    )
    print(f"exporting {args.base} as version 1 of {repo}", flush=True)
    export_model(args.base, repo)
    http_port, grpc_port = free_port(), free_port()
    log = work / "tritonserver.log"
    pid = spawn(triton_command(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=free_port()), log)
    http_url = f"http://localhost:{http_port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if not is_alive(pid) or time.monotonic() > deadline:
                raise SystemExit(f"Triton did not serve the base; log {log}:\n{tail(log, 40)}")
            try:
                urllib.request.urlopen(f"{http_url}/v2/models/postlens/ready", timeout=2).close()
                break
            except OSError:
                time.sleep(1.0)
        topic = env["POSTLENS_TOPIC_LABELS"]
        asyncio.run(ensure_topics(settings, {topic: 2}))
        retrain = [sys.executable, "-m", "trainer.retrain", "--repo", str(repo), "--triton-http", http_url]

        asyncio.run(publish(settings.kafka_bootstrap, topic, tweets_as_labels(LABELS, "export:crm", 1, swap=True)))
        step(f"{LABELS} type-swapped labels (one export)", [*retrain, "--json", str(work / "swapped.json")])
        asyncio.run(publish(settings.kafka_bootstrap, topic, tweets_as_labels(LABELS, "annotator:alice", 2, False)))
        step(f"{LABELS} correct labels (one annotator)", [*retrain, "--out", str(work / "candidate"), "--json",
                                                            str(work / "clean.json")])  # fmt: skip
        clean = json.loads((work / "clean.json").read_text())
        sections.append(f"Served version after the clean batch: {served_version(http_url)}\n")
        step("history", [*retrain, "--history"])
        if clean["status"] == "promoted":
            step("rollback to version 1", [*retrain, "--rollback", "1"])
            sections.append(f"Served version after the rollback: {served_version(http_url)}\n")
            step("history after the rollback", [*retrain, "--history"])
        plot = work / "candidate" / "retrain_comparison.png"
        args.reports.mkdir(parents=True, exist_ok=True)
        if plot.is_file():
            shutil.copy(plot, args.reports / "retrain.png")
    finally:
        stop(pid)
    report = args.reports / "retrain.md"
    report.write_text(
        "# Retraining the default model (`python -m bench.retrain`)\n\n"
        f"Base: `{args.base.name}` (the `twitter` preset), served by a Triton of the run's own; labels: "
        f"{LABELS} Twitter-2015 training tweets per batch. Both gates are plotted in `retrain.png`.\n\n"
        + "\n".join(sections)
    )
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
