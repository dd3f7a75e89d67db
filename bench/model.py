"""Model benchmark: ``python -m bench.model`` (``make bench`` runs it). Prints figures; writes ``reports/model.md``
and PNGs.

(a) Twitter-2015 and Twitter-2017 (under ``$POSTLENS_SHARED_DATA_DIR``), train → valid, text only: the default
    ``twitter`` preset against its parts and a plain MiniLM softmax tagger (:mod:`bench.twitter`).
(b) Synthetic multimodal posts (``trainer.synth``): the tiny preset with each fusion strategy, trained on the
    train split (calibrated on valid) and scored on the test split: entity F1, F1 on the ``ambiguous`` subset
    (only the image settles the type), grounding accuracy and ECE of entity confidences.

CPU-only and slow for MiniLM (about an hour on 2 cores for section (a); ``--work`` keeps its checkpoints and a
later run reuses them); ``--skip-twitter`` runs only the synthetic table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.twitter import PRESET, TwitterResult, plot_twitter, run_twitter, twitter_figures, twitter_markdown
from postlens.settings import get_settings
from trainer.data.load import load_examples
from trainer.evaluate import EvaluationReport, build_report, embed_all, predict_all
from trainer.predict import Predictor
from trainer.synth import generate
from trainer.plots import plot_scores
from trainer.run_config import resolve_config
from trainer.train import train

REPORTS = Path(__file__).resolve().parent.parent / "reports"
STRATEGIES = ("text", "late", "early", "cross")


# --------------------------------------------------------------------------------------------------------------
# (b) Synthetic: fusion strategies
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticResult:
    strategy: str
    report: EvaluationReport
    train_seconds: float
    metrics: dict[str, Any]


def run_synthetic(work: Path, posts: int, seed: int) -> list[SyntheticResult]:
    data = work / "synthetic"
    if not (data / "test.jsonl").is_file():
        generate(data, posts, seed)
    train_examples = load_examples(data / "train.jsonl")
    valid_examples = load_examples(data / "valid.jsonl")
    test_examples = load_examples(data / "test.jsonl")
    results = []
    for strategy in STRATEGIES:
        trained = train(resolve_config("tiny", strategy), train_examples, valid_examples, work / f"synthetic-{strategy}")
        predictor = Predictor.load(trained.out)
        predictions = predict_all(predictor, test_examples, batch_size=64)
        report = build_report(test_examples, predictions, embed_all(predictor, test_examples, batch_size=64)).report
        results.append(SyntheticResult(strategy, report, trained.metrics["train_seconds"], trained.metrics))
        print(f"synthetic {strategy:<6} " + synthetic_row(results[-1]), flush=True)
    return results


def synthetic_row(result: SyntheticResult) -> str:
    report = result.report
    ambiguous = report.subsets["ambiguous"].entity.f1 if report.subsets and "ambiguous" in report.subsets else float("nan")
    grounding = report.grounding.accuracy if report.grounding else float("nan")
    ece = report.ece if report.ece is not None else float("nan")
    return (
        f"entity F1 {report.entity.f1:.3f}  ambiguous F1 {ambiguous:.3f}  grounding {grounding:.3f}  ECE {ece:.3f}  "
        f"({result.train_seconds:.0f} s)"
    )


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(twitter: list[TwitterResult], synthetic: list[SyntheticResult], args: argparse.Namespace) -> str:
    lines = ["# Model benchmark", "", f"Command: `python -m bench.model {' '.join(args.argv)}`".rstrip(), ""]
    lines += ["CPU only (2 cores, shared); times are wall-clock and include validation passes.", ""]
    if twitter:
        lines += twitter_markdown(twitter)
    if synthetic:
        lines += [
            "## (b) Synthetic multimodal posts: fusion strategies (tiny encoders), test split",
            "",
            f"`trainer.synth` with {args.synthetic_posts} posts (seed {args.synthetic_seed}); preset `tiny`; "
            "temperature and grounding threshold fitted on valid.",
            "",
            "| strategy | entity F1 | ambiguous F1 | grounding acc. | ECE | valid temperature | train time |",
            "|---|---|---|---|---|---|---|",
        ]
        for result in synthetic:
            report = result.report
            ambiguous = report.subsets["ambiguous"].entity.f1 if report.subsets and "ambiguous" in report.subsets else None
            lines.append(
                f"| {result.strategy} | {report.entity.f1:.3f} | {_metric(ambiguous)} | "
                f"{_metric(report.grounding.accuracy if report.grounding else None)} | {_metric(report.ece)} | "
                f"{result.metrics['calibration']['temperature']:.2f} | {result.train_seconds:.0f} s |"
            )
        text = next((r for r in synthetic if r.strategy == "text"), None)
        best = max(synthetic, key=lambda r: r.report.subsets["ambiguous"].entity.f1)
        if text is not None:
            gain = best.report.subsets["ambiguous"].entity.f1 - text.report.subsets["ambiguous"].entity.f1
            lines += ["", f"Best on the ambiguous subset: `{best.strategy}`, {gain:+.3f} F1 over `text`."]
        lines += ["", "![Synthetic](model_synthetic.png)", ""]
    return "\n".join(lines) + "\n"


def plot_synthetic(results: list[SyntheticResult], path: Path) -> None:
    metrics = {
        "entity F1": lambda r: r.entity.f1,
        "ambiguous F1": lambda r: r.subsets["ambiguous"].entity.f1,
        "grounding acc.": lambda r: r.grounding.accuracy if r.grounding else 0.0,
        "ECE": lambda r: r.ece or 0.0,
    }
    series = {result.strategy: [read(result.report) for read in metrics.values()] for result in results}
    plot_scores(list(metrics), series, path, "Synthetic test split by fusion strategy (tiny encoders)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPORTS, help="where model.md and the PNGs go")
    parser.add_argument("--work", type=Path, default=None, help="keep checkpoints and synthetic data here (default: temporary)")
    parser.add_argument("--skip-twitter", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-posts", type=int, default=1000)
    parser.add_argument("--synthetic-seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    data_dir = get_settings().shared_data_dir
    if not args.skip_twitter and not all((data_dir / path).is_file() for path in resolve_config(PRESET).data.train):
        parser.error(f"{data_dir} lacks the {PRESET} preset's data (set POSTLENS_SHARED_DATA_DIR)")

    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        synthetic = [] if args.skip_synthetic else run_synthetic(work, args.synthetic_posts, args.synthetic_seed)
        twitter = [] if args.skip_twitter else run_twitter(work)

    args.out.mkdir(parents=True, exist_ok=True)
    if twitter:
        plot_twitter(twitter, args.out / "model_twitter.png")
    if synthetic:
        plot_synthetic(synthetic, args.out / "model_synthetic.png")
    report = markdown(twitter, synthetic, args)
    (args.out / "model.md").write_text(report)
    figures = {
        "twitter": twitter_figures(twitter),
        "synthetic": [
            {"strategy": r.strategy, "test": r.report.to_json(), "train_seconds": r.train_seconds} for r in synthetic
        ],
    }
    (args.out / "model.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report)
    print(f"report → {args.out / 'model.md'}")


if __name__ == "__main__":
    main()
