"""The labeling loop against the real Label Studio, Kafka and Elasticsearch: push the uncertain posts, an annotator
corrects one, pull (or the webhook) puts the label on the labels topic, and trainer.retrain reads it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from elasticsearch import AsyncElasticsearch

from deploy.process import free_port
from postlens.schemas import DeadLetter, Label
from postlens.settings import Settings
from tests.support.image_server import ImageServer
from tests.support.kafka_io import read_topic
from tests.trainer.label.conftest import Annotator, Seeded, index_posts, project_tasks, seeded
from trainer.label import webhook
from trainer.label.__main__ import run_pull, run_push
from trainer.label.state import LabelState
from trainer.label.studio import LabelStudio

pytestmark = pytest.mark.integration


def posts(images: ImageServer) -> list[Seeded]:
    """Six indexed posts, from a coin toss to a sure thing; ``unsure-*`` are the three push must pick first."""
    return [
        seeded("unsure-toss", "Jordan visited Paris with Acme", [("Jordan", "PER", 0.51), ("Paris", "LOC", 0.97)],
               [images.url("img/toss.png")]),
        seeded("unsure-low", "Lagos floods close the Eko bridge", [("Lagos", "LOC", 0.35)],
               [images.url("img/low.png")]),
        seeded("unsure-rare", "Watching Dune tonight at home", [("Dune", "MISC", 0.8)], []),
        seeded("sure-1", "Barack Obama spoke in Chicago", [("Barack Obama", "PER", 0.99), ("Chicago", "LOC", 0.98)],
               [images.url("img/s1.png")]),
        seeded("sure-2", "Angela Merkel met Emmanuel Macron", [("Angela Merkel", "PER", 0.98),
                                                                ("Emmanuel Macron", "PER", 0.99)], []),
        seeded("sure-3", "Rain again in London today", [("London", "LOC", 0.99)], []),
    ]  # fmt: skip


async def labels_on(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value in await read_topic(settings.kafka_bootstrap, topic)]


def corrected(task: dict[str, Any]) -> list[dict[str, Any]]:
    """What an annotator submits after looking at the pre-annotation: the prediction, kept as it is."""
    return [{k: v for k, v in r.items() if k != "score"} for r in task["predictions"][0]["result"]]


def retrain_reads(settings: Settings, checkpoint: Path, tmp_path: Path) -> dict[str, Any]:
    """``trainer.retrain --dry-run`` on the test's labels topic → its JSON summary."""
    env = {
        **os.environ,
        "POSTLENS_TOPIC_LABELS": settings.topic_labels,
        "POSTLENS_TOPIC_LABELS_REJECTED": settings.topic_labels_rejected,
        "POSTLENS_RETRAIN_GROUP": settings.retrain_group,
        "POSTLENS_FETCH_ALLOWLIST": '["127.0.0.1"]',
    }
    report = tmp_path / "retrain.json"
    command = [sys.executable, "-m", "trainer.retrain", "--dry-run", "--min-labels", "1", "--base", str(checkpoint),
               "--out", str(tmp_path / "candidate"), "--set", "train.epochs=1", "--json", str(report)]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert report.is_file(), f"trainer.retrain wrote no summary:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return json.loads(report.read_text())


