"""One retraining run (see :mod:`trainer.retrain`): read and check the labels, audit them against the serving
model, fine-tune the base on the clean ones mixed with its replay sample, gate base and candidate on the held-out
new labels and on the reference set, export a promoted candidate with its lineage, then publish the refusals and
quarantined labels and commit the labels."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field
from tqdm import tqdm

from postlens.settings import Settings
from trainer.data.carried import CarriedDataError, DataOrigin, SetToCarry, file_origins, read_carried, read_set
from trainer.data.examples import Example
from trainer.data.load import load_examples
from trainer.evaluate import predict_all
from trainer.export import ExportError, export_model, load_in_triton
from trainer.model.checkpoint import model_config, read_config
from trainer.predict import Predictor
from trainer.retrain.audit import QUARANTINE_KIND, AuditResult, AuditThresholds, audit
from trainer.retrain.decision import (
    EVAL_BATCH_SIZE,
    RetrainError,
    TooFewLabels,
    decide,
    fine_tune_config,
    fine_tuning_sets,
    new_label_gate,
    newest_version,
    reference_gate,
    resolve_base,
    score,
)
from trainer.retrain.labels import Ingested, ingest, settle
from trainer.retrain.lineage import LabelsUsed, Lineage
from trainer.retrain.report import RetrainSummary, plot_comparison
from trainer.train import train

log = logging.getLogger(__name__)


class RetrainOptions(BaseModel):
    """What the command line asks of a run (settings give the topics, the group, the shares and the thresholds)."""

    base: Path | None = None  # None: the checkpoint behind the newest version in ``repo``
    valid: Path | None = None  # more held-out data for the new-labels gate (JSONL or CoNLL)
    reference: Path | None = None  # a curated set added to the reference set (JSONL or CoNLL)
    extra_train: Path | None = None  # more labeled data mixed into fine-tuning
    images: Path | None = None  # image folder of CoNLL ``valid``/``reference``/``extra_train`` files
    image_root: Path = Field(default_factory=Path.cwd)  # relative image paths in labels are relative to this
    repo: Path
    out: Path | None = None  # candidate checkpoint dir; None: a new folder under settings.checkpoints_dir
    min_labels: int = Field(ge=1)
    max_labels: int | None = Field(None, ge=1)
    from_beginning: bool = False
    dry_run: bool = False
    no_audit: bool = False  # train on every valid label, unaudited (recorded in lineage)
    tolerance: float = Field(ge=0, le=1)
    overrides: list[str] = Field(default_factory=list)
    triton_http: str | None = None  # None: the local stack's Triton when ``repo`` is the repository it serves


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def reference_set(base: Path, curated: list[Example], curated_origins: list[DataOrigin]) -> SetToCarry:
    """The base's carried reference set plus the curated one: what the candidate is gated on, and carries on."""
    try:
        carried, origins = read_set(base, "reference"), read_carried(base).origins("reference")
    except CarriedDataError as error:
        if not curated:
            raise RetrainError(
                f"{error}: the reference gate has nothing to compare on. Pass --reference FILE (labeled posts the "
                "base was selected on, e.g. its trainer.train --valid files), or retrain the base with this "
                "trainer.train, which records its valid set in the checkpoint"
            ) from None
        carried, origins = [], []
    return SetToCarry(examples=[*carried, *curated], origins=[*origins, *curated_origins])


def replay_pool(base: Path, share: float) -> list[Example]:
    if share == 0:
        return []
    try:
        return read_set(base, "replay")
    except CarriedDataError as error:
        raise RetrainError(
            f"{error}, so fine-tuning cannot mix in the base's own training data against forgetting. Pass "
            "--extra-train FILE (the base's training data) with POSTLENS_RETRAIN_REPLAY_SHARE=0, or retrain the "
            "base with this trainer.train, which records a replay sample in the checkpoint"
        ) from None


