"""trainer.retrain: label validation, dedup, the hash split and the gate (unit); a full run against real Kafka."""

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

import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from PIL import Image

from postlens.schemas import DeadLetter, Label
from postlens.settings import Settings
from postlens.io.deadletter import RawMessage
from trainer.data.examples import load_examples
from postlens.runtime.exported import CARD_FILE
from trainer.retrain import (
    EXIT_TOO_FEW_LABELS,
    InvalidLabel,
    LabelImages,
    LabelMessage,
    RetrainError,
    RetrainOptions,
    RetrainSummary,
    TooFewLabels,
    decide,
    fine_tune_config,
    fine_tuning_sets,
    id_position,
    label_example,
    latest_by_id,
    parse_label,
    resolve_base,
    retrain,
    split_labels,
)
from trainer.synth import generate
from trainer.train import resolve_config


# ------------------------------------------------------------------------------------------------------------
# Unit: validation
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "empty"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"id": "a", "text": "\xff", "entities": []}', "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "schema"),
        (b'{"text": "no id", "entities": []}', "schema"),
        (b'{"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 9, "type": "LOC"}]}', "schema"),
        (b'{"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 5, "type": "CITY"}]}', "schema"),
        (b'{"id": "a", "tokens": ["Paris", "rocks"], "tags": ["B-LOC"]}', "schema"),
        (b'{"id": "a", "text": "Paris"}', "schema"),
    ],
)
def test_invalid_label_messages_are_refused_with_a_reason(value: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidLabel) as refused:
        parse_label(value)
    assert refused.value.kind == kind and str(refused.value)


def test_both_label_forms_become_examples(tmp_path: Path) -> None:
    spans = parse_label(b'{"id": 7, "text": "Jordan visited Paris", "entities": [{"start": 15, "end": 20, "type": "LOC"}]}')
    tags = parse_label(b'{"id": "8", "tokens": ["Jordan", "visited", "Paris"], "tags": ["B-PER", "O", "B-LOC"]}')
    span_example, notes = label_example(spans, tmp_path, max_text_chars=100)
    tag_example, _ = label_example(tags, tmp_path, max_text_chars=100)
    assert span_example.id == "7" and [(e.start, e.end, e.type) for e in span_example.entities] == [(15, 20, "LOC")]
    assert [e.type for e in tag_example.entities] == ["PER", "LOC"] and notes == []


def test_labels_the_model_cannot_take_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidLabel) as empty:
        label_example(Label(id="e", text="   ", entities=[]), tmp_path, max_text_chars=100)
    with pytest.raises(InvalidLabel) as long:
        label_example(Label(id="l", text="word " * 30, entities=[]), tmp_path, max_text_chars=100)
    with pytest.raises(InvalidLabel) as tags:
        label_example(Label(id="t", tokens=["a", "b"], tags=["B-PER", "X-LOC"]), tmp_path, max_text_chars=100)
    assert (empty.value.kind, long.value.kind, tags.value.kind) == ("empty_text", "oversize", "conversion")


def test_a_span_inside_a_word_is_widened_and_reported(tmp_path: Path) -> None:
    label = Label(id="w", text="Obama spoke", entities=[{"start": 0, "end": 4, "type": "PER"}])
    example, notes = label_example(label, tmp_path, max_text_chars=100)
    assert [(e.start, e.end) for e in example.entities] == [(0, 5)] and len(notes) == 1


def message(offset: int, timestamp: int) -> LabelMessage:
    return LabelMessage(RawMessage(b"{}", None, "labels", 0, offset), timestamp)


def test_the_latest_label_per_id_wins() -> None:
    first = Label(id="b", text="Paris", entities=[{"start": 0, "end": 5, "type": "PER"}])
    fixed = Label(id="b", text="Paris", entities=[{"start": 0, "end": 5, "type": "LOC"}])
    other = Label(id="a", text="Rome", entities=[])
    kept, superseded = latest_by_id([(message(0, 100), first), (message(1, 100), other), (message(2, 101), fixed)])
    assert superseded == 1
    assert [label.id for _, label in kept] == ["a", "b"] and kept[1][1].entities[0].type == "LOC"
    # Order of arrival does not matter: time, then offset, decides.
    kept, _ = latest_by_id([(message(2, 101), fixed), (message(0, 100), first)])
    assert kept[0][1].entities[0].type == "LOC"


