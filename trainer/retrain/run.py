"""One retraining run (see :mod:`trainer.retrain`): read and check the labels, fine-tune the base, score base and
candidate, decide, export and load a promoted candidate, then publish the refusals and commit the labels."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field
from tqdm import tqdm

from postlens.settings import Settings
from trainer.data.load import load_examples
from trainer.export import ExportError, export_model, load_in_triton
from trainer.model.checkpoint import model_config, read_config
from trainer.retrain.decision import (
    RetrainError,
    TooFewLabels,
    decide,
    fine_tune_config,
    fine_tuning_sets,
    resolve_base,
    score,
)
from trainer.retrain.labels import ingest, settle
from trainer.retrain.report import RetrainSummary, plot_comparison
from trainer.train import train

log = logging.getLogger(__name__)


class RetrainOptions(BaseModel):
    """What the command line asks of a run (settings give the topics, the group and the shares)."""

    base: Path | None = None  # None: the checkpoint behind the newest version in ``repo``
    valid: Path | None = None  # extra evaluation data (JSONL or CoNLL)
    extra_train: Path | None = None  # earlier labeled data mixed into fine-tuning (against forgetting)
    images: Path | None = None  # image folder of CoNLL ``valid``/``extra_train`` files
    image_root: Path = Field(default_factory=Path.cwd)  # relative image paths in labels are relative to this
    repo: Path
    out: Path | None = None  # candidate checkpoint dir; None: a new folder under settings.checkpoints_dir
    min_labels: int = Field(ge=1)
    max_labels: int | None = Field(None, ge=1)
    from_beginning: bool = False
    dry_run: bool = False
    tolerance: float = Field(ge=0, le=1)
    overrides: list[str] = Field(default_factory=list)
    triton_http: str | None = None  # None: the local stack's Triton when ``repo`` is the repository it serves


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def retrain(options: RetrainOptions, settings: Settings) -> RetrainSummary:
    """One retraining run (:mod:`trainer.retrain`); expected outcomes (too few labels among them) are in the
    summary."""
    summary = RetrainSummary(
        status="failed", dry_run=options.dry_run, topic=settings.topic_labels, group=settings.retrain_group,
        tolerance=options.tolerance,
    )  # fmt: skip
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        summary.seconds[name] = round(now - since, 2)
        return now

    try:
        base = resolve_base(options.base, options.repo, settings.triton_model)
        config = fine_tune_config(base, options.overrides)
        base_model = model_config(base)
        valid = load_examples(options.valid, images_dir=options.images) if options.valid else []
        extra = load_examples(options.extra_train, images_dir=options.images) if options.extra_train else []
        say(f"base checkpoint {base} (weights {read_config(base)['version']})")

        with tempfile.TemporaryDirectory(prefix="postlens-retrain-") as work:
            mark = time.perf_counter()
            ingested = asyncio.run(
                ingest(
                    settings,
                    options.image_root,
                    base_model.vision_encoder.input_size,
                    base_model.max_images,
                    Path(work),
                    from_beginning=options.from_beginning,
                    max_labels=options.max_labels,
                )
            )
            mark = lap("read", mark)
            summary.labels_read, summary.labels_valid = ingested.read, len(ingested.examples)
            summary.duplicates, summary.widened_spans = ingested.duplicates, ingested.widened
            summary.rejected = ingested.rejected_by_kind
            say(
                f"{settings.topic_labels}: read {ingested.read} labels — {len(ingested.examples)} usable, "
                f"{ingested.duplicates} superseded by a later label with the same id, {len(ingested.rejected)} rejected"
                + "".join(f"\n  rejected {kind}: {count}" for kind, count in summary.rejected.items())
            )
            if len(ingested.examples) < options.min_labels:
                raise TooFewLabels(
                    f"{len(ingested.examples)} usable new labels on {settings.topic_labels} (group "
                    f"{settings.retrain_group}); at least {options.min_labels} are needed (--min-labels). "
                    "Nothing was trained or committed."
                )

            sets = fine_tuning_sets(ingested.examples, valid, extra, settings.retrain_holdout, settings.retrain_tune)
            summary.train_size, summary.tune_size = len(sets.train), len(sets.tune)
            summary.eval_size, summary.eval_from_valid = len(sets.evaluation), len(valid)
            say(
                f"fine-tuning on {len(sets.train)} posts ({len(extra)} of them from --extra-train), early stopping on "
                f"{len(sets.tune) or 'the training posts'}, comparing on {len(sets.evaluation)} "
                f"({len(sets.evaluation) - len(valid)} held-out labels + {len(valid)} from --valid)"
            )

            out = options.out or settings.checkpoints_dir / f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
            if out.exists() and any(out.iterdir()):
                raise RetrainError(f"{out} exists and is not empty; the candidate needs a fresh folder (--out)")
            # Too few labels for a tune slice: early stopping on the training posts (it then only stops at a
            # plateau); the comparison below stays unbiased either way.
            train(config, sets.train, sets.tune or sets.train, out, progress=True, init_from=base)
            mark = lap("train", mark)

            summary.base, summary.candidate = score(base, sets.evaluation), score(out, sets.evaluation)
            mark = lap("evaluate", mark)
        summary.decision = decide(summary.base.f1, summary.candidate.f1, options.tolerance)
        plot_comparison(summary.base, summary.candidate, summary.decision, out / "retrain_comparison.png")

        if options.dry_run:
            summary.status = "dry_run"
        elif summary.decision == "promote":
            target = export_model(out, options.repo)
            summary.exported_version, summary.status = int(target.name), "promoted"
            mark = lap("export", mark)
            summary.triton, summary.triton_refused = tell_triton(options, settings, summary.exported_version)
        else:
            summary.status = "kept_base"
        if not options.dry_run:
            asyncio.run(settle(settings, ingested))
            summary.offsets_committed = True
    except TooFewLabels as error:
        summary.status, summary.message = "too_few_labels", str(error)
    except RetrainError as error:
        summary.status, summary.message = "failed", str(error)
    except (ExportError, KafkaError, OSError, ValueError) as error:
        log.debug("retraining failed", exc_info=True)
        summary.status, summary.message = "failed", f"{type(error).__name__}: {error}"
    summary.seconds["total"] = round(time.perf_counter() - started, 2)
    return summary


def tell_triton(options: RetrainOptions, settings: Settings, version: int) -> tuple[str, bool]:
    """Ask the Triton serving the repository to load the new version → (what happened, whether Triton refused)."""
    http_url = options.triton_http or settings.triton_load_url(options.repo)
    if http_url is None:
        return "Triton not contacted (it does not serve this repository); it serves the version when it loads it", False
    try:
        return load_in_triton(http_url.rstrip("/"), settings.triton_model, version), False
    except ExportError as error:
        return str(error), True
