"""The run's summary (``--json`` writes it as JSON), its text on stdout, its exit code, and the comparison chart."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from postlens.schemas import ENTITY_TYPES
from trainer.plots import plot_score_panels
from trainer.retrain.audit import AuditResult
from trainer.retrain.decision import Decision, GateResult, ModelScore

EXIT_FAILED = 1
EXIT_TOO_FEW_LABELS = 3
EXIT_NOT_LOADED = 4

# quarantined: the audit left fewer clean labels than --min-labels; nothing was trained, the labels were dealt with.
Status = Literal["promoted", "kept_base", "quarantined", "dry_run", "too_few_labels", "failed"]


class RetrainSummary(BaseModel):
    status: Status
    message: str | None = None  # why, when the run did not decide
    dry_run: bool = False
    topic: str
    group: str
    labels_read: int = 0  # messages consumed
    labels_valid: int = 0  # distinct labels kept (by annotation id) before the audit
    labels_clean: int = 0  # ... that passed the audit
    duplicates: int = 0  # valid labels superseded by a later one with the same annotation id
    rejected: dict[str, int] = Field(default_factory=dict)  # by reason, "quarantined" included
    widened_spans: int = 0  # spans moved to word boundaries (kept)
    audit: AuditResult | None = None
    train_size: int = 0  # new labels + replayed + --extra-train
    replay_size: int = 0  # of train_size, drawn from the base's replay sample
    replay_pool: int = 0  # the base's replay sample
    tune_size: int = 0
    eval_size: int = 0  # the new-labels gate's posts
    eval_from_valid: int = 0  # of eval_size, posts from --valid
    reference_size: int = 0  # the reference gate's posts
    base: ModelScore | None = None  # on the new-labels gate's posts
    candidate: ModelScore | None = None
    candidate_checkpoint: str | None = None
    tolerance: float = 0.0
    gates: list[GateResult] = Field(default_factory=list)
    decision: Decision | None = None
    exported_version: int | None = None
    served_version: int | None = None  # the newest version in the repository when the run ended
    triton: str | None = None  # what happened when Triton was asked to load the new version
    triton_refused: bool = False  # Triton answered but did not load it
    offsets_committed: bool = False
    seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "too_few_labels":
            return EXIT_TOO_FEW_LABELS
        if self.status == "failed":
            return EXIT_FAILED
        return EXIT_NOT_LOADED if self.triton_refused else 0


def gate_lines(gate: GateResult) -> list[str]:
    types = [name for name in ENTITY_TYPES if name in gate.base_per_type or name in gate.candidate_per_type]
    title = "new labels (held out)" if gate.gate == "new_labels" else "reference set"
    lines = [
        f"  {title}: {gate.posts} posts — {'passed' if gate.passed else 'REFUSED'}",
        f"    {'entity F1':<12}{'all':>8}" + "".join(f"{name:>8}" for name in types),
    ]
    for name, total, per_type in (
        ("base", gate.base_f1, gate.base_per_type),
        ("candidate", gate.candidate_f1, gate.candidate_per_type),
    ):
        lines.append(f"    {name:<12}{total:>8.3f}" + "".join(f"{per_type.get(t, 0.0):>8.3f}" for t in types))
    lines.extend(f"    {reason}" for reason in gate.reasons)
    return lines


def summary_text(summary: RetrainSummary) -> str:
    lines = [f"retrain: {summary.status}" + (" — nothing exported, published or committed" if summary.dry_run else "")]
    if summary.message:
        lines.append(f"  {summary.message}")
    if "read" in summary.seconds:
        rejected = ", ".join(f"{kind} {count}" for kind, count in summary.rejected.items()) or "none"
        lines.append(
            f"  labels: read {summary.labels_read}, usable {summary.labels_valid}, passed the audit "
            f"{summary.labels_clean}, superseded {summary.duplicates}, rejected {sum(summary.rejected.values())} "
            f"({rejected})"
        )
    if summary.audit is not None:
        if summary.audit.bypassed:
            lines.append("  audit: bypassed (--no-audit)")
        for group in summary.audit.groups:
            verdict = "QUARANTINED: " + "; ".join(group.findings) if group.findings else "clean"
            lines.append(f"  audit {group.group} ({group.labels} labels): {verdict}")
    if summary.gates:
        lines.append(
            f"  fine-tuned on {summary.train_size} posts ({summary.replay_size} replayed from the base's sample of "
            f"{summary.replay_pool}), tune {summary.tune_size}"
        )
        for gate in summary.gates:
            lines.extend(gate_lines(gate))
        lines.append(f"  decision: {summary.decision}; candidate checkpoint {summary.candidate_checkpoint}")
    if summary.exported_version is not None:
        lines.append(f"  exported version {summary.exported_version}; {summary.triton}")
    lines.append(f"  served version: {summary.served_version}")
    lines.append(f"  offsets committed: {'yes' if summary.offsets_committed else 'no'}")
    lines.append("  seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in summary.seconds.items()))
    return "\n".join(lines)


def plot_comparison(gates: list[GateResult], decision: Decision, path: Path) -> None:
    """Entity F1 overall and per type, base beside candidate, one panel per gate."""
    groups = ["all", *ENTITY_TYPES]
    panels = {
        f"{gate.gate.replace('_', ' ')} gate ({gate.posts} posts): {'passed' if gate.passed else 'refused'}"
        f" — decision {decision.replace('_', ' ')}": {
            "base": [gate.base_f1, *(gate.base_per_type.get(name, 0.0) for name in ENTITY_TYPES)],
            "candidate": [gate.candidate_f1, *(gate.candidate_per_type.get(name, 0.0) for name in ENTITY_TYPES)],
        }
        for gate in gates
    }
    plot_score_panels(groups, panels, path)
