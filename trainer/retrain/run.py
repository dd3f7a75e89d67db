"""Retrain on new labels: ``python -m trainer.retrain`` — labels topic → fine-tuned candidate → promoted if not worse.

One bounded run, not a daemon:

1. **Read** the labels topic from the group's committed offsets up to its end offsets at start (``--max-labels``
   stops earlier, ``--from-beginning`` re-reads everything). Each message must be a BRIEF §2
   :class:`~postlens.schemas.Label` that converts to an :class:`~trainer.data.examples.Example` whose images load
   (URLs through the stream's SSRF-safe fetcher and Redis cache; local paths under ``--image-root``). A message that
   fails is refused with a reason — nothing is dropped silently. For a repeated label id the latest message wins.
2. **Split** the labels by a hash of their id, so a label stays in its slice from run to run: a held-out slice
   (plus ``--valid``) is the evaluation set, a tune slice drives early stopping and calibration, the rest (plus
   ``--extra-train``) is fine-tuned on.
3. **Fine-tune** the base checkpoint (``--base``; default: the checkpoint the newest version in the model repository
   was exported from) with its own configuration and ``--set`` overrides of the ``train``/``loss`` sections.
4. **Decide**: base and candidate are scored on the same evaluation set; the candidate is promoted — exported as
   the next version of the Triton model, which Triton then loads — when its entity F1 ≥ base F1 − tolerance.
5. **Commit**: refused labels are published to the rejected-labels topic as dead letters and the consumed offsets
   are committed only after the decision, so a run that dies midway reads the same labels again. ``--dry-run``
   trains and decides, but exports, publishes and commits nothing.

Exit codes: 0 decided (promoted, or kept the base); 3 too few valid labels (nothing committed); 1 failed (nothing
committed); 4 promoted, but the Triton serving the repository did not load the new version (offsets committed).
Runs are meant to be sequential (e.g. from cron): two at once would read, and train on, the same labels.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from tqdm import tqdm

from postlens.schemas import DeadLetter, Label, text_refusal, validation_summary
from postlens.settings import Settings, get_settings
from postlens.io.deadletter import RawMessage, dead_letter
from postlens.io.fetch import OK, FetchError, ImageFetcher, decode_image
from postlens.io.image_cache import ImageCache
from postlens.io.kafka import ensure_topics
from trainer.data.examples import Example, load_examples
from trainer.data.jsonl import example_from_label
from trainer.evaluate import EvaluationReport, build_report, predict_all
from postlens.runtime.exported import CARD_FILE
from trainer.export import ExportError, export_model, load_in_triton, next_version
from trainer.model.checkpoint import model_config, read_config
from trainer.predict import Predictor
from trainer.train import RunConfig, apply_overrides, train

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_TOO_FEW_LABELS = 3
EXIT_NOT_LOADED = 4
REJECTED_PARTITIONS = 1  # refused labels stay in the order they were refused; their volume is small
EVAL_BATCH_SIZE = 32

Status = Literal["promoted", "kept_base", "dry_run", "too_few_labels", "failed"]
Decision = Literal["promote", "keep_base"]


class RetrainError(Exception):
    """The run cannot go on; the message says why. Nothing is exported or committed."""


class TooFewLabels(RetrainError):
    pass


class InvalidLabel(Exception):
    """A label message retraining refuses; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------------------------
# Options and the run's summary
# --------------------------------------------------------------------------------------------------------------


class RetrainOptions(BaseModel):
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


class ModelScore(BaseModel):
    checkpoint: str
    version: str  # the checkpoint's weights hash
    f1: float  # entity micro F1 on the evaluation set
    report: dict  # the BRIEF §6 evaluation JSON on the evaluation set


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


# --------------------------------------------------------------------------------------------------------------
# Label messages → examples
# --------------------------------------------------------------------------------------------------------------


def parse_label(value: bytes | None) -> Label:
    """A message value → a :class:`Label`, or :class:`InvalidLabel` (``invalid_json`` — not UTF-8 JSON — or
    ``schema``)."""
    if value is None:
        raise InvalidLabel("empty", "the message has no value")
    try:
        return Label.model_validate_json(value)
    except ValidationError as error:
        kind = "invalid_json" if any(item["type"] == "json_invalid" for item in error.errors()) else "schema"
        raise InvalidLabel(kind, validation_summary(error, "label")) from error


