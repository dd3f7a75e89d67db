"""Retraining cannot make the served model worse — on the real Kafka and Triton.

The base is a small text model trained on synthetic posts whose context settles each entity's type (it scores
F1 ≈ 1 on them, confidently), exported as version 1 of a repository a Triton of the test's own serves. Each test
publishes one batch of labels — its makeup is in the test's docstring — to a topic of its own and runs
``trainer.retrain`` as the README says.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from deploy.process import free_port
from postlens.runtime.exported import CARD_FILE, ONNX_FILE
from postlens.schemas import DeadLetter
from postlens.settings import Settings
from tests.fixtures_model import ServedModel
from tests.support.kafka_io import read_topic
from tests.trainer.retrain.test_run import create_topic, publish, versions_in
from trainer.export import export_model
from trainer.retrain.__main__ import main as retrain_main
from trainer.retrain.audit import QUARANTINE_KIND
from trainer.retrain.lineage import history
from trainer.retrain.report import RetrainSummary
from trainer.retrain.run import RetrainOptions, retrain
from trainer.synth import NEUTRAL_TEMPLATES, generate

CONTEXT_SUBSETS = {"irrelevant_image", "no_image"}  # posts whose words settle every entity's type
SWAP = {"PER": "LOC", "LOC": "PER", "ORG": "MISC", "MISC": "ORG"}
# Names the base never saw, in templates that say nothing of their type: it cannot know them.
NEW_NAMES = {
    "PER": ("Zeynep Aksoy", "Oluwaseun Adeyemi", "Bartholomew Quist"),
    "LOC": ("Tromsø", "Ouagadougou", "Zanzibar"),
    "ORG": ("Vandelay Industries", "Kraftwerk Holdings", "Quarkly"),
}
FINE_TUNE = ["train.epochs=6", "train.patience=6", "train.threads=1"]


def context_posts(folder: Path, posts: int, seed: int) -> dict[str, list[dict]]:
    """Synthetic labels (the label form) by split, keeping only the posts whose context settles the types."""
    generate(folder, posts, seed=seed)
    splits = {}
    for split in ("train", "valid", "test"):
        labels = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        splits[split] = [label for label in labels if CONTEXT_SUBSETS & set(label.get("subsets", []))]
        with (folder / f"context-{split}.jsonl").open("w") as out:
            out.writelines(json.dumps(label) + "\n" for label in splits[split])
    return splits


@pytest.fixture(scope="module")
def base_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("safety-base-data")
    context_posts(folder, 700, seed=7)
    return folder


@pytest.fixture(scope="module")
def base_checkpoint(base_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trainer.train`` as a user runs it: its valid file becomes the checkpoint's reference set."""
    out = tmp_path_factory.mktemp("safety-base")
    command = [
        sys.executable, "-m", "trainer.train", "--preset", "tiny", "--strategy", "text",
        "--train", str(base_data / "context-train.jsonl"), "--valid", str(base_data / "context-valid.jsonl"),
        "--out", str(out), "--set", "train.epochs=10",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def label_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean labels of the same kind of posts, never seen by the base (another seed)."""
    folder = tmp_path_factory.mktemp("safety-labels")
    context_posts(folder, 900, seed=23)
    return folder


def clean_labels(pool: Path, source: str, count: int, salt: str) -> list[dict]:
    labels = [json.loads(line) for split in ("train", "valid", "test")
              for line in (pool / f"context-{split}.jsonl").read_text().splitlines()]  # fmt: skip
    random.Random(salt).shuffle(labels)
    return [{**label, "id": f"{salt}-{label['id']}", "source": source} for label in labels[:count]]


def swapped(labels: list[dict]) -> list[dict]:
    """What a wrong type mapping in an annotation export produces: PER↔LOC, ORG↔MISC."""
    return [{**label, "entities": [{**e, "type": SWAP[e["type"]]} for e in label["entities"]]} for label in labels]


def without_type(labels: list[dict], dropped: str) -> list[dict]:
    """Labels whose ``dropped`` entities were lost (an exporter that forgot a type)."""
    return [
        {**label, "entities": [e for e in label["entities"] if e["type"] != dropped], "boxes": []} for label in labels
    ]


def new_name_labels(count: int, seed: int) -> list[dict]:
    """Posts naming entities the base cannot know (NEW_NAMES in neutral templates), each name always of one type."""
    rng = random.Random(seed)
    labels = []
    for index in range(count):
        entity_type = rng.choice(sorted(NEW_NAMES))
        name = rng.choice(NEW_NAMES[entity_type])
        before, after = rng.choice(NEUTRAL_TEMPLATES).split("{}")
        entity = {"start": len(before), "end": len(before) + len(name), "type": entity_type}
        text = f"{before}{name}{after}"
        labels.append({"id": f"new-{seed}-{index}", "text": text, "source": "annotator:carol", "entities": [entity]})
    return labels


@pytest.fixture
async def world(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, base_checkpoint: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[Settings, Path]]]:
    """A labels topic, rejected topic and group of the test's own, and a repository serving the base as version 1."""
    name = f"test-safety-{uuid.uuid4().hex[:8]}"
    run_settings = settings.model_copy(
        update={
            "topic_labels": f"{name}.labels", "topic_labels_rejected": f"{name}.labels.rejected",
            "retrain_group": name, "retrain_reference_min_type_spans": 5,
            # The tiny base was trained from random weights in a minute: fine-tuned at its own rates.
            "retrain_lr_scale": 1.0,
        }
    )  # fmt: skip
    repo = tmp_path / "model_repository"
    export_model(base_checkpoint, repo)

    def make(**changes: object) -> tuple[Settings, Path]:
        return run_settings.model_copy(update=changes), repo

    await create_topic(run_settings.kafka_bootstrap, run_settings.topic_labels, 2)
    yield make
    existing = set(await kafka_admin.list_topics())
    await kafka_admin.delete_topics([t for t in (f"{name}.labels", f"{name}.labels.rejected") if t in existing])


async def run_retrain(
    run_settings: Settings, repo: Path, labels: list[dict], data: Path, tmp_path: Path, **options: object
) -> RetrainSummary:
    await publish(run_settings.kafka_bootstrap, run_settings.topic_labels, [json.dumps(x).encode() for x in labels])
    fields = {
        "repo": repo, "image_root": data, "min_labels": 20, "tolerance": 0.0, "overrides": FINE_TUNE,
        "out": tmp_path / f"candidate-{uuid.uuid4().hex[:6]}", **options,
    }  # fmt: skip
    summary = await asyncio.to_thread(retrain, RetrainOptions(**fields), run_settings)
    print(
        f"\n{summary.status}: audit {summary.audit and summary.audit.groups}, gates {summary.gates}, {summary.seconds}"
    )
    return summary


async def quarantined_letters(run_settings: Settings) -> list[DeadLetter]:
    records = await read_topic(run_settings.kafka_bootstrap, run_settings.topic_labels_rejected)
    return [
        letter
        for _, value in records
        if (letter := DeadLetter.model_validate_json(value)).error.kind == QUARANTINE_KIND
    ]


@pytest.mark.integration
@pytest.mark.slow
async def test_type_swapped_labels_are_quarantined_and_the_served_version_stays(
    world, label_pool: Path, tmp_path: Path
) -> None:
    """Batch: 120 labels from one export whose types are swapped (PER↔LOC, ORG↔MISC)."""
    run_settings, repo = world()
    labels = swapped(clean_labels(label_pool, "export:crm-2026-11", 120, "swap"))
    summary = await run_retrain(run_settings, repo, labels, label_pool, tmp_path)
    assert summary.status == "quarantined" and summary.offsets_committed, summary.message
    assert summary.audit.quarantined_sources == ["export:crm-2026-11"] and summary.labels_clean == 0
    assert summary.rejected == {QUARANTINE_KIND: 120} and summary.gates == [] and summary.exported_version is None
    assert versions_in(repo) == ["1"]
    letters = await quarantined_letters(run_settings)
    assert len(letters) == 120 and all("type swap" in letter.error.message for letter in letters)
    assert "gold type → model" in letters[0].error.message  # the confusion that triggered it


@pytest.mark.integration
@pytest.mark.slow
async def test_a_type_swapped_source_is_quarantined_and_the_clean_source_trained_on(
    world, label_pool: Path, tmp_path: Path
) -> None:
    """Batch: 80 clean labels from annotator alice, 80 type-swapped labels from annotator mallory, interleaved."""
    run_settings, repo = world()
    clean = clean_labels(label_pool, "annotator:alice", 80, "alice")
    bad = swapped(clean_labels(label_pool, "annotator:mallory", 80, "mallory"))
    labels = [label for pair in zip(clean, bad, strict=True) for label in pair]
    summary = await run_retrain(run_settings, repo, labels, label_pool, tmp_path, dry_run=True)
    assert summary.audit.quarantined_sources == ["annotator:mallory"], summary.audit
    assert summary.labels_clean == 80 and summary.status == "dry_run" and summary.gates
    held_out = summary.eval_size - summary.eval_from_valid
    assert summary.train_size - summary.replay_size + summary.tune_size + held_out == 80  # alice's labels only


@pytest.mark.integration
@pytest.mark.slow
async def test_a_clean_control_batch_is_never_quarantined(world, label_pool: Path, tmp_path: Path) -> None:
    """Batch: 150 clean labels from two annotators (the control)."""
    run_settings, repo = world()
    labels = clean_labels(label_pool, "annotator:alice", 75, "c1") + clean_labels(label_pool, "annotator:bob", 75, "c2")
    summary = await run_retrain(run_settings, repo, labels, label_pool, tmp_path, dry_run=True)
    assert summary.audit.quarantined_labels == 0 and summary.labels_clean == 150
    assert [group.group for group in summary.audit.groups] == ["annotator:alice", "annotator:bob", "batch"]


@pytest.mark.integration
@pytest.mark.slow
async def test_labels_that_teach_what_the_model_misses_are_promoted_and_served(
    world, label_pool: Path, served_by: Callable[[Path], ServedModel], tmp_path: Path
) -> None:
    """Batch: 120 posts naming entities the base never saw, in templates that do not say their type (each name
    always labeled with one type), mixed with 80 ordinary clean labels; all from annotator carol."""
    run_settings, repo = world()
    served = served_by(repo)
    labels = new_name_labels(120, seed=5) + clean_labels(label_pool, "annotator:carol", 80, "carol")
    random.Random(0).shuffle(labels)
    summary = await run_retrain(run_settings, repo, labels, label_pool, tmp_path, triton_http=served.http_url)
    assert summary.audit.quarantined_labels == 0
    new_labels, reference = summary.gates
    assert new_labels.candidate_f1 > new_labels.base_f1 + 0.2, new_labels  # it learned the new names
    assert reference.passed, reference.reasons  # and forgot nothing it was selected on
    assert summary.status == "promoted" and summary.exported_version == 2 and not summary.triton_refused
    assert served_version(served) == "2"
    (_, promoted) = history(repo / "postlens")
    assert (
        promoted.parent_version == 1 and promoted.decision == "promote" and promoted.sources == {"annotator:carol": 200}
    )
    card = json.loads((repo / "postlens" / "2" / CARD_FILE).read_text())
    assert card["lineage"]["labels"]["topic"] == run_settings.topic_labels and card["lineage"]["labels"]["ranges"]
    assert card["carried"]["reference"]["origins"][0]["path"].endswith("context-valid.jsonl")


@pytest.mark.integration
@pytest.mark.slow
async def test_a_candidate_that_forgets_a_type_is_refused_by_the_reference_gate(
    world, label_pool: Path, tmp_path: Path
) -> None:
    """Batch: 200 clean labels from one export that lost every MISC entity; audit bypassed (--no-audit) and no
    replay, so the candidate learns to forget MISC."""
    run_settings, repo = world(retrain_replay_share=0.0)
    labels = without_type(clean_labels(label_pool, "export:v2", 200, "forget"), "MISC")
    summary = await run_retrain(
        run_settings,
        repo,
        labels,
        label_pool,
        tmp_path,
        no_audit=True,
        overrides=["train.epochs=10", "train.threads=1"],
    )
    assert summary.audit.bypassed and summary.status == "kept_base", summary.message
    reference = summary.gates[1]
    assert not reference.passed and any("reference gate: type MISC" in reason for reason in reference.reasons)
    assert versions_in(repo) == ["1"]


@pytest.fixture
def served_by(start_triton: Callable[[Path], ServedModel]) -> Callable[[Path], ServedModel]:
    return start_triton


def served_version(served: ServedModel) -> str:
    with urllib.request.urlopen(f"{served.http_url}/v2/models/postlens", timeout=5) as response:
        return json.load(response)["versions"][0]


def test_history_and_rollback_on_the_command_line(
    base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--history lists every version; --rollback N copies N as the newest version with rollback_of: N."""
    repo = tmp_path / "repo"
    export_model(base_checkpoint, repo)
    shutil.copytree(repo / "postlens" / "1", repo / "postlens" / "2")  # a second version, as a promotion makes

    def cli(*args: str) -> tuple[int, str, str]:
        """The command's exit status, stdout and stderr, run in-process (the argv a user types after the module)."""
        try:
            retrain_main(["--repo", str(repo), *args])
            status: int | str | None = 0
        except SystemExit as stop:
            status = stop.code
        captured = capsys.readouterr()
        if isinstance(status, str):  # SystemExit("message"): Python prints it to stderr and exits 1
            return 1, captured.out, captured.err + status
        return status or 0, captured.out, captured.err

    status, out, err = cli("--rollback", "1")
    assert status == 0, err
    assert versions_in(repo) == ["1", "2", "3"] and "version 3 serves version 1 again" in out
    card = json.loads((repo / "postlens" / "3" / CARD_FILE).read_text())
    assert card["lineage"]["rollback_of"] == 1 and card["lineage"]["parent_version"] == 2
    onnx = [(repo / "postlens" / version / ONNX_FILE).read_bytes() for version in ("1", "3")]
    assert onnx[0] == onnx[1]  # what version 1 served, byte for byte
    status, out, _ = cli("--history")
    assert status == 0 and "rollback of 1" in out and "SERVED" in out.splitlines()[-1]
    rows = json.loads(cli("--history", "--json", "-")[1])
    assert [row["version"] for row in rows] == [1, 2, 3] and rows[2]["rollback_of"] == 1
    status, _, err = cli("--rollback", "3")
    assert status != 0 and "is the newest version" in err


@pytest.mark.integration
@pytest.mark.slow
async def test_watch_mode_retrains_when_labels_wait_shows_it_in_metrics_and_stops_on_sigterm(
    world, label_pool: Path, tmp_path: Path
) -> None:
    """Batch: 40 type-swapped labels from one export, published while ``--watch`` runs (it retrains at 30 waiting)."""
    run_settings, repo = world()
    port = free_port()
    env = {
        **os.environ,
        "POSTLENS_TOPIC_LABELS": run_settings.topic_labels,
        "POSTLENS_TOPIC_LABELS_REJECTED": run_settings.topic_labels_rejected,
        "POSTLENS_RETRAIN_GROUP": run_settings.retrain_group,
        "POSTLENS_RETRAIN_WATCH_LABELS": "30",
        "POSTLENS_RETRAIN_WATCH_POLL_S": "1",
        "POSTLENS_RETRAIN_METRICS_PORT": str(port),
    }
    command = [sys.executable, "-m", "trainer.retrain", "--watch", "--repo", str(repo), "--image-root", str(label_pool)]
    log = (tmp_path / "watch.log").open("w")
    watcher = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                families = text_string_to_metric_families(response.read().decode())
        except OSError:  # not listening yet: the watcher is still starting
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}

    try:
        labels = swapped(clean_labels(label_pool, "export:crm", 40, "watch"))
        await publish(run_settings.kafka_bootstrap, run_settings.topic_labels, [json.dumps(x).encode() for x in labels])
        deadline = time.monotonic() + 600
        while metrics().get(("postlens_retrain_runs_total", (("status", "quarantined"),)), 0) < 1:
            assert watcher.poll() is None, (tmp_path / "watch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run after 600 s"
            await asyncio.sleep(1)
        await asyncio.sleep(2.5)  # the next poll sees the labels consumed
        seen = metrics()
        assert seen[("postlens_retrain_quarantined_labels_total", (("reason", "type swap"),))] == 40
        assert seen[("postlens_retrain_labels_waiting", ())] == 0
        assert seen[("postlens_retrain_served_version", ())] == 1
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
        log.close()
    assert versions_in(repo) == ["1"] and len(await quarantined_letters(run_settings)) == 40
