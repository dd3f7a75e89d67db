"""The run's summary (``--json`` writes it as JSON), its text on stdout, its exit code, and the comparison chart."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from trainer.metrics import EntityScores
from trainer.plots import plot_entity_f1
from trainer.retrain.decision import Decision, ModelScore

EXIT_FAILED = 1
EXIT_TOO_FEW_LABELS = 3
EXIT_NOT_LOADED = 4

Status = Literal["promoted", "kept_base", "dry_run", "too_few_labels", "failed"]


class RetrainSummary(BaseModel):
    status: Status
    message: str | None = None  # why, when the run did not decide
    dry_run: bool = False
    topic: str
    group: str
    labels_read: int = 0  # messages consumed
    labels_valid: int = 0  # distinct label ids kept
    duplicates: int = 0  # valid labels superseded by a later one with the same id
    rejected: dict[str, int] = Field(default_factory=dict)  # by reason
    widened_spans: int = 0  # spans moved to word boundaries (kept)
    train_size: int = 0
    tune_size: int = 0
    eval_size: int = 0
    eval_from_valid: int = 0  # of eval_size, posts from --valid
    base: ModelScore | None = None
    candidate: ModelScore | None = None
    tolerance: float = 0.0
    decision: Decision | None = None
    exported_version: int | None = None
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


def summary_text(summary: RetrainSummary) -> str:
    lines = [f"retrain: {summary.status}" + (" — nothing exported, published or committed" if summary.dry_run else "")]
    if summary.message:
        lines.append(f"  {summary.message}")
    if "read" in summary.seconds:
        rejected = ", ".join(f"{kind} {count}" for kind, count in summary.rejected.items()) or "none"
        lines.append(
            f"  labels: read {summary.labels_read}, usable {summary.labels_valid}, superseded {summary.duplicates}, "
            f"rejected {sum(summary.rejected.values())} ({rejected})"
        )
    if summary.base and summary.candidate:
        lines.append(
            f"  sizes: train {summary.train_size}, tune {summary.tune_size}, "
            f"evaluation {summary.eval_size} ({summary.eval_from_valid} from --valid)"
        )
        types = sorted(summary.base.report["entity"]["per_type"] | summary.candidate.report["entity"]["per_type"])
        lines.append(f"  {'entity F1':<12}{'all':>8}" + "".join(f"{t:>8}" for t in types))
        for name, model in (("base", summary.base), ("candidate", summary.candidate)):
            per_type = model.report["entity"]["per_type"]
            scores = [per_type.get(t, {}).get("f1", 0.0) for t in types]
            lines.append(f"  {name:<12}{model.f1:>8.3f}" + "".join(f"{f1:>8.3f}" for f1 in scores))
        lines.append(
            f"  decision: {summary.decision} (candidate − base = {summary.candidate.f1 - summary.base.f1:+.3f}, "
            f"tolerance {summary.tolerance}); candidate checkpoint {summary.candidate.checkpoint}"
        )
    if summary.exported_version is not None:
        lines.append(f"  exported version {summary.exported_version}; {summary.triton}")
    lines.append(f"  offsets committed: {'yes' if summary.offsets_committed else 'no'}")
    lines.append("  seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in summary.seconds.items()))
    return "\n".join(lines)


def plot_comparison(base: ModelScore, candidate: ModelScore, decision: Decision, path: Path) -> None:
    """Entity F1 overall and per type on the evaluation set, base beside candidate."""
    models = {f"base {base.version}": base, f"candidate {candidate.version}": candidate}
    scores = {name: EntityScores.model_validate(model.report["entity"]) for name, model in models.items()}
    plot_entity_f1({f"Retrain: {decision.replace('_', ' ')}": scores}, path, colors=("tab:gray", "tab:green"))
