"""Evaluate a checkpoint on a labeled dataset: ``python -m trainer.evaluate --model DIR --data PATH``.

Predicts every post with :class:`trainer.predict.Predictor`, scores the predictions (:mod:`trainer.metrics`) and
writes the report JSON of docs/contracts.md (``--json``), plots (``--plots``: type confusion, reliability diagram,
images with gold boxes in green and predicted ones in red) and a summary table on stdout.

Keys are left out when they do not apply: ``grounding`` needs images and a dataset with gold boxes (a dataset
without any box annotation, like the Twitter sets, says nothing about regions); ``alignment`` needs at least two
posts with images and a model that embeds images (not the ``text`` strategy); ``ece`` needs predicted entities;
``subsets`` needs subset tags.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from postlens.runtime.exported import CPU_PRECISIONS, ONNX_FILE
from postlens.runtime.schemes import Span, spans_from_tags
from postlens.schemas import ENTITY_TYPES, Post, PostPrediction, canonical_type
from trainer.data.examples import Example, covering_words
from trainer.data.load import load_examples
from trainer.metrics import (
    PRF,
    Calibration,
    Confusion,
    EntityScores,
    GroundedSpan,
    ImageBox,
    calibration,
    entity_scores,
    grounding_accuracy,
    retrieval_recall,
    token_f1,
    type_confusion,
)
from trainer.plots import plot_confusion, plot_grounding, plot_reliability

log = logging.getLogger(__name__)
RECALL_AT = (1, 5)


class TokenReport(BaseModel):
    f1: float


class GroundingReport(BaseModel):
    accuracy: float


class SubsetReport(BaseModel):
    n_posts: int
    entity: PRF
    grounding: GroundingReport | None = None


class EvaluationReport(BaseModel):
    """The ``--json`` document (docs/contracts.md, evaluation report); ``to_json`` drops the keys that do not apply."""

    n_posts: int
    entity: EntityScores
    token: TokenReport
    grounding: GroundingReport | None = None
    alignment: dict[str, float] | None = None  # "recall@1", "recall@5"
    ece: float | None = None
    subsets: dict[str, SubsetReport] | None = None

    def to_json(self) -> dict:
        return self.model_dump(exclude_none=True)


@dataclass
class Evaluation:
    report: EvaluationReport
    confusion: Confusion
    calibration: Calibration | None  # None without predicted entities


def predicted_spans(prediction: PostPrediction) -> list[Span]:
    return [(e.start, e.end, canonical_type(e.type)) for e in prediction.entities]


def entity_sets(predictions: Sequence[PostPrediction]) -> list[set[Span]]:
    """Each post's predicted entities, as a set: what two runs of a model (precisions, batchings) are compared on."""
    return [set(predicted_spans(prediction)) for prediction in predictions]


def entity_agreement(first: Sequence[set[Span]], second: Sequence[set[Span]]) -> float:
    """Entities both runs find ÷ entities either finds, over the same posts (0 when neither finds any)."""
    pairs = list(zip(first, second, strict=True))
    return sum(len(a & b) for a, b in pairs) / max(sum(len(a | b) for a, b in pairs), 1)


def entity_correctness(gold: Sequence[Sequence[Span]], predicted: Sequence[Sequence[Span]]) -> list[bool]:
    """Whether each predicted entity (posts in order, then their entities) exactly matches a gold span and type:
    the outcome the confidences are calibrated against."""
    return [span in gold_set for gold_set, spans in zip(map(set, gold), predicted, strict=True) for span in spans]


def gold_spans(example: Example) -> list[Span]:
    return [(e.start, e.end, e.type) for e in example.entities]


def gold_grounding(example: Example) -> list[GroundedSpan]:
    return [
        ((e.start, e.end, e.type), tuple((b.image_index, b.box) for b in example.boxes if b.entity == i))
        for i, e in enumerate(example.entities)
    ]


def predicted_grounding(prediction: PostPrediction) -> list[GroundedSpan]:
    grounded = []
    for entity in prediction.entities:
        best = max(entity.regions, key=lambda region: region.score, default=None)
        regions: tuple[ImageBox, ...] = ((best.image_index, best.box),) if best is not None else ()
        grounded.append(((entity.start, entity.end, canonical_type(entity.type)), regions))
    return grounded


