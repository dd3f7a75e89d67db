"""Train the NER network: ``python -m trainer.train --preset NAME --strategy NAME --train PATH --valid PATH --out DIR``.

A preset is a YAML file in ``trainer/configs/`` (or a path); ``--set a.b=value`` overrides any key (values are
parsed as YAML, so ``--set train.epochs=3`` is an int). A preset with a ``data:`` section names its own train and
valid files (relative to ``POSTLENS_SHARED_DATA_DIR``), so ``--train``/``--valid`` may be left out; given, they
replace it, and several files per split are concatenated. Seeds are fixed and algorithms deterministic, so a run is
repeatable (:mod:`trainer.run_config`).

Selection: with ``train.dev_share`` > 0 (the ``twitter`` preset: 0.1) that share of the training posts, chosen by a
hash of their words (:mod:`trainer.data.split`), is a dev slice never trained on. Each epoch ends with a pass over
it; training stops early when dev entity F1 has not improved for ``train.patience`` epochs; the best epoch's
weights are kept — or, with ``train.average_last`` = k ≥ 2, the mean of the last k epochs' weights when it scores at
least as well on dev; the model is calibrated on dev (:mod:`trainer.calibration`). Valid is then only scored: an
honest estimate, and the reference set the checkpoint carries for the retraining gate. With ``train.dev_share`` 0,
valid does the selecting and calibrating itself (and so over-estimates). The checkpoint (docs/contracts.md) gets
``metrics.json`` (dev and valid reports apart, both candidates' scores) and ``training_curve.png`` beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from postlens.runtime.decode import Decoder
from postlens.runtime.preprocess import Preprocessor
from postlens.schemas import ModelRef, PostPrediction
from trainer.calibration import calibrate, decode_all
from trainer.data.carried import DataOrigin, SetToCarry, carry_training_data
from trainer.data.examples import Example
from trainer.data.load import load_with_origins
from trainer.data.split import carve_dev
from trainer.evaluate import EvaluationReport, build_report
from trainer.model.averaging import average_states
from trainer.model.batching import Batch, ExampleEncoder
from trainer.model.checkpoint import load_checkpoint, save_checkpoint
from trainer.model.fusion import fusion_names
from trainer.model.losses import total_loss
from trainer.model.network import NerNetwork, NetworkOutput
from trainer.model.tokenizer import subword_tokenizer
from trainer.plots import plot_training_curve
from trainer.predict import Predictor, RawBatch
from trainer.run_config import RunConfig, TrainConfig, preset_names, resolve_config

log = logging.getLogger(__name__)

SELECTED_ON = {True: "dev", False: "valid"}  # by whether train.dev_share carves a dev slice out of train


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def run_network(predictor: Predictor, batches: Sequence[tuple[list[Example], Batch]]) -> list[RawBatch]:
    return [predictor.raw(batch.inputs, [e.text for e in examples], batch.words) for examples, batch in batches]


def given_set(examples: Sequence[Example]) -> SetToCarry:
    """Examples handed to :func:`train` by a caller that names no files for them."""
    return SetToCarry(examples=list(examples), origins=[DataOrigin(path="given to trainer.train", posts=len(examples))])


@dataclass
class TrainResult:
    out: Path
    metrics: dict[str, Any]


def build_optimizer(module: nn.Module, config: TrainConfig, total_steps: int):
    """AdamW with the learning rate by part (``text_encoder.`` parameters at ``encoder_lr``, ``vision_encoder.`` at
    ``vision_lr`` or else ``encoder_lr``, ``crf.`` at ``crf_lr`` without weight decay, the rest at ``lr``) and a
    linear warm-up, then linear decay to 10%."""
    rates = {
        "text_encoder.": config.encoder_lr,
        "vision_encoder.": config.vision_lr or config.encoder_lr,
        "crf.": config.crf_lr,
        "": config.lr,  # every other parameter
    }
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in rates}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:  # frozen (train.freeze_word_embeddings, train.freeze_vision_encoder)
            continue
        groups[next(prefix for prefix in rates if name.startswith(prefix))].append(parameter)
    optimizer = torch.optim.AdamW(
        [
            {"params": groups[prefix], "lr": rate, **({"weight_decay": 0.0} if prefix == "crf." else {})}
            for prefix, rate in rates.items()
        ],
        weight_decay=config.weight_decay,
    )
    warmup = max(1, int(config.warmup * total_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1 - 0.9 * (step - warmup) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def chunks(items: Sequence[Example], size: int) -> list[list[Example]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def epoch_batches(examples: Sequence[Example], settings: TrainConfig, rng: np.random.Generator) -> list[list[Example]]:
    """One epoch's batches: shuffled, length-sorted within windows of ``length_window`` batches, batch order
    shuffled."""
    shuffled = [examples[i] for i in rng.permutation(len(examples))]
    if settings.length_window == 1:
        return chunks(shuffled, settings.batch_size)
    batches = [
        batch
        for window in chunks(shuffled, settings.batch_size * settings.length_window)
        for batch in chunks(sorted(window, key=lambda example: len(example.text)), settings.batch_size)
    ]
    return [batches[i] for i in rng.permutation(len(batches))]


def in_fp32(output: NetworkOutput) -> NetworkOutput:
    """``output`` with its tensors in fp32, so that the losses (the CRF's log-partition above all) are computed in
    full precision after a bfloat16 forward pass."""

    def fp32(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        return {name: fp32(item) for name, item in value.items()} if isinstance(value, dict) else value

    return NetworkOutput(**{field.name: fp32(getattr(output, field.name)) for field in fields(output)})


def _train_epoch(
    network: NerNetwork, encoder: ExampleEncoder, batches: tqdm, optimizer, scheduler, config: RunConfig, last_f1: float
) -> tuple[float, dict[str, float]]:
    """One pass over the training batches (a tqdm bar, showing loss and the last selection F1) → mean loss and parts."""
    network.train()
    losses: list[float] = []
    parts_sum: dict[str, float] = {}
    for chunk in batches:
        batch = encoder.encode(chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.bf16_autocast):
            output = network.encode(**batch.inputs)
        output = in_fp32(output)
        masks = batch.inputs["word_mask"], batch.inputs["image_mask"]
        loss, parts = total_loss(config.loss, network, output, batch.gold_targets, *masks)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + value
        batches.set_postfix(loss=f"{np.mean(losses):.3f}", selection_f1=f"{last_f1:.3f}")
    return float(np.mean(losses)), {name: value / len(losses) for name, value in parts_sum.items()}


@dataclass
class Candidate:
    """Weights that may be kept at the end of a run, with their scores."""

    name: str  # "best_epoch" or "average_last_K"
    epochs: list[int]
    state: dict[str, torch.Tensor]
    selection_f1: float  # on the dev slice (or valid, without one)
    valid_f1: float | None = None
    valid_f1_by_file: dict[str, float] | None = None

    def record(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "selection_f1": self.selection_f1,
            "valid_f1": self.valid_f1,
            "valid_f1_by_file": self.valid_f1_by_file,
        }


def reports_by_file(
    examples: Sequence[Example], predictions: Sequence[PostPrediction], files: Sequence[DataOrigin]
) -> dict[str, EvaluationReport]:
    """One report per file of a set concatenated from ``files`` (their post counts, in order)."""
    if sum(origin.posts for origin in files) != len(examples):
        raise ValueError("the valid files' post counts do not add up to the valid examples")
    reports, start = {}, 0
    for origin in files:
        end = start + origin.posts
        reports[origin.path] = build_report(examples[start:end], predictions[start:end]).report
        start = end
    return reports


def train(
    config: RunConfig,
    train_examples: Sequence[Example],
    valid_examples: Sequence[Example],
    out: Path,
    progress: bool = True,
    init_from: Path | None = None,
    reference: SetToCarry | None = None,
    replay: SetToCarry | None = None,
    valid_files: Sequence[DataOrigin] = (),
) -> TrainResult:
    """Train, select and calibrate, and write the checkpoint to ``out``.

    With ``train.dev_share`` > 0 a dev slice of the training examples (by a hash of their words,
    :func:`trainer.data.split.carve_dev`) is not trained on: it selects the epoch, stops early and calibrates, and
    valid is only scored, an honest estimate. With 0, valid does all of that. With ``train.average_last`` = k ≥ 2
    the mean of the last k epochs' weights competes with the best epoch on the selection set.

    ``init_from`` fine-tunes that checkpoint: its network (architecture and weights) is the starting point, so
    ``config.model`` is replaced by the checkpoint's; the ``train`` and ``loss`` sections still apply.

    ``valid_files`` (the files valid was read from, in order, with their post counts) has valid also scored per
    file, for each candidate and the kept weights.

    The checkpoint carries a reference set (default: the valid examples) and a replay sample of ``replay``
    (default: the training examples) for later retraining (:mod:`trainer.data.carried`).
    """
    if not train_examples or not valid_examples:
        raise ValueError("training needs labeled train and valid examples")
    if any(example.tags is None for example in [*train_examples, *valid_examples]):
        raise ValueError("training needs labeled examples (tags) in both train and valid")
    out = Path(out)
    settings = config.train
    held_out = settings.dev_share > 0
    fit_examples, selection_examples = (
        carve_dev(train_examples, settings.dev_share) if held_out else (list(train_examples), list(valid_examples))
    )
    if not fit_examples or not selection_examples:
        raise ValueError(f"train.dev_share {settings.dev_share} leaves no training or no dev posts")
    seed_everything(config.seed, settings.threads)
    if settings.bf16_autocast and not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # noqa: SLF001 (no public check)
        # Without bf16 arithmetic (avx512_bf16, AMX) autocast emulates it, slower than fp32: train in fp32, and the
        # configuration saved with the checkpoint says so.
        log.warning("this CPU has no bf16 arithmetic: train.bf16_autocast is ignored, training in fp32")
        settings = settings.model_copy(update={"bf16_autocast": False})
        config = config.model_copy(update={"train": settings})
    started = time.perf_counter()

    if init_from is None:
        network, tokenizer, model_config = NerNetwork.build(config.model)
    else:
        network, tokenizer, model_config, _ = load_checkpoint(Path(init_from))
    config = config.model_copy(update={"model": model_config})
    if settings.freeze_word_embeddings:
        network.text_encoder.model.get_input_embeddings().weight.requires_grad_(False)
    if settings.freeze_vision_encoder and network.vision_encoder is not None:  # a text-only network has none
        network.vision_encoder.requires_grad_(False)
    preprocessor = Preprocessor.from_config(model_config, subword_tokenizer(tokenizer))
    encoder = ExampleEncoder(
        preprocessor,
        network.scheme,
        model_config.max_images,
        annotates_boxes=any(example.boxes for example in fit_examples),
    )
    steps_per_epoch = -(-len(fit_examples) // settings.batch_size)
    optimizer, scheduler = build_optimizer(network, settings, steps_per_epoch * settings.epochs)
    model_ref = ModelRef(name="postlens", version="training")

    def encoded(examples: Sequence[Example]) -> list[tuple[list[Example], Batch]]:
        return [(chunk, encoder.encode(chunk)) for chunk in chunks(examples, settings.eval_batch_size)]

    selection_batches = encoded(selection_examples)

    def predict(batches: Sequence[tuple[list[Example], Batch]]) -> tuple[list[RawBatch], list[PostPrediction]]:
        """The network's raw outputs on ``batches`` and their predictions (uncalibrated: the entities are the same)."""
        decoder = Decoder.from_config(model_config, network.crf.numpy_params(), model_ref)
        raws = run_network(Predictor(network, preprocessor, decoder), batches)
        return raws, decode_all(raws, decoder)

    def score(batches: Sequence[tuple[list[Example], Batch]]) -> EvaluationReport:
        return build_report([example for chunk, _ in batches for example in chunk], predict(batches)[1]).report

    history: list[dict[str, Any]] = []
    best: Candidate | None = None
    recent: deque[dict[str, torch.Tensor]] = deque(maxlen=max(1, settings.average_last))
    stale, last_f1 = 0, 0.0
    shuffler = np.random.default_rng(config.seed)
    for epoch in range(1, settings.epochs + 1):
        batches = tqdm(
            epoch_batches(fit_examples, settings, shuffler),
            desc=f"epoch {epoch}/{settings.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        loss, parts = _train_epoch(network, encoder, batches, optimizer, scheduler, config, last_f1)
        report = score(selection_batches)
        last_f1 = report.entity.f1
        record = {
            "epoch": epoch,
            "loss": loss,
            "loss_parts": parts,
            "selection_f1": report.entity.f1,
            "selection_grounding": report.grounding.accuracy if report.grounding else None,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if progress:
            grounding = (
                f"  grounding {record['selection_grounding']:.3f}" if record["selection_grounding"] is not None else ""
            )
            tqdm.write(f"epoch {epoch}: loss {loss:.3f}  {SELECTED_ON[held_out]} F1 {report.entity.f1:.3f}{grounding}")
        state = copy.deepcopy(network.state_dict())
        recent.append(state)
        if best is None or report.entity.f1 > best.selection_f1:
            best, stale = Candidate("best_epoch", [epoch], state, report.entity.f1), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    train_seconds = time.perf_counter() - started
    if best is None:
        raise ValueError(f"train.epochs is {settings.epochs}: no epoch ran")

    candidates = [best]
    if settings.average_last >= 2 and len(recent) >= 2:
        averaged = average_states(recent)
        network.load_state_dict(averaged)
        epochs = [record["epoch"] for record in history[-len(recent) :]]
        f1 = score(selection_batches).entity.f1
        candidates.append(Candidate(f"average_last_{len(recent)}", epochs, averaged, f1))
    # The average wins ties: the same selection score from weights less tied to one epoch.
    kept = max(reversed(candidates), key=lambda candidate: candidate.selection_f1)
    valid_batches = encoded(valid_examples) if held_out else selection_batches
    valid_raws: list[RawBatch] = []
    for candidate in [*(c for c in candidates if c is not kept), kept]:  # the kept weights last: they stay loaded
        network.load_state_dict(candidate.state)
        valid_raws, predictions = predict(valid_batches)  # each from the same run: what selection cannot see
        candidate.valid_f1 = build_report(valid_examples, predictions).report.entity.f1
        by_file = reports_by_file(valid_examples, predictions, valid_files) if valid_files else {}
        candidate.valid_f1_by_file = {path: report.entity.f1 for path, report in by_file.items()} or None

    selection_raws = predict(selection_batches)[0] if held_out else valid_raws
    decoder = Decoder.from_config(model_config, network.crf.numpy_params(), model_ref)
    grounds = network.fusion.grounds and encoder.annotates_boxes
    model_config, calibrated = calibrate(model_config, selection_raws, selection_examples, decoder, grounds)
    config = config.model_copy(update={"model": model_config})
    final_decoder = Decoder.from_config(model_config, network.crf.numpy_params(), model_ref)
    selection_report = build_report(selection_examples, decode_all(selection_raws, final_decoder)).report
    valid_predictions = decode_all(valid_raws, final_decoder)
    valid_report = build_report(valid_examples, valid_predictions).report
    valid_by_file = reports_by_file(valid_examples, valid_predictions, valid_files) if valid_files else {}
    version = save_checkpoint(out, config.model_dump(mode="json"), network, tokenizer)
    carried = carry_training_data(
        out,
        reference or given_set(valid_examples),
        replay or given_set(train_examples),
        settings.replay_record,
        config.seed,
    )
    metrics = {
        "preset": config.preset,
        "strategy": model_config.fusion.name,
        "version": version,
        "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
        "selected_on": SELECTED_ON[held_out],
        "trained_posts": len(fit_examples),
        "selection_posts": len(selection_examples),
        "epochs_run": len(history),
        "best_epoch": best.epochs[0],
        "kept": kept.name,
        "candidates": {candidate.name: candidate.record() for candidate in candidates},
        "train_seconds": train_seconds,
        "calibration": calibrated,
        "carried": carried.model_dump(),
        "dev": selection_report.to_json() if held_out else None,
        "valid": valid_report.to_json(),
        "valid_by_file": {path: report.to_json() for path, report in valid_by_file.items()} or None,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_training_curve(history, out / "training_curve.png", f"{config.preset} / {model_config.fusion.name}")
    return TrainResult(out=out, metrics=metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help=f"one of {', '.join(preset_names())}, or a YAML path")
    parser.add_argument(
        "--strategy", choices=fusion_names(), help="fusion strategy (overrides the preset's model.fusion.name)"
    )
    parser.add_argument(
        "--train", type=Path, nargs="+", help="labeled JSONL or CoNLL .txt file(s) (default: the preset's data.train)"
    )
    parser.add_argument(
        "--valid", type=Path, nargs="+", help="labeled JSONL or CoNLL .txt file(s) (default: the preset's data.valid)"
    )
    parser.add_argument("--images", type=Path, help="image dir for CoNLL data (looked up by IMGID)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint dir to write")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        config = resolve_config(args.preset, args.strategy, args.overrides)
    except ValueError as error:
        parser.error(str(error))
    if (args.train is None or args.valid is None) and config.data is None:
        parser.error(f"preset {config.preset!r} names no data: give --train and --valid")
    # Paths given here are the caller's (relative to the working directory); the preset's are under the shared data.
    train_set = load_with_origins(
        [path.resolve() for path in args.train] if args.train else config.named_data.train, args.images
    )
    valid_set = load_with_origins(
        [path.resolve() for path in args.valid] if args.valid else config.named_data.valid, args.images
    )
    result = train(
        config,
        train_set.examples,
        valid_set.examples,
        args.out,
        reference=valid_set,
        replay=train_set,
        valid_files=valid_set.origins,
    )
    metrics = result.metrics
    dev = f"dev entity F1 {metrics['dev']['entity']['f1']:.3f}, " if metrics["dev"] else ""
    per_file = ", ".join(
        f"{Path(path).parent.name}/{Path(path).name} {report['entity']['f1']:.3f}"
        for path, report in (metrics["valid_by_file"] or {}).items()
    )
    print(
        f"{config.preset}/{config.model.fusion.name}: {dev}valid entity F1 {metrics['valid']['entity']['f1']:.3f} "
        f"({per_file}; kept {metrics['kept']}, best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, "
        f"{metrics['train_seconds']:.0f} s) → {result.out}"
    )


if __name__ == "__main__":
    main()