async def test_push_annotate_pull_and_retrain_reads_the_label(
    loop_settings: Settings, es: AsyncElasticsearch, images: ImageServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    await index_posts(es, loop_settings, posts(images))
    pushed = await run_push(loop_settings, 3)
    assert pushed["tasks"] == 3 and pushed["spans"] == 4 and pushed["boxes"] == 3

    tasks = {task["data"]["post_id"]: task for task in await project_tasks(loop_settings)}
    assert sorted(tasks) == ["unsure-low", "unsure-rare", "unsure-toss"]
    [prediction] = tasks["unsure-toss"]["predictions"]
    assert prediction["model_version"] == "postlens/3"
    spans = {r["value"]["text"]: r["score"] for r in prediction["result"] if r["type"] == "labels"}
    assert spans == {"Jordan": pytest.approx(0.51), "Paris": pytest.approx(0.97)}

    # A second push sends none of these again: only the sure posts are left.
    again = await run_push(loop_settings, 10)
    assert again["tasks"] == 3
    assert sorted(t["data"]["post_id"] for t in await project_tasks(loop_settings)) == sorted(
        p.id for p in posts(images)
    )

    alice = await Annotator(loop_settings, f"alice-{time.time_ns()}@example.org").join()
    try:
        task = tasks["unsure-toss"]
        result = corrected(task)
        for r in result:  # Alice corrects the model: Jordan (span e0, its box e0b0) is a place here.
            if r.get("id") == "e0":
                r["value"]["labels"] = ["LOC"]
            elif r.get("id") == "e0b0":
                r["value"]["rectanglelabels"] = ["LOC"]
        annotation = await alice.annotate(task["id"], result)
    finally:
        await alice.close()

    pulled = await run_pull(loop_settings)
    assert pulled["labels"] == 1 and pulled["skipped"] == 0 and not pulled["refused"]
    [message] = await labels_on(loop_settings, loop_settings.topic_labels)
    label = Label.model_validate(message)
    assert label.id == "unsure-toss" and label.label_id.endswith(f"annotation-{annotation['id']}")
    assert label.source == f"annotator:{alice.email}@label-studio"
    assert [(label.text[e.start : e.end], e.type) for e in label.entities] == [("Jordan", "LOC"), ("Paris", "LOC")]
    assert [(b.entity, b.image_index) for b in label.boxes] == [(0, 0), (1, 0)]
    assert label.boxes[0].box == pytest.approx((0.0, 0.1, 0.3, 0.5))
    assert label.meta["task_id"] == task["id"] and label.meta["model_version"] == "postlens/3"

    # Pulling again publishes nothing new.
    assert (await run_pull(loop_settings))["already"] == 1
    assert len(await labels_on(loop_settings, loop_settings.topic_labels)) == 1

    summary = await asyncio.to_thread(retrain_reads, loop_settings, tiny_checkpoint, tmp_path)
    assert summary["labels_read"] == 1 and summary["labels_valid"] == 1, summary


async def test_skipped_and_refused_annotations_are_not_labels(
    loop_settings: Settings, es: AsyncElasticsearch, images: ImageServer
) -> None:
    await index_posts(es, loop_settings, posts(images)[:3])
    await run_push(loop_settings, 3)
    tasks = {task["data"]["post_id"]: task for task in await project_tasks(loop_settings)}
    bob = await Annotator(loop_settings, f"bob-{time.time_ns()}@example.org").join()
    try:
        await bob.skip(tasks["unsure-low"]["id"])
        # Two spans over one another: Label Studio takes it, a label cannot be.
        text = tasks["unsure-toss"]["data"]["text"]
        overlapping = [
            {"id": f"s{i}", "type": "labels", "from_name": "entity", "to_name": "text",
             "value": {"start": start, "end": end, "text": text[start:end], "labels": ["PER"]}}
            for i, (start, end) in enumerate([(0, 6), (3, 14)])
        ]  # fmt: skip
        await bob.annotate(tasks["unsure-toss"]["id"], overlapping)
        await bob.annotate(tasks["unsure-rare"]["id"], corrected(tasks["unsure-rare"]))
    finally:
        await bob.close()

    pulled = await run_pull(loop_settings)
    assert pulled["labels"] == 1 and pulled["skipped"] == 1 and pulled["refused"] == {"schema": 1}
    [label] = await labels_on(loop_settings, loop_settings.topic_labels)
    assert label["id"] == "unsure-rare"
    [letter] = [DeadLetter.model_validate_json(v) for _, v in
                await read_topic(loop_settings.kafka_bootstrap, loop_settings.topic_labels_rejected)]  # fmt: skip
    assert letter.error.stage == "label" and letter.error.kind == "schema" and "overlap" in letter.error.message
    assert json.loads(letter.original)["task"]["data"]["post_id"] == "unsure-toss"
    # Nothing is counted twice on the next pull, and the skipped post counts as sent, not as labeled.
    again = await run_pull(loop_settings)
    assert again["already"] == 3 and again["labels"] == 0


async def test_the_webhook_publishes_at_once_and_shares_state_with_pull(
    loop_settings: Settings, es: AsyncElasticsearch, images: ImageServer
) -> None:
    port = free_port()
    hooked = loop_settings.model_copy(update={"label_webhook_port": port})
    await index_posts(es, hooked, posts(images)[:2])
    await run_push(hooked, 2)
    tasks = {task["data"]["post_id"]: task for task in await project_tasks(hooked)}
    state = LabelState(hooked.label_state)
    studio = LabelStudio(hooked)
    runner = web.AppRunner(webhook.app(hooked, studio, state))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        project_id = tasks["unsure-toss"]["project"]
        await studio.ensure_webhook(project_id, f"http://127.0.0.1:{port}{webhook.PATH}")
        carol = await Annotator(hooked, f"carol-{time.time_ns()}@example.org").join()
        try:
            first = await carol.annotate(tasks["unsure-low"]["id"], corrected(tasks["unsure-low"]))
            deadline = time.monotonic() + 60
            while not (found := await labels_on(hooked, hooked.topic_labels)) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert [m["label_id"] for m in found] == [f"label-studio/project-{project_id}/annotation-{first['id']}"]
            assert found[0]["source"] == f"annotator:{carol.email}@label-studio"

            # The poll sees the same annotation and publishes nothing; an update is a new version: one more label.
            assert (await run_pull(hooked))["already"] == 1
            await carol.call("PATCH", f"/api/annotations/{first['id']}/", {"result": []})
            while len(found := await labels_on(hooked, hooked.topic_labels)) < 2 and time.monotonic() < deadline + 60:
                await asyncio.sleep(0.5)
        finally:
            await carol.close()
        assert [m["label_id"] for m in found] == [found[0]["label_id"]] * 2
        assert found[1]["entities"] == []  # the correction: no entity after all
        again = await run_pull(hooked)  # Label Studio has the annotation's latest version only: handled already
        assert again["already"] == 1 and again["labels"] == 0
    finally:
        await runner.cleanup()
        await studio.close()
        state.close()
