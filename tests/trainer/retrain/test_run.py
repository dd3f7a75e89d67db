"""trainer.retrain end to end against the real Kafka: labels read, refused, trained on, decided and committed."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from postlens.runtime.exported import CARD_FILE
from postlens.schemas import DeadLetter
from postlens.settings import Settings
from tests.support.kafka_io import read_topic
from trainer.data.examples import Example
from trainer.data.load import load_examples
from trainer.retrain.decision import RetrainError, decide
from trainer.retrain.report import EXIT_TOO_FEW_LABELS
from trainer.retrain.run import RetrainOptions, reference_set, replay_pool, retrain
from trainer.synth import generate


@pytest.fixture(scope="module")
def label_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labels")
    generate(out, 200, seed=102)
    return out


@pytest.fixture(scope="module")
def file_server(label_data: Path) -> Iterator[str]:
    """The label folder over HTTP on 127.0.0.1 (label images given as URLs)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(label_data)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def label_messages(label_data: Path, base_url: str) -> tuple[list[bytes], dict[str, int]]:
    """The labels to publish — synthetic train labels, a corrected duplicate, labels whose images are URLs, and
    invalid ones — and the refusals expected per reason."""
    labels = [json.loads(line) for line in (label_data / "train.jsonl").read_text().splitlines()]
    by_url = [json.loads(line) for line in (label_data / "valid.jsonl").read_text().splitlines()[:3]]
    for label in by_url:
        label["images"] = [f"{base_url}/{image}" for image in label["images"]]
    outdated = {**labels[0], "entities": [], "boxes": []}  # superseded by the real labels[0], published later
    invalid = [
        b"not json at all",
        json.dumps({"id": "past-end", "text": "Paris", "entities": [{"start": 0, "end": 99, "type": "LOC"}]}).encode(),
        json.dumps({"id": "bad-type", "text": "Paris", "entities": [{"start": 0, "end": 5, "type": "CITY"}]}).encode(),
        json.dumps(
            {"id": "gone", "text": "Lyon today", "images": [f"{base_url}/images/none.png"], "entities": []}
        ).encode(),
        json.dumps({"id": "escape", "text": "Lyon today", "images": ["/etc/hostname"], "entities": []}).encode(),
    ]
    values = [json.dumps(label).encode() for label in [outdated, *labels, *by_url]] + invalid
    expected = {"invalid_json": 1, "schema": 2, "image_http_404": 1, "image_outside_root": 1}
    return values, expected