def audit_labels(base: Path, ingested: Ingested, thresholds: AuditThresholds) -> AuditResult:
    """Quarantine the sources (or the batch) whose labels contradict the base's confident predictions."""
    predictions = predict_all(Predictor.load(base), ingested.examples, EVAL_BATCH_SIZE)
    result, quarantined = audit(ingested.labels, predictions, thresholds)
    for label, reason in quarantined:
        ingested.refuse(label, QUARANTINE_KIND, reason)
    return result


Phase = Literal["read", "audit", "train", "evaluate", "export", "settle"]


def retrain(
    options: RetrainOptions, settings: Settings, on_phase: Callable[[Phase], None] | None = None
) -> RetrainSummary:
    """One retraining run (:mod:`trainer.retrain`); expected outcomes — too few labels too — are in the summary.
    ``on_phase`` hears each phase as it starts (``--watch`` stops a run only before "export")."""
    enter: Callable[[Phase], None] = on_phase or (lambda _phase: None)
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
        config = fine_tune_config(base, options.overrides, settings.retrain_lr_scale)
        base_model = model_config(base)

        def load(path: Path | None) -> list[Example]:
            return load_examples(path, images_dir=options.images) if path else []

        valid, extra, curated = load(options.valid), load(options.extra_train), load(options.reference)
        reference = reference_set(
            base, curated, file_origins([options.reference], [len(curated)]) if options.reference else []
        )
        pool = replay_pool(base, settings.retrain_replay_share)
        summary.reference_size, summary.replay_pool = len(reference.examples), len(pool)
        say(f"base checkpoint {base} (weights {read_config(base)['version']}); reference set {len(reference.examples)}")

        with tempfile.TemporaryDirectory(prefix="postlens-retrain-") as work:
            mark = time.perf_counter()
            enter("read")
            ingested = asyncio.run(
                ingest(
                    settings, options.image_root, base_model.vision_encoder.input_size, base_model.max_images,
                    Path(work), from_beginning=options.from_beginning, max_labels=options.max_labels,
                )
            )  # fmt: skip
            mark = lap("read", mark)
            summary.labels_read, summary.labels_valid = ingested.read, len(ingested.labels)
            summary.duplicates, summary.widened_spans = ingested.duplicates, ingested.widened
            summary.rejected = ingested.rejected_by_kind
            say(
                f"{settings.topic_labels}: read {ingested.read} labels — {len(ingested.labels)} usable, "
                f"{ingested.duplicates} superseded by a later label with the same id, {len(ingested.rejected)} rejected"
                + "".join(f"\n  rejected {kind}: {count}" for kind, count in summary.rejected.items())
            )
            if len(ingested.labels) < options.min_labels:
                raise TooFewLabels(
                    f"{len(ingested.labels)} usable new labels on {settings.topic_labels} (group "
                    f"{settings.retrain_group}); at least {options.min_labels} are needed (--min-labels). "
                    "Nothing was trained or committed."
                )
            used = LabelsUsed.of(ingested, settings)  # before the audit: what this run consumed
            thresholds = AuditThresholds(
                confidence=settings.retrain_audit_confidence,
                share=settings.retrain_audit_share,
                min_spans=settings.retrain_audit_min_spans,
            )
            if options.no_audit:
                summary.audit = AuditResult(thresholds=thresholds, bypassed=True)
            else:
                enter("audit")
                summary.audit = audit_labels(base, ingested, thresholds)
                mark = lap("audit", mark)
                summary.rejected = ingested.rejected_by_kind
                findings = [
                    f"{group.group}: {'; '.join(group.findings)}" for group in summary.audit.groups if group.findings
                ]
                say(f"audit: {summary.audit.quarantined_labels} labels quarantined" + "\n  ".join(["", *findings]))
            summary.labels_clean = len(ingested.labels)
            if len(ingested.labels) < options.min_labels:
                summary.decision, summary.status = "keep_base", "quarantined"
                summary.message = (
                    f"{len(ingested.labels)} labels passed the audit (at least {options.min_labels} are needed): "
                    "nothing was trained; the quarantined labels go to the rejected topic with their reason"
                )
            else:
                sets = fine_tuning_sets(
                    ingested.examples, valid, extra, settings.retrain_holdout, settings.retrain_tune,
                    replay_pool=pool, replay_share=settings.retrain_replay_share, seed=config.seed,
                )  # fmt: skip
                summary.train_size, summary.tune_size, summary.replay_size = (
                    len(sets.train),
                    len(sets.tune),
                    len(sets.replay),
                )
                summary.eval_size, summary.eval_from_valid = len(sets.evaluation), len(valid)
                say(
                    f"fine-tuning on {len(sets.new)} new labels + {len(sets.replay)} replayed + {len(sets.extra)} "
                    f"from --extra-train, early stopping on {len(sets.tune) or 'the training posts'}; gates: "
                    f"{len(sets.evaluation)} held out ({len(valid)} from --valid), reference {len(reference.examples)}"
                )
                out = options.out or settings.checkpoints_dir / f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
                if out.exists() and any(out.iterdir()):
                    raise RetrainError(f"{out} exists and is not empty; the candidate needs a fresh folder (--out)")
                new_origin = DataOrigin(path=f"kafka:{settings.topic_labels}", posts=len(sets.new))
                enter("train")
                # Too few labels for a tune slice: early stopping on the training posts (it then only stops at a
                # plateau); the gates below stay unbiased either way.
                train(
                    config, sets.train, sets.tune or sets.train, out, progress=True, init_from=base,
                    reference=reference,
                    replay=SetToCarry(
                        examples=[*sets.new, *pool], origins=[new_origin, *read_carried(base).origins("replay")]
                    ),
                )  # fmt: skip
                mark = lap("train", mark)

                enter("evaluate")
                base_new, candidate_new = score(base, sets.evaluation), score(out, sets.evaluation)
                base_ref, candidate_ref = score(base, reference.examples), score(out, reference.examples)
                mark = lap("evaluate", mark)
                summary.base, summary.candidate = base_new, candidate_new
                summary.gates = [
                    new_label_gate(base_new, candidate_new, len(sets.evaluation), options.tolerance),
                    reference_gate(
                        base_ref, candidate_ref, reference.examples, settings.retrain_reference_tolerance,
                        settings.retrain_reference_type_margin, settings.retrain_reference_min_type_spans,
                    ),
                ]  # fmt: skip
                summary.decision = decide(summary.gates)
                summary.candidate_checkpoint = str(out.resolve())
                plot_comparison(summary.gates, summary.decision, out / "retrain_comparison.png")

                if options.dry_run:
                    summary.status = "dry_run"
                elif summary.decision == "promote":
                    enter("export")
                    lineage = Lineage(
                        made_by="trainer.retrain", labels=used, audit=summary.audit, gates=summary.gates,
                        decision=summary.decision, reference=reference.origins, base_checkpoint=str(base.resolve()),
                    )  # fmt: skip
                    target = export_model(out, options.repo, lineage=lineage.card_fields())
                    summary.exported_version, summary.status = int(target.name), "promoted"
                    mark = lap("export", mark)
                    summary.triton, summary.triton_refused = tell_triton(options, settings, summary.exported_version)
                else:
                    summary.status = "kept_base"
            if not options.dry_run:
                enter("settle")
                asyncio.run(settle(settings, ingested))
                summary.offsets_committed = True
                summary.rejected = ingested.rejected_by_kind
    except TooFewLabels as error:
        summary.status, summary.message = "too_few_labels", str(error)
    except RetrainError as error:
        summary.status, summary.message = "failed", str(error)
    except (ExportError, KafkaError, OSError, ValueError) as error:
        log.debug("retraining failed", exc_info=True)
        summary.status, summary.message = "failed", f"{type(error).__name__}: {error}"
    summary.served_version = newest_version(options.repo / settings.triton_model)
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
