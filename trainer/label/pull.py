"""Annotations → labels on the labels topic, the one path the poll and the webhook receiver share.

Per annotation version (annotation id + update time) not handled before (:class:`~trainer.label.state.LabelState`):
skipped/cancelled ones are counted and remembered, not published; one that converts is published to the labels topic
(key = post id); one that does not is published to the rejected-labels topic with the reason. The state is written
only after Kafka acknowledged the messages.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from postlens.io.deadletter import RawMessage, dead_letter, letter_bytes
from postlens.io.kafka import OutgoingRecord, deliver_then_commit, ensure_topics
from postlens.settings import Settings
from trainer.label.convert import TOOL, Annotation, Refused, to_label
from trainer.label.state import LabelState, Outcome
from trainer.label.studio import LabelStudio

log = logging.getLogger(__name__)
REJECTED_PARTITIONS = 1  # as trainer.retrain creates it: refusals stay in order


@dataclass
class PullSummary:
    labels: int = 0
    skipped: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    already: int = 0  # annotation versions handled before (by either path)

    def add(self, other: PullSummary) -> None:
        self.labels += other.labels
        self.skipped += other.skipped
        self.already += other.already
        self.refused = dict(Counter(self.refused) + Counter(other.refused))


async def publish(settings: Settings, state: LabelState, annotations: Sequence[Annotation]) -> PullSummary:
    """Handle annotations not seen before (see the module doc)."""
    summary = PullSummary()
    records: list[OutgoingRecord] = []
    done: list[tuple[int, str, str | None, Outcome]] = []
    refused: Counter[str] = Counter()
    handled: set[tuple[int, str]] = set()
    for annotation in annotations:
        version = (annotation.id, annotation.updated_at)
        if version in handled or state.seen(*version):
            summary.already += 1
            continue
        handled.add(version)
        if annotation.skipped:
            summary.skipped += 1
            done.append((annotation.id, annotation.updated_at, annotation.post_id, "skipped"))
            continue
        key = (annotation.post_id or "").encode() or None
        try:
            label = to_label(annotation)
        except Refused as refusal:
            log.warning("annotation %s of task %s refused: %s", annotation.id, annotation.task.get("id"), refusal)
            refused[refusal.kind] += 1
            original = json.dumps({"annotation": annotation.raw, "task": annotation.task}).encode()
            letter = dead_letter(RawMessage(original, key, f"{TOOL}/project-{annotation.project_id}"), "label",
                                 refusal.kind, str(refusal))  # fmt: skip
            records.append(
                OutgoingRecord(settings.topic_labels_rejected, key, letter_bytes(letter, settings.dlq_max_bytes))
            )
            done.append((annotation.id, annotation.updated_at, annotation.post_id, "refused"))
            continue
        records.append(OutgoingRecord(settings.topic_labels, key, label.model_dump_json(exclude_none=True).encode()))
        done.append((annotation.id, annotation.updated_at, annotation.post_id, "label"))
        summary.labels += 1
    if records:
        await ensure_topics(settings, {settings.topic_labels_rejected: REJECTED_PARTITIONS} if refused else {})
        await deliver_then_commit(settings, records, group="", offsets={})
    state.record(done)
    summary.refused = dict(refused)
    return summary


async def poll(settings: Settings, studio: LabelStudio, state: LabelState, project_id: int) -> PullSummary:
    """Every annotation of the project, as Label Studio exports it → :func:`publish`."""
    annotations = []
    for task in await studio.annotated_tasks(project_id):
        for raw in task.get("annotations") or []:
            email = await studio.email(raw.get("completed_by"))
            annotations.append(Annotation(raw, task, project_id, email))
    return await publish(settings, state, annotations)
