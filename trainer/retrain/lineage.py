"""Lineage: what each served version came from, read back from the model cards, and rollback.

Every exported version's card (``model_card.json``, docs/contracts.md) has a ``lineage`` object: who made it, its parent
version, and for a retrained version the labels used (topic, partition → offset ranges, counts, sources), the audit,
both gates' scores for base and candidate, and the decision; a rollback says ``rollback_of``. The card also holds the
code commit (``git``) and the time (``exported_at``). ``python -m trainer.retrain --history`` prints them as a table.

A rollback makes version N the served one again by copying N's folder as the next, newest version (Triton serves the
newest: version policy "latest 1"), so the newest version is always the served one, the next retraining starts from
it, and what N served is served again byte for byte. Triton loads it like any new version: no restart, the old
version answers until the new one is ready.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from postlens.settings import Settings
from trainer.data.carried import DataOrigin
from trainer.export import ExportError, copy_version, load_in_triton
from trainer.retrain.audit import AuditResult
from trainer.retrain.decision import Decision, GateResult, RetrainError, newest_version, read_card
from trainer.retrain.labels import Ingested


class OffsetRange(BaseModel):
    partition: int
    first: int  # first offset read
    last: int  # last offset read
    messages: int


class LabelsUsed(BaseModel):
    """The labels one run consumed, where from and from whom."""

    topic: str
    group: str
    ranges: list[OffsetRange]
    read: int  # messages
    usable: int  # distinct valid labels, before the audit
    rejected: dict[str, int]  # refused messages by reason, before the audit
    sources: dict[str, int]  # usable labels by source

    @classmethod
    def of(cls, ingested: Ingested, settings: Settings) -> LabelsUsed:
        offsets: dict[int, list[int]] = {}
        for label in ingested.labels:
            offsets.setdefault(label.message.raw.partition or 0, []).append(label.message.raw.offset or 0)
        for letter in ingested.rejected:
            offsets.setdefault(letter.source_partition or 0, []).append(letter.source_offset or 0)
        return cls(
            topic=settings.topic_labels,
            group=settings.retrain_group,
            ranges=[
                OffsetRange(partition=partition, first=min(found), last=max(found), messages=len(found))
                for partition, found in sorted(offsets.items())
            ],
            read=ingested.read,
            usable=len(ingested.labels),
            rejected=ingested.rejected_by_kind,
            sources=dict(sorted(Counter(label.source for label in ingested.labels).items())),
        )


class Lineage(BaseModel):
    """The ``lineage`` object of a retrained version's card (the exporter adds ``parent_version``)."""

    made_by: Literal["trainer.retrain"]
    base_checkpoint: str
    labels: LabelsUsed
    audit: AuditResult
    gates: list[GateResult]
    decision: Decision
    reference: list[DataOrigin] = Field(default_factory=list)  # what the gating reference set came from

    def card_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------------------


class HistoryRow(BaseModel):
    version: int
    exported_at: str | None
    made_by: str | None
    parent_version: int | None
    rollback_of: int | None
    checkpoint_version: str | None
    labels_used: int | None  # trained on or held out (after the audit)
    quarantined: int | None
    sources: dict[str, int] | None
    gates: dict[str, str] | None  # gate → "base → candidate"
    decision: str | None
    commit: str | None


def history(model_root: Path) -> list[HistoryRow]:
    """Every version of the model, oldest first, from its card."""
    versions = sorted(int(entry.name) for entry in model_root.iterdir() if entry.name.isdigit())
    rows = []
    for version in versions:
        card = read_card(model_root, version)
        lineage = card.get("lineage") or {}
        labels, audit = lineage.get("labels"), lineage.get("audit")
        quarantined = audit.get("quarantined_labels") if audit else None
        rows.append(
            HistoryRow(
                version=version,
                exported_at=card.get("exported_at"),
                made_by=lineage.get("made_by"),
                parent_version=lineage.get("parent_version"),
                rollback_of=lineage.get("rollback_of"),
                checkpoint_version=card.get("checkpoint_version"),
                labels_used=labels["usable"] - (quarantined or 0) if labels else None,
                quarantined=quarantined,
                sources=labels["sources"] if labels else None,
                gates={
                    gate["gate"]: f"{gate['base_f1']:.3f} → {gate['candidate_f1']:.3f}"
                    for gate in lineage.get("gates", [])
                }
                or None,
                decision=lineage.get("decision"),
                commit=(card.get("git") or {}).get("commit"),
            )
        )
    return rows


def _cell(value: object) -> str:
    return "—" if value is None else str(value)


def history_table(rows: list[HistoryRow], served: int | None) -> str:
    header = f"{'version':>7}  {'exported (UTC)':<20} {'made by':<26} {'parent':>6}  {'labels':>6} {'quar.':>5}  "
    header += f"{'new-labels gate':<16} {'reference gate':<16} {'commit':<8}  notes"
    lines = [header]
    for row in rows:
        gates = row.gates or {}
        notes = [f"rollback of {row.rollback_of}"] if row.rollback_of else []
        if row.sources:
            notes.append("sources " + ", ".join(f"{name} {count}" for name, count in row.sources.items()))
        if row.version == served:
            notes.append("SERVED")
        lines.append(
            f"{row.version:>7}  {_cell(row.exported_at)[:19]:<20} {_cell(row.made_by):<26} "
            f"{_cell(row.parent_version):>6}  {_cell(row.labels_used):>6} {_cell(row.quarantined):>5}  "
            f"{gates.get('new_labels', '—'):<16} {gates.get('reference', '—'):<16} {_cell(row.commit)[:8]:<8}  "
            + "; ".join(notes)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Rollback
# --------------------------------------------------------------------------------------------------------------


class RollbackResult(BaseModel):
    rollback_of: int
    version: int  # the new newest version, a copy of rollback_of
    triton: str  # what happened when Triton was asked to load it
    triton_refused: bool = False


def rollback(model_root: Path, version: int, triton_http: str | None) -> RollbackResult:
    """Serve version ``version`` again as the next, newest version (module docstring); tell Triton when it serves
    this repository (``triton_http``)."""
    newest = newest_version(model_root)
    if newest is None or not (model_root / str(version)).is_dir():
        raise RetrainError(f"{model_root} has no version {version} to roll back to")
    if version == newest:
        raise RetrainError(f"version {version} is the newest version: it is served already")
    try:
        target = copy_version(model_root, version, {"made_by": "trainer.retrain --rollback", "rollback_of": version})
    except ExportError as error:
        raise RetrainError(str(error)) from None
    new_version = int(target.name)
    if triton_http is None:
        return RollbackResult(
            rollback_of=version, version=new_version, triton="Triton not contacted; it serves it once it loads it"
        )
    try:
        said = load_in_triton(triton_http.rstrip("/"), model_root.name, new_version)
    except ExportError as error:
        return RollbackResult(rollback_of=version, version=new_version, triton=str(error), triton_refused=True)
    return RollbackResult(rollback_of=version, version=new_version, triton=said)