def label_example(label: Label, image_root: Path, max_text_chars: int) -> tuple[Example, list[str]]:
    """The training example of a label (images still as references) and notes on widened spans."""
    try:
        example, notes = example_from_label(label, image_root)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise InvalidLabel("conversion", str(error)) from error
    if refusal := text_refusal(example.text, max_text_chars):
        raise InvalidLabel(*refusal)
    return example, notes


@dataclass(frozen=True)
class LabelMessage:
    raw: RawMessage
    timestamp: int


def latest_by_id(messages: Sequence[tuple[LabelMessage, Label]]) -> tuple[list[tuple[LabelMessage, Label]], int]:
    """One label per id — the latest message (by time, then offset) — sorted by id; and how many were superseded."""
    latest: dict[str, tuple[LabelMessage, Label]] = {}
    for message, label in messages:
        kept = latest.get(label.id)
        if kept is None or (message.timestamp, message.raw.offset or 0) >= (kept[0].timestamp, kept[0].raw.offset or 0):
            latest[label.id] = (message, label)
    return [latest[label_id] for label_id in sorted(latest)], len(messages) - len(latest)


class LabelImages:
    """A label's images → PNG files of model pixels in a work folder, so training and evaluation read every image the
    same way. URLs go through the stream's fetcher (SSRF policy, limits, Redis cache); local files must lie under
    ``root`` (labels come from a topic, and must not read arbitrary files) and pass the same decoding checks."""

    def __init__(self, settings: Settings, image_size: int, root: Path, out: Path) -> None:
        self._settings = settings
        self._image_size = image_size
        self._root = root.resolve()
        self._out = out
        self._cache: ImageCache | None = None
        self._fetcher: ImageFetcher | None = None
        self._done: dict[str, str | InvalidLabel] = {}
        out.mkdir(parents=True, exist_ok=True)

    async def localize(self, references: Sequence[str]) -> list[str]:
        """Local PNG paths for ``references``, in order; raises the first image's :class:`InvalidLabel`."""
        paths = await asyncio.gather(*(self._one(reference) for reference in references))
        for path in paths:
            if isinstance(path, InvalidLabel):
                raise path
        return list(paths)

    async def _one(self, reference: str) -> str | InvalidLabel:
        if reference not in self._done:
            try:
                pixels = await (self._fetch(reference) if "://" in reference else self._read(Path(reference)))
                target = self._out / f"{hashlib.sha256(reference.encode()).hexdigest()[:32]}.png"
                await asyncio.to_thread(Image.fromarray(pixels).save, target)
                self._done[reference] = str(target)
            except InvalidLabel as refusal:
                self._done[reference] = refusal
        return self._done[reference]

    async def _fetch(self, url: str) -> np.ndarray:
        if self._fetcher is None:
            self._cache = ImageCache(self._settings, self._image_size)
            self._fetcher = ImageFetcher(self._settings, self._image_size, cache=self._cache)
        fetched = await self._fetcher.fetch(url)
        if fetched.outcome.status != OK or fetched.pixels is None:
            raise InvalidLabel(f"image_{fetched.outcome.status}", f"image {url}: {fetched.outcome.message}")
        return fetched.pixels

    async def _read(self, path: Path) -> np.ndarray:
        resolved = path.resolve()
        if not resolved.is_relative_to(self._root):
            raise InvalidLabel("image_outside_root", f"image {path} is outside the image root {self._root}")
        if not resolved.is_file():
            raise InvalidLabel("image_missing", f"image {path} does not exist")
        try:
            data = await asyncio.to_thread(resolved.read_bytes)
            return await asyncio.to_thread(decode_image, data, self._image_size, self._settings.fetch_max_pixels)
        except FetchError as error:
            raise InvalidLabel(f"image_{error.kind}", f"image {path}: {error}") from error

    async def close(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.close()
        if self._cache is not None:
            await self._cache.close()


# --------------------------------------------------------------------------------------------------------------
# Kafka: reading the labels, publishing refusals, committing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Ingested:
    """What one run read: the usable examples, the refused messages and the offsets to commit."""

    examples: list[Example] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    read: int = 0
    duplicates: int = 0
    widened: int = 0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def rejected_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(letter.error.kind for letter in self.rejected).items()))