def versions_in(repo: Path) -> list[str]:
    return sorted((p.name for p in (repo / "postlens").glob("[0-9]*")), key=int)


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Keyed by label id where there is one, so a label and its correction share a partition (as producers do)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            try:
                key = str(json.loads(value)["id"]).encode()
            except (ValueError, KeyError):
                key = None
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def committed_and_end(
    bootstrap: str, group: str, topic: str, partitions: int
) -> tuple[list[int | None], list[int]]:
    """Per partition: the group's committed offset and the end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        return [await consumer.committed(tp) for tp in tps], [end[tp] for tp in tps]
    finally:
        await consumer.stop()


@pytest.fixture
async def run_settings(settings: Settings, kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[Settings]:
    """Topics and a consumer group of the test's own (deleted afterwards); the file server's host may be fetched."""
    name = f"test-retrain-{uuid.uuid4().hex[:8]}"
    yield settings.model_copy(
        update={
            "topic_labels": f"{name}.labels",
            "topic_labels_rejected": f"{name}.labels.rejected",
            "retrain_group": name,
            "fetch_allowlist": ["127.0.0.1"],
        }
    )
    existing = set(await kafka_admin.list_topics())
    await kafka_admin.delete_topics(
        [topic for topic in (f"{name}.labels", f"{name}.labels.rejected") if topic in existing]
    )


@pytest.mark.integration
@pytest.mark.slow
async def test_retrain_from_the_labels_topic(
    run_settings: Settings,
    tiny_checkpoint: Path,
    exported_repo: Path,
    label_data: Path,
    file_server: str,
    tmp_path: Path,
) -> None:
    name = run_settings.retrain_group
    bootstrap, partitions = run_settings.kafka_bootstrap, 2
    values, expected_rejected = label_messages(label_data, file_server)
    await create_topic(bootstrap, run_settings.topic_labels, partitions)
    await publish(bootstrap, run_settings.topic_labels, values)
    # A repository of our own, serving tiny_checkpoint as version 1: the default base is the checkpoint behind it.
    repo = Path(shutil.copytree(exported_repo, tmp_path / "model_repository"))

    def options(**changes) -> RetrainOptions:
        fields = {
            "repo": repo, "image_root": label_data, "valid": label_data / "test.jsonl", "min_labels": 20,
            "tolerance": 0.0, "overrides": ["train.epochs=8", "train.threads=1"],
        }  # fmt: skip
        return RetrainOptions(**{**fields, **changes})

    # A dry run of part of the topic: trains and decides, but nothing is exported, published or committed.
    dry = await asyncio.to_thread(retrain, options(dry_run=True, max_labels=100, out=tmp_path / "dry"), run_settings)
    assert dry.status == "dry_run", dry.message
    assert dry.labels_read == 100 < len(values) and dry.decision is not None and not dry.offsets_committed
    assert Path(dry.base.checkpoint) == tiny_checkpoint.resolve()  # from version 1's model card
    assert versions_in(repo) == ["1"]
    committed, _ = await committed_and_end(bootstrap, name, run_settings.topic_labels, partitions)
    assert committed == [None] * partitions

    # The real run reads everything again (nothing was committed), refuses the invalid labels with their reasons,
    # compares base and candidate on the same evaluation set, and promotes the candidate unless it is worse.
    summary = await asyncio.to_thread(retrain, options(out=tmp_path / "candidate"), run_settings)
    assert summary.status in ("promoted", "kept_base"), summary.message
    print(f"\nretrain: base F1 {summary.base.f1:.3f} → candidate F1 {summary.candidate.f1:.3f}, {summary.seconds}")
    assert summary.labels_read == len(values) and summary.duplicates == 1
    assert summary.rejected == expected_rejected
    assert summary.labels_valid == len(values) - summary.duplicates - sum(expected_rejected.values())
    held_out = summary.eval_size - summary.eval_from_valid
    assert summary.eval_from_valid == len(load_examples(label_data / "test.jsonl")) and held_out > 0
    assert summary.train_size - summary.replay_size + summary.tune_size + held_out == summary.labels_clean
    assert summary.replay_size > 0 and summary.labels_clean == summary.labels_valid  # clean synthetic labels
    assert summary.base.report["n_posts"] == summary.candidate.report["n_posts"] == summary.eval_size
    assert [gate.gate for gate in summary.gates] == ["new_labels", "reference"]
    assert summary.decision == decide(summary.gates)
    assert (tmp_path / "candidate" / "retrain_comparison.png").is_file()
    if summary.status == "promoted":
        assert versions_in(repo) == ["1", "2"] and summary.exported_version == 2
        card = json.loads((repo / "postlens" / "2" / CARD_FILE).read_text())
        assert Path(card["source_checkpoint"]) == (tmp_path / "candidate").resolve()
    else:
        assert versions_in(repo) == ["1"] and summary.exported_version is None

    letters = [
        DeadLetter.model_validate_json(v) for _, v in await read_topic(bootstrap, run_settings.topic_labels_rejected)
    ]
    assert sorted(letter.error.kind for letter in letters) == sorted(
        kind for kind, count in expected_rejected.items() for _ in range(count)
    )
    assert all(letter.error.stage == "label" and letter.error.message for letter in letters)
    assert all(letter.source_topic == run_settings.topic_labels and letter.original for letter in letters)
    committed, end = await committed_and_end(bootstrap, name, run_settings.topic_labels, partitions)
    assert summary.offsets_committed and committed == end and sum(end) == len(values)

    # The command line, run again: no new labels → exit 3 with a clear message, nothing committed or exported.
    env = {
        **os.environ,
        "POSTLENS_TOPIC_LABELS": run_settings.topic_labels,
        "POSTLENS_TOPIC_LABELS_REJECTED": run_settings.topic_labels_rejected,
        "POSTLENS_RETRAIN_GROUP": name,
    }
    report = tmp_path / "again.json"
    before = versions_in(repo)
    command = [sys.executable, "-m", "trainer.retrain", "--repo", str(repo), "--json", str(report)]
    again = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == EXIT_TOO_FEW_LABELS, again.stderr[-2000:]
    assert "0 usable new labels" in again.stdout
    rerun = json.loads(report.read_text())
    assert rerun["labels_read"] == 0 and rerun["status"] == "too_few_labels" and not rerun["offsets_committed"]
    assert versions_in(repo) == before


def test_a_base_without_its_reference_set_or_replay_sample_is_an_error_that_names_the_remedy(tmp_path: Path) -> None:
    """A checkpoint trained before checkpoints carried their data: never a silent pass of the reference gate."""
    with pytest.raises(RetrainError, match="--reference FILE"):
        reference_set(tmp_path, [], [])
    curated = [Example.from_tokens("c1", ["Kenji", "in", "Lyon"], ["B-PER", "O", "B-LOC"])]
    assert reference_set(tmp_path, curated, []).examples == curated  # a curated set alone is a reference set
    with pytest.raises(RetrainError, match="--extra-train FILE"):
        replay_pool(tmp_path, 0.5)
    assert replay_pool(tmp_path, 0.0) == []  # POSTLENS_RETRAIN_REPLAY_SHARE=0: fine-tuning on the new labels alone