def word_spans(example: Example, spans: Sequence[Span]) -> list[Span]:
    """Character spans → the words they cover (for token F1)."""
    covered = [(covering_words(example.words, start, end), entity_type) for start, end, entity_type in spans]
    return [(*words, entity_type) for words, entity_type in covered if words is not None]


def build_report(
    examples: Sequence[Example],
    predictions: Sequence[PostPrediction],
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evaluation:
    """Score predictions against labeled examples (same order). ``embeddings``: text and image rows of the posts
    that have images, in order, for the alignment metric."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    for example, prediction in zip(examples, predictions, strict=True):
        if example.tags is None:
            raise ValueError(f"post {example.id} has no labels; evaluation needs a labeled dataset")
        if prediction.id is not None and prediction.id != example.id:
            raise ValueError(f"prediction for {prediction.id!r} is in the place of post {example.id!r}")

    gold = [gold_spans(example) for example in examples]
    predicted = [predicted_spans(prediction) for prediction in predictions]
    grounded = any(example.boxes for example in examples)

    def grounding(indices: Sequence[int]) -> GroundingReport | None:
        with_images = [i for i in indices if examples[i].images]
        if not grounded or not with_images:
            return None
        accuracy = grounding_accuracy(
            [gold_grounding(examples[i]) for i in with_images],
            [predicted_grounding(predictions[i]) for i in with_images],
        )
        return GroundingReport(accuracy=accuracy)

    confidences = [e.confidence for prediction in predictions for e in prediction.entities]
    correct = entity_correctness(gold, predicted)
    reliability = calibration(confidences, correct) if confidences else None

    alignment = None
    if embeddings is not None and len(embeddings[0]) >= 2:
        recall = retrieval_recall(*embeddings, ks=RECALL_AT)
        alignment = {f"recall@{k}": value for k, value in recall.items()}

    subset_names = sorted({name for example in examples for name in example.subsets})
    subsets = {}
    for name in subset_names:
        members = [i for i, example in enumerate(examples) if name in example.subsets]
        scores = entity_scores([gold[i] for i in members], [predicted[i] for i in members])
        subsets[name] = SubsetReport(
            n_posts=len(members), entity=PRF(**scores.model_dump(exclude={"per_type"})), grounding=grounding(members)
        )

    report = EvaluationReport(
        n_posts=len(examples),
        entity=entity_scores(gold, predicted),
        token=TokenReport(
            f1=token_f1(
                [spans_from_tags(example.gold_tags) for example in examples],
                [word_spans(example, spans) for example, spans in zip(examples, predicted, strict=True)],
            ).f1
        ),
        grounding=grounding(range(len(examples))),
        alignment=alignment,
        ece=reliability.ece if reliability else None,
        subsets=subsets or None,
    )
    types = [*ENTITY_TYPES, *sorted({t for spans in predicted for _, _, t in spans} - set(ENTITY_TYPES))]
    return Evaluation(report=report, confusion=type_confusion(gold, predicted, types), calibration=reliability)


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------


def write_plots(
    evaluation: Evaluation, examples: Sequence[Example], predictions: Sequence[PostPrediction], out: Path
) -> list[Path]:
    """The ``--plots`` files of an evaluation (those that apply) → their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "confusion.png"]
    plot_confusion(evaluation.confusion, written[0])
    if evaluation.calibration is not None:
        written.append(out / "reliability.png")
        plot_reliability(evaluation.calibration, written[-1])
    if plot_grounding(examples, predictions, out / "grounding.png"):
        written.append(out / "grounding.png")
    return written


# ------------------------------------------------------------------------------------------------------------
# Summary and CLI
# ------------------------------------------------------------------------------------------------------------