async def read_messages(
    settings: Settings, from_beginning: bool = False, max_labels: int | None = None
) -> tuple[list[LabelMessage], dict[TopicPartition, int]]:
    """The label messages after the group's committed offsets (or all, ``from_beginning``) up to the end offsets at
    the start of the call — at most ``max_labels`` — and the offsets that mark them consumed."""
    topic = settings.topic_labels
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
    if not partitions:
        return [], {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.retrain_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(partitions)  # a bounded reader needs every partition, not a share of a group's
        for tp in partitions:
            committed = None if from_beginning else await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        start = {tp: await consumer.position(tp) for tp in partitions}
        end = await consumer.end_offsets(partitions)
        offsets = dict(start)
        backlog = sum(max(0, end[tp] - start[tp]) for tp in partitions)
        wanted = backlog if max_labels is None else min(backlog, max_labels)
        messages: list[LabelMessage] = []
        pending = [tp for tp in partitions if start[tp] < end[tp]]
        with tqdm(total=wanted, desc="reading labels", unit="label", disable=wanted == 0) as progress:
            while pending and len(messages) < wanted:
                # max_records: everything fetched is used, so a partition's position is exactly what was consumed.
                batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=wanted - len(messages))
                for tp, records in batches.items():
                    for record in records:
                        if record.offset >= end[tp]:  # published after this run started: the next run's
                            break
                        raw = RawMessage(record.value, record.key, record.topic, record.partition, record.offset)
                        messages.append(LabelMessage(raw, record.timestamp))
                        offsets[tp] = record.offset + 1
                        progress.update()
                pending = [tp for tp in pending if await consumer.position(tp) < end[tp]]
        for tp in partitions:  # read to the end: mark it so (skips offsets that held no record, like markers)
            if await consumer.position(tp) >= end[tp]:
                offsets[tp] = max(offsets[tp], end[tp])
        return messages, {tp: offset for tp, offset in offsets.items() if offset > start[tp]}
    finally:
        await consumer.stop()


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic`` (none when it does not exist). Asks for all topics' metadata: asking for one by
    name would have the broker create it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = [entry for entry in await admin.describe_topics() if entry["topic"] == topic]
    finally:
        await admin.close()
    return sorted(partition["partition"] for entry in described for partition in entry["partitions"])


async def ingest(settings: Settings, options: RetrainOptions, image_size: int, max_images: int, work: Path) -> Ingested:
    """Read the new labels and turn each into an example with local images, or a dead letter with the reason."""
    messages, offsets = await read_messages(settings, options.from_beginning, options.max_labels)
    result = Ingested(read=len(messages), offsets=offsets)

    def refuse(message: LabelMessage, refusal: InvalidLabel) -> None:
        result.rejected.append(dead_letter(message.raw, "label", refusal.kind, str(refusal)))

    parsed: list[tuple[LabelMessage, Label]] = []
    for message in messages:
        try:
            parsed.append((message, parse_label(message.raw.value)))
        except InvalidLabel as refusal:
            refuse(message, refusal)
    latest, result.duplicates = latest_by_id(parsed)

    images = LabelImages(settings, image_size, options.image_root, work / "images")

    async def check(message: LabelMessage, label: Label) -> Example | None:
        try:
            example, notes = label_example(label, options.image_root, settings.max_text_chars)
            used = await images.localize(example.images[:max_images])
        except InvalidLabel as refusal:
            refuse(message, refusal)
            return None
        finally:
            progress.update()
        for note in notes:
            log.warning("%s (offset %s): %s", message.raw.topic, message.raw.offset, note)
        result.widened += len(notes)
        return example.model_copy(update={"images": [*used, *example.images[max_images:]]})

    try:
        # Concurrently: URL images are fetched in parallel, within the fetcher's global and per-host limits.
        with tqdm(total=len(latest), desc="checking labels", unit="label", disable=not latest) as progress:
            checked = await asyncio.gather(*(check(message, label) for message, label in latest))
    finally:
        await images.close()
    result.examples = [example for example in checked if example is not None]
    result.rejected.sort(key=lambda letter: (letter.source_partition or 0, letter.source_offset or 0))
    return result


