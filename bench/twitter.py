"""Section (a) of ``python -m bench.model``: the default Twitter model and what each of its parts contributes.

Every variant trains on Twitter-2015 + 2017 train with the ``twitter`` preset's recipe (epochs, learning rates,
length-sorted batches, seed) and is scored on each valid split separately by the serving code path
(:func:`trainer.evaluate.predict_all`), text only (the tweet images are not distributed):

- ``softmax``: plain MiniLM — each word's first-sub-token state → a linear layer → independent softmax (argmax);
- ``crf``: the preset without word features (MiniLM + fusion + CRF);
- ``features at emissions``: + word shape and character CNN concatenated before the emissions;
- ``default``: the preset as shipped (the features also enter the encoder's input).

Each CRF variant's checkpoint is kept in ``--work`` with the configuration it was trained with; a later run reuses
it when the configuration is the same (a variant costs about a quarter of an hour on 2 cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from postlens.runtime.decode import TagScheme
from postlens.runtime.preprocess import Preprocessor
from postlens.runtime.schemes import spans_from_tags
from postlens.schemas import ModelRef, PostPrediction, PredictedEntity
from trainer.data.carried import DataOrigin
from trainer.data.examples import Example
from trainer.data.load import load_split
from trainer.evaluate import EvaluationReport, build_report, predict_all
from trainer.model.batching import ExampleEncoder
from trainer.model.text_encoder import TextEncoder, build_text_encoder
from trainer.model.tokenizer import subword_tokenizer
from trainer.plots import plot_entity_f1
from trainer.predict import Predictor
from trainer.run_config import RunConfig, resolve_config
from trainer.train import build_optimizer, chunks, epoch_batches, seed_everything, train

PRESET = "twitter"
TYPES = ("PER", "LOC", "ORG", "MISC")
SOFTMAX = "softmax"
HEADING = "## (a) Twitter"
# The CRF variants: overrides of the preset, from the plain CRF up to the preset as shipped.
CRF_VARIANTS: dict[str, tuple[str, ...]] = {
    "crf": (
        "model.word_features.shape=false",
        "model.word_features.chars=false",
        "model.word_features.into_encoder=false",
    ),
    "features at emissions": ("model.word_features.into_encoder=false",),
    "default": (),
}
# Execution settings that do not change what is learned: a checkpoint trained with other values is reused.
EXECUTION_KEYS = ("threads", "eval_batch_size")


@dataclass
class TwitterResult:
    variant: str
    reports: dict[str, EvaluationReport]  # by valid file name (twitter2015, twitter2017)
    train_seconds: float
    epochs: int
    command: str


def dataset_name(path: Path) -> str:
    return Path(path).parent.name


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
    logits: torch.Tensor, word_mask: torch.Tensor, examples: Sequence[Example], labels: Sequence[str]
) -> list[PostPrediction]:
    """Argmax tags → entities (invalid sequences read the conlleval way); confidence: the weakest word's probability."""
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
        predictions.append(
            PostPrediction(id=example.id, entities=entities, model=ModelRef(name=SOFTMAX, version="bench"))
        )
    return predictions