def summary_table(report: EvaluationReport) -> str:
    entity = report.entity
    lines = [
        f"posts {report.n_posts}   entity P {entity.precision:.3f}  R {entity.recall:.3f}  F1 {entity.f1:.3f}   "
        f"token F1 {report.token.f1:.3f}"
        + (f"   grounding {report.grounding.accuracy:.3f}" if report.grounding else "")
        + ("".join(f"   {k} {v:.3f}" for k, v in report.alignment.items()) if report.alignment else "")
        + (f"   ECE {report.ece:.3f}" if report.ece is not None else ""),
        "",
        f"{'type':<10}{'P':>8}{'R':>8}{'F1':>8}",
    ]
    lines += [f"{t:<10}{s.precision:>8.3f}{s.recall:>8.3f}{s.f1:>8.3f}" for t, s in entity.per_type.items()]
    if report.subsets:
        lines += ["", f"{'subset':<18}{'posts':>7}{'F1':>8}{'ground':>8}"]
        for name, subset in report.subsets.items():
            ground = f"{subset.grounding.accuracy:>8.3f}" if subset.grounding else f"{'—':>8}"
            lines.append(f"{name:<18}{subset.n_posts:>7}{subset.entity.f1:>8.3f}{ground}")
    return "\n".join(lines)


def predict_all(predictor, examples: Sequence[Example], batch_size: int) -> list[PostPrediction]:
    posts = [Post(id=example.id, text=example.text, images=example.images) for example in examples]
    predictions: list[PostPrediction] = []
    for first in tqdm(range(0, len(posts), batch_size), desc="predicting", unit="batch"):
        predictions.extend(predictor.predict(posts[first : first + batch_size]))
    for prediction in predictions:
        if prediction.error:
            log.warning("post %s was refused by the model (%s); scored as no entities", prediction.id, prediction.error)
    return predictions


def embed_all(predictor, examples: Sequence[Example], batch_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    posts = [Post(id=e.id, text=e.text, images=e.images) for e in examples if e.images]
    if len(posts) < 2:
        return None
    text_rows, image_rows = [], []
    for first in range(0, len(posts), batch_size):
        text_embeddings, image_embeddings = predictor.embed(posts[first : first + batch_size])
        text_rows.append(np.asarray(text_embeddings))
        image_rows.append(np.asarray(image_embeddings))
    text, image = np.concatenate(text_rows), np.concatenate(image_rows)
    if not image.any():  # a text-only strategy has no image embedding: alignment does not apply
        return None
    return text, image


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="checkpoint dir written by trainer.train, or an exported version folder (scored as Triton serves it)",
    )
    parser.add_argument(
        "--precision",
        choices=CPU_PRECISIONS,
        help="an exported version's network to score (default: the one it was exported to serve)",
    )
    parser.add_argument("--data", type=Path, required=True, help="labeled JSONL or CoNLL .txt")
    parser.add_argument("--images", type=Path, help="image dir for CoNLL data (<IMGID>.jpg …)")
    parser.add_argument("--json", type=Path, help="write the metrics JSON here")
    parser.add_argument("--plots", type=Path, help="write confusion/reliability/grounding PNGs into this dir")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainer").setLevel(logging.INFO)  # the dataset report; not the encoders' chatter

    examples = load_examples(args.data, images_dir=args.images)
    if (args.model / ONNX_FILE).is_file():  # an exported version, scored as served (torch-free)
        from trainer.predict import ExportedPredictor

        predictor: Predictor | ExportedPredictor = ExportedPredictor.load(args.model, args.precision)
        embeddings = None  # the alignment embeddings are not an output of the served network
    else:
        if args.precision is not None:
            parser.error(f"{args.model} is a checkpoint: --precision applies to an exported version folder")
        from trainer.predict import Predictor  # torch is needed to predict, not to score or plot

        predictor = Predictor.load(args.model)
        embeddings = embed_all(predictor, examples, args.batch_size)
    predictions = predict_all(predictor, examples, args.batch_size)
    evaluation = build_report(examples, predictions, embeddings)
    print(summary_table(evaluation.report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(evaluation.report.to_json(), indent=2) + "\n")
        print(f"metrics → {args.json}")
    if args.plots:
        for path in write_plots(evaluation, examples, predictions, args.plots):
            print(f"plot → {path}")


if __name__ == "__main__":
    main()