# ------------------------------------------------------------------------------------------------------------
# Unit: split, gate, base, config
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_examples(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth-split")
    generate(out, 600, seed=3)
    return load_examples(out / "train.jsonl") + load_examples(out / "valid.jsonl")


def test_split_is_a_deterministic_partition_in_the_configured_shares(many_examples) -> None:
    split = split_labels(many_examples, holdout=0.15, tune=0.10)
    ids = [[e.id for e in part] for part in (split.train, split.tune, split.holdout)]
    assert sorted(i for part in ids for i in part) == sorted(e.id for e in many_examples)  # every label once
    n = len(many_examples)
    assert abs(len(split.holdout) / n - 0.15) < 0.05 and abs(len(split.tune) / n - 0.10) < 0.05
    again = split_labels(list(reversed(many_examples)), holdout=0.15, tune=0.10)
    assert sorted(e.id for e in again.holdout) == sorted(ids[2])


def test_a_label_stays_in_its_slice_whatever_else_arrives(many_examples) -> None:
    """Labels trained on in one run never become evaluation labels in a later (e.g. --from-beginning) run."""
    half = many_examples[: len(many_examples) // 2]
    held_alone = {e.id for e in split_labels(half, 0.15, 0.10).holdout}
    held_with_all = {e.id for e in split_labels(many_examples, 0.15, 0.10).holdout}
    assert held_alone == held_with_all & {e.id for e in half}
    assert all(0 <= id_position(e.id) < 1 for e in many_examples)


def test_fine_tuning_sets_combine_the_slices_with_the_given_files(many_examples) -> None:
    labels, valid, extra = many_examples[:200], many_examples[200:230], many_examples[230:240]
    sets = fine_tuning_sets(labels, valid, extra, holdout=0.15, tune=0.10)
    split = split_labels(labels, 0.15, 0.10)
    assert sets.evaluation == [*split.holdout, *valid] and sets.train == [*split.train, *extra]
    assert sets.tune == split.tune and not {e.id for e in sets.train} & {e.id for e in sets.evaluation}


def test_labels_too_few_to_hold_any_out_are_refused_unless_valid_data_is_given(many_examples) -> None:
    trained_only = [e for e in many_examples if id_position(e.id) >= 0.25][:5]
    with pytest.raises(TooFewLabels, match="0 held out"):
        fine_tuning_sets(trained_only, [], [], holdout=0.15, tune=0.10)
    sets = fine_tuning_sets(trained_only, many_examples[:3], [], holdout=0.15, tune=0.10)
    assert len(sets.evaluation) == 3 and len(sets.train) == 5 and sets.tune == []


def test_the_gate_promotes_only_a_candidate_that_is_not_worse() -> None:
    assert decide(0.70, 0.70, tolerance=0.0) == "promote"
    assert decide(0.70, 0.69, tolerance=0.0) == "keep_base"
    assert decide(0.70, 0.69, tolerance=0.02) == "promote"
    assert decide(0.70, 0.90, tolerance=0.0) == "promote"


def fake_checkpoint(path: Path, weights: str) -> Path:
    path.mkdir(parents=True)
    config = resolve_config("tiny").model_dump(mode="json")
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "version": weights}))
    return path


def fake_version(repo: Path, version: int, checkpoint: Path, weights: str) -> None:
    folder = repo / "postlens" / str(version)
    folder.mkdir(parents=True)
    card = {"source_checkpoint": str(checkpoint), "checkpoint_version": weights}
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_the_default_base_is_the_checkpoint_behind_the_newest_version(tmp_path: Path) -> None:
    old, new = fake_checkpoint(tmp_path / "old", "aaa"), fake_checkpoint(tmp_path / "new", "bbb")
    repo = tmp_path / "repo"
    fake_version(repo, 1, old, "aaa")
    fake_version(repo, 2, new, "bbb")
    assert resolve_base(None, repo, "postlens") == new
    assert resolve_base(old, repo, "postlens") == old  # --base wins