async def settle(settings: Settings, rejected: Sequence[DeadLetter], offsets: dict[TopicPartition, int]) -> None:
    """Publish the refused labels, then — once Kafka has them — commit the consumed offsets."""
    if rejected:
        await ensure_topics(settings, {settings.topic_labels_rejected: REJECTED_PARTITIONS})
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            deliveries = [
                await producer.send(
                    settings.topic_labels_rejected,
                    value=letter.model_dump_json().encode("utf-8"),
                    key=letter.key.encode("utf-8") if letter.key is not None else None,
                )
                for letter in rejected
            ]
            await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
    if offsets:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.retrain_group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------------------------------------------
# Base checkpoint, split, scoring, decision
# --------------------------------------------------------------------------------------------------------------


def resolve_base(base: Path | None, repo: Path, model_name: str) -> Path:
    """``base`` itself, or the checkpoint the newest version of ``model_name`` in ``repo`` was exported from."""
    if base is not None:
        read_config(base)  # a checkpoint, or a clear error
        return base
    try:
        return _exported_from(repo / model_name)
    except RetrainError as error:
        raise RetrainError(f"{error}; pass --base DIR (a trainer.train checkpoint)") from None


def _exported_from(model_root: Path) -> Path:
    newest = next_version(model_root) - 1
    if newest < 1:
        raise RetrainError(f"{model_root} has no versions to start from")
    card_path = model_root / str(newest) / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
        source, exported_weights = Path(card["source_checkpoint"]), str(card["checkpoint_version"])
    except (OSError, ValueError, KeyError) as error:
        raise RetrainError(f"cannot tell which checkpoint version {newest} came from ({card_path}: {error})") from None
    try:
        weights = str(read_config(source)["version"])
    except FileNotFoundError:
        raise RetrainError(f"version {newest} was exported from {source}, which is no longer a checkpoint") from None
    if weights != exported_weights:
        raise RetrainError(f"{source} holds weights {weights}, but version {newest} was exported from {exported_weights}")
    return source


def fine_tune_config(base: Path, overrides: Sequence[str]) -> RunConfig:
    """The base's recorded run configuration with ``train``/``loss`` overrides; the architecture is the base's."""
    architecture = [override for override in overrides if override.split("=", 1)[0].split(".")[0] == "model"]
    if architecture:
        raise RetrainError(f"{', '.join(architecture)}: the model comes from the base checkpoint; set only train.*/loss.*")
    recorded = {key: value for key, value in read_config(base).items() if key != "version"}
    try:
        return RunConfig.model_validate(apply_overrides(recorded, overrides))
    except ValueError as error:
        raise RetrainError(f"--set: {error}") from None


def id_position(label_id: str) -> float:
    """Where a label id falls in [0, 1) — a hash, so the same label always lands in the same slice."""
    return int.from_bytes(hashlib.sha256(label_id.encode("utf-8")).digest()[:8], "big") / 2**64


@dataclass
class Split:
    train: list[Example]
    tune: list[Example]
    holdout: list[Example]


def split_labels(examples: Sequence[Example], holdout: float, tune: float) -> Split:
    """Held out for the base-vs-candidate comparison: ids in [0, holdout); tune: [holdout, holdout + tune); the rest
    is trained on."""
    split = Split([], [], [])
    for example in examples:
        position = id_position(example.id)
        part = split.holdout if position < holdout else split.tune if position < holdout + tune else split.train
        part.append(example)
    return split


@dataclass
class FineTuningSets:
    train: list[Example]  # new labels (+ --extra-train)
    tune: list[Example]  # early stopping and calibration; may be empty with few labels
    evaluation: list[Example]  # held-out new labels (+ --valid): base and candidate are compared on these


def fine_tuning_sets(
    labels: Sequence[Example], valid: Sequence[Example], extra: Sequence[Example], holdout: float, tune: float
) -> FineTuningSets:
    split = split_labels(labels, holdout, tune)
    if not split.train or not (split.holdout or valid):
        raise TooFewLabels(
            f"{len(labels)} labels leave {len(split.holdout)} held out and {len(split.train)} to train on; "
            "send more labels" + ("" if valid else " or pass --valid")
        )
    return FineTuningSets(train=[*split.train, *extra], tune=split.tune, evaluation=[*split.holdout, *valid])