def train_softmax(config: RunConfig, train_examples: list[Example], valid: dict[str, list[Example]]) -> TwitterResult:
    """Same encoder, batches, optimiser and schedule as trainer.train, all of MiniLM fine-tuned as a plain tagger is
    (the preset's ``freeze_word_embeddings`` is a saving of the CRF model's, not part of this baseline); the best
    epoch on all valid files is reported."""
    settings = config.train
    seed_everything(config.seed, settings.threads)
    started = time.perf_counter()
    text_encoder, tokenizer, _ = build_text_encoder(config.model.text_encoder)
    scheme = TagScheme(config.model.scheme)
    model = SoftmaxTagger(text_encoder, len(scheme.labels), config.model.fusion.dropout)
    # Images are never used here; the preprocessor's image geometry only has to be valid.
    preprocessor = Preprocessor(
        subword_tokenizer(tokenizer),
        64,
        (0.5,) * 3,
        (0.5,) * 3,
        config.model.max_words,
        config.model.max_subtokens,
        url_placeholder=config.model.text_encoder.url_placeholder,
    )
    encoder = ExampleEncoder(preprocessor, scheme, 0, annotates_boxes=False)
    valid_batches = {
        name: [(chunk, encoder.encode(chunk)) for chunk in chunks(examples, settings.eval_batch_size)]
        for name, examples in valid.items()
    }
    steps = -(-len(train_examples) // settings.batch_size) * settings.epochs
    optimizer, scheduler = build_optimizer(model, settings, steps)
    shuffler = np.random.default_rng(config.seed)
    best: dict[str, EvaluationReport] = {}
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for chunk in tqdm(
            epoch_batches(train_examples, settings, shuffler), desc=f"softmax epoch {epoch}", leave=False
        ):
            batch = encoder.encode(chunk)
            mask = batch.inputs["word_mask"]
            loss = nn.functional.cross_entropy(model(**batch.inputs)[mask], batch.gold_targets.tags[mask])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
        model.eval()
        reports = {}
        with torch.no_grad():
            for name, batches in valid_batches.items():
                predictions = [
                    prediction
                    for chunk, batch in batches
                    for prediction in softmax_predictions(
                        model(**batch.inputs), batch.inputs["word_mask"], chunk, scheme.labels
                    )
                ]
                reports[name] = build_report(valid[name], predictions).report
        if not best or _overall(reports, valid) > _overall(best, valid):
            best = reports
    command = "python -m bench.model (SoftmaxTagger, the twitter preset's train section)"
    return TwitterResult(SOFTMAX, best, time.perf_counter() - started, settings.epochs, command)


def _overall(reports: dict[str, EvaluationReport], valid: dict[str, list[Example]]) -> float:
    """Model selection over all valid files: F1 weighted by their sizes (as trainer.train selects on their union)."""
    return sum(reports[name].entity.f1 * len(examples) for name, examples in valid.items())


def _learned(config: RunConfig) -> dict:
    dump = config.model_dump(mode="json")
    for key in EXECUTION_KEYS:
        dump["train"].pop(key)
    return dump


def train_or_reuse(
    variant: str,
    overrides: Sequence[str],
    work: Path,
    train_examples: list[Example],
    valid_examples: list[Example],
    valid_files: Sequence[DataOrigin] = (),
) -> tuple[Path, dict]:
    """The preset with ``overrides`` trained into ``work/twitter-VARIANT``, or reused from there when it was trained
    with the same configuration; ``valid_files`` has valid scored per file too (:func:`trainer.train.train`)."""
    config = resolve_config(PRESET, None, overrides)
    out = work / f"twitter-{variant.replace(' ', '-')}"
    recorded = out / "bench_config.json"
    if (out / "metrics.json").is_file() and recorded.is_file() and json.loads(recorded.read_text()) == _learned(config):
        print(f"twitter {variant}: reusing {out}", flush=True)
    else:
        train(config, train_examples, valid_examples, out, valid_files=valid_files)
        recorded.write_text(json.dumps(_learned(config), indent=2) + "\n")
    return out, json.loads((out / "metrics.json").read_text())


def run_twitter(work: Path, batch_size: int = 64) -> list[TwitterResult]:
    config = resolve_config(PRESET)
    train_examples = load_split(config.named_data.train)
    valid = {dataset_name(path): load_split([path]) for path in config.named_data.valid}
    valid_examples = [example for examples in valid.values() for example in examples]
    results = [train_softmax(config, train_examples, valid)]
    for variant, overrides in CRF_VARIANTS.items():
        out, metrics = train_or_reuse(variant, overrides, work, train_examples, valid_examples)
        predictor = Predictor.load(out)
        reports = {
            name: build_report(examples, predict_all(predictor, examples, batch_size)).report
            for name, examples in valid.items()
        }
        command = " ".join(
            ["python -m trainer.train --preset", PRESET, *(f"--set {o}" for o in overrides), "--out DIR"]
        )
        results.append(TwitterResult(variant, reports, metrics["train_seconds"], metrics["epochs_run"], command))
    for result in results:
        figures = "  ".join(f"{name} F1 {report.entity.f1:.4f}" for name, report in result.reports.items())
        print(f"twitter {result.variant:<22} {figures}  ({result.train_seconds:.0f} s)", flush=True)
    return results


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(results: list[TwitterResult], command: str) -> str:
    config = resolve_config(PRESET)
    data = ", ".join(str(path) for path in config.named_data.train)
    lines = [
        f"{HEADING} valid (text only): the default model and what each part contributes",
        "",
        f"Command: `{command}`",
        "",
        f"Preset `{PRESET}` (`{config.model.text_encoder.name}`, {config.train.epochs} epochs, batch "
        f"{config.train.batch_size}, encoder lr {config.train.encoder_lr:g}), trained once on {data}; each variant is "
        "scored on each valid split through `trainer.evaluate`'s code path. The test splits are held back.",
        "",
        "| variant | valid | entity P | entity R | entity F1 | "
        + " | ".join(f"{t} F1" for t in TYPES)
        + " | train time |",
        "|---|---|---|---|---|" + "---|" * len(TYPES) + "---|",
    ]
    for result in results:
        for name, report in result.reports.items():
            entity = report.entity
            per_type = [_metric(entity.per_type[t].f1) if t in entity.per_type else "—" for t in TYPES]
            lines.append(
                f"| {result.variant} | {name} | {entity.precision:.3f} | {entity.recall:.3f} | **{entity.f1:.3f}** | "
                + " | ".join(per_type)
                + f" | {result.train_seconds / 60:.1f} min |"
            )
    lines += ["", "Each variant's training command:", ""]
    lines += [f"- {result.variant}: `{result.command}`" for result in results]
    lines += ["", "![Twitter](model_twitter.png)", ""]
    return "\n".join(lines) + "\n"


def figures(results: list[TwitterResult]) -> list[dict]:
    return [
        {
            "variant": r.variant,
            "valid": {name: report.entity.model_dump() for name, report in r.reports.items()},
            "train_seconds": r.train_seconds,
            "command": r.command,
        }
        for r in results
    ]


def plot(results: list[TwitterResult], path: Path) -> None:
    names = list(results[0].reports)
    panels = {f"{name} valid": {r.variant: r.reports[name].entity for r in results} for name in names}
    plot_entity_f1(panels, path, types=TYPES)