def test_no_usable_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="no versions"):
        resolve_base(None, tmp_path / "empty", "postlens")
    changed = fake_checkpoint(tmp_path / "ckpt", "ccc")
    fake_version(tmp_path / "repo", 1, changed, "old-weights")
    with pytest.raises(RetrainError, match="weights ccc"):
        resolve_base(None, tmp_path / "repo", "postlens")
    fake_version(tmp_path / "gone", 1, tmp_path / "deleted", "x")
    with pytest.raises(RetrainError, match="no longer a checkpoint"):
        resolve_base(None, tmp_path / "gone", "postlens")


def test_fine_tuning_keeps_the_base_architecture_and_takes_train_overrides(tmp_path: Path) -> None:
    base = fake_checkpoint(tmp_path / "base", "abc")
    config = fine_tune_config(base, ["train.epochs=2", "loss.contrastive=0"])
    assert config.train.epochs == 2 and config.loss.contrastive == 0 and config.model.fusion.name == "cross"
    with pytest.raises(RetrainError, match="model comes from the base"):
        fine_tune_config(base, ["model.fusion.name=text"])
    with pytest.raises(RetrainError, match="--set"):
        fine_tune_config(base, ["train.no_such_key=1"])


# ------------------------------------------------------------------------------------------------------------
# Unit: label images (local files)
# ------------------------------------------------------------------------------------------------------------


async def test_local_label_images_become_model_pixels_and_stay_inside_the_root(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (100, 50), "red").save(root / "red.png")
    (root / "notes.txt").write_text("not an image")
    images = LabelImages(settings, image_size=32, root=root, out=tmp_path / "work")
    try:
        [local] = await images.localize([str(root / "red.png")])
        with Image.open(local) as image:
            pixels = np.asarray(image)
        assert pixels.shape == (32, 32, 3) and (pixels[..., 0] > 250).all()
        kinds = {}
        for reference in (tmp_path / "outside.png", root / "missing.png", root / "notes.txt"):
            with pytest.raises(InvalidLabel) as refused:
                await images.localize([str(reference)])
            kinds[reference.name] = refused.value.kind
    finally:
        await images.close()
    assert kinds == {"outside.png": "image_outside_root", "missing.png": "image_missing", "notes.txt": "image_not_image"}


def test_exit_codes_follow_the_outcome() -> None:
    def code(**fields) -> int:
        return RetrainSummary(topic="t", group="g", **fields).exit_code

    assert code(status="promoted") == code(status="kept_base") == code(status="dry_run") == 0
    assert code(status="too_few_labels") == EXIT_TOO_FEW_LABELS
    assert code(status="failed") == 1 and code(status="promoted", triton_refused=True) == 4


# ------------------------------------------------------------------------------------------------------------
# Integration: a run against the real Kafka
# ------------------------------------------------------------------------------------------------------------


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
        json.dumps({"id": "gone", "text": "Lyon today", "images": [f"{base_url}/images/none.png"], "entities": []}).encode(),
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


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(record.value for record in records)
        return values
    finally:
        await consumer.stop()


async def committed_and_end(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[list[int | None], list[int]]:
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
    await kafka_admin.delete_topics([topic for topic in (f"{name}.labels", f"{name}.labels.rejected") if topic in existing])


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
    assert summary.train_size + summary.tune_size + held_out == summary.labels_valid
    assert summary.base.report["n_posts"] == summary.candidate.report["n_posts"] == summary.eval_size
    assert summary.decision == decide(summary.base.f1, summary.candidate.f1, tolerance=0.0)
    assert (tmp_path / "candidate" / "retrain_comparison.png").is_file()
    if summary.status == "promoted":
        assert versions_in(repo) == ["1", "2"] and summary.exported_version == 2
        card = json.loads((repo / "postlens" / "2" / CARD_FILE).read_text())
        assert Path(card["source_checkpoint"]) == (tmp_path / "candidate").resolve()
    else:
        assert versions_in(repo) == ["1"] and summary.exported_version is None

    letters = [DeadLetter.model_validate_json(v) for v in await read_all(bootstrap, run_settings.topic_labels_rejected)]
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
