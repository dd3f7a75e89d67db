"""trainer.retrain.report: the exit code follows the run's outcome."""

from __future__ import annotations

from trainer.retrain.report import EXIT_TOO_FEW_LABELS, RetrainSummary


def test_exit_codes_follow_the_outcome() -> None:
    def code(**fields) -> int:
        return RetrainSummary(topic="t", group="g", **fields).exit_code

    assert code(status="promoted") == code(status="kept_base") == code(status="dry_run") == 0
    assert code(status="too_few_labels") == EXIT_TOO_FEW_LABELS
    assert code(status="failed") == 1 and code(status="promoted", triton_refused=True) == 4