def decide(base_f1: float, candidate_f1: float, tolerance: float) -> Decision:
    """Promote a candidate that is not worse than the base by more than ``tolerance`` (entity F1)."""
    return "promote" if candidate_f1 >= base_f1 - tolerance else "keep_base"


def score(model_dir: Path, examples: Sequence[Example]) -> ModelScore:
    predictor = Predictor.load(model_dir)
    report: EvaluationReport = build_report(examples, predict_all(predictor, examples, EVAL_BATCH_SIZE)).report
    return ModelScore(
        checkpoint=str(Path(model_dir).resolve()),
        version=str(read_config(model_dir)["version"]),
        f1=report.entity.f1,
        report=report.to_json(),
    )


def plot_comparison(base: ModelScore, candidate: ModelScore, decision: Decision, path: Path) -> None:
    """Entity F1 overall and per type, base beside candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted(set(base.report["entity"]["per_type"]) | set(candidate.report["entity"]["per_type"]))
    names = ["all", *types]

    def values(model: ModelScore) -> list[float]:
        per_type = model.report["entity"]["per_type"]
        return [model.f1, *(per_type.get(t, {}).get("f1", 0.0) for t in types)]

    x = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.bar(x - 0.2, values(base), 0.4, label=f"base {base.version}", color="tab:gray")
    axes.bar(x + 0.2, values(candidate), 0.4, label=f"candidate {candidate.version}", color="tab:green")
    axes.set_xticks(x, names)
    axes.set_ylim(0, 1.2)  # room for the legend above the bars
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("entity F1 (evaluation set)")
    axes.set_title(f"Retrain: {decision.replace('_', ' ')}")
    axes.legend(loc="upper center", ncols=2, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def retrain(options: RetrainOptions, settings: Settings) -> RetrainSummary:
    """One retraining run (module docstring); expected outcomes — including too few labels — are in the summary."""
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
                ingest(settings, options, base_model.vision_encoder.image_size, base_model.max_images, Path(work))
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
            asyncio.run(settle(settings, ingested.rejected, ingested.offsets))
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


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m trainer.retrain", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--base", type=Path, help="checkpoint to fine-tune (default: the one behind the newest version in --repo)")
    add("--valid", type=Path, help="labeled JSONL/CoNLL added to the evaluation set")
    add("--extra-train", type=Path, help="labeled JSONL/CoNLL mixed into fine-tuning (e.g. the base's train set)")
    add("--images", type=Path, help="image folder of CoNLL --valid/--extra-train files (by IMGID)")
    add("--image-root", type=Path, default=Path.cwd(), help="relative image paths in labels are under this folder")
    add("--repo", type=Path, default=settings.model_repository, help="Triton model repository")
    add("--out", type=Path, help=f"candidate checkpoint folder (default: new, under {settings.checkpoints_dir})")
    add("--min-labels", type=int, default=settings.retrain_min_labels, help="fewer usable labels → exit 3")
    add("--max-labels", type=int, help="read at most this many label messages (the rest wait for the next run)")
    add("--from-beginning", action="store_true", help="read the whole topic, not only what came after the last commit")
    add("--dry-run", action="store_true", help="train and decide, but export, publish and commit nothing")
    add("--tolerance", type=float, default=settings.retrain_tolerance, help="promote when F1 ≥ base F1 − this")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override train.*/loss.*")
    add("--triton-http", help="Triton HTTP URL to load a new version into (default: the stack's, for its repository)")
    add("--json", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainer").setLevel(logging.INFO)

    try:
        options = RetrainOptions(
            **{name: value for name, value in vars(args).items() if name != "json"},
        )
    except ValidationError as error:
        parser.error(validation_summary(error, "label"))
    summary = retrain(options, settings)
    print(summary_text(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(summary.model_dump_json(indent=2) + "\n")
    raise SystemExit(summary.exit_code)


if __name__ == "__main__":
    main()
