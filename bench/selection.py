"""Section (c) of ``python -m bench.model``: held-out selection (issue 22) — the ``twitter`` preset's recipe over
several seeds, valid entity F1 per split as the mean ± sd, and weight averaging against the best epoch.

The recipe selects the epoch, stops early and calibrates on a dev slice carved out of train (``train.dev_share``),
so the valid splits are scored only, an honest estimate. Each run scores both of its candidates on valid — the best
epoch on dev and the mean of the last ``train.average_last`` epochs' weights — so the comparison comes from the
same runs, at no extra training. Each seed's checkpoint is kept in ``--work`` (``twitter-seed-N``) with the
configuration it was trained with; a later run reuses it when that is the same.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import twitter
from bench.twitter import PRESET, dataset_name
from trainer.data.carried import SetToCarry
from trainer.data.load import load_with_origins
from trainer.run_config import resolve_config

HEADING = "## (c) Held-out selection (issue 22)"
SEEDS = (13, 14, 15)
BEST_EPOCH = "best_epoch"


@dataclass
class SeedRun:
    seed: int
    metrics: dict

    def kept_f1(self, split: str) -> float:
        return next(
            report["entity"]["f1"] for path, report in self.metrics["valid_by_file"].items() if split_of(path) == split
        )

    def candidate_f1(self, candidate: str, split: str) -> float:
        by_file = self.metrics["candidates"][candidate]["valid_f1_by_file"]
        return next(f1 for path, f1 in by_file.items() if split_of(path) == split)

    @property
    def average(self) -> str:
        return next(name for name in self.metrics["candidates"] if name != BEST_EPOCH)


def split_of(path: str) -> str:
    return dataset_name(Path(path))


def train_or_reuse(seed: int, work: Path, train_set: SetToCarry, valid_set: SetToCarry) -> SeedRun:
    """The preset trained with ``seed`` (``python -m trainer.train --preset twitter --set seed=N``), or reused."""
    _, metrics = twitter.train_or_reuse(
        f"seed-{seed}", [f"seed={seed}"], work, train_set.examples, valid_set.examples, valid_set.origins
    )
    return SeedRun(seed, metrics)


def run_selection(work: Path, seeds: Sequence[int] = SEEDS) -> list[SeedRun]:
    data = resolve_config(PRESET).named_data
    train_set, valid_set = load_with_origins(data.train), load_with_origins(data.valid)
    runs = [train_or_reuse(seed, work, train_set, valid_set) for seed in seeds]
    for run in runs:
        splits = "  ".join(f"{split} {run.kept_f1(split):.4f}" for split in splits_of(run))
        print(f"selection seed {run.seed}: kept {run.metrics['kept']}  {splits}", flush=True)
    return runs


def splits_of(run: SeedRun) -> list[str]:
    return [split_of(path) for path in run.metrics["valid_by_file"]]


def mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def markdown(runs: list[SeedRun], command: str) -> str:
    config = resolve_config(PRESET)
    settings = config.train
    splits = splits_of(runs[0])
    lines = [
        HEADING,
        "",
        f"Command: `{command}` (each seed: `python -m trainer.train --preset {PRESET} --set seed=N --out DIR`)",
        "",
        f"Recipe (the `{PRESET}` preset's default, one training run): {settings.epochs} epochs"
        f"{' (forward passes under bf16 autocast)' if settings.bf16_autocast else ''} on "
        f"{', '.join(str(p) for p in config.named_data.train)} less a {settings.dev_share:.0%} dev slice "
        f"({runs[0].metrics['selection_posts']} posts, by a hash of their words; trained on "
        f"{runs[0].metrics['trained_posts']}), which selects the epoch, stops early and calibrates; the mean of the "
        f"last {settings.average_last} epochs' weights is kept when it scores at least as well on dev as the best "
        "epoch. The valid splits are never looked at in training: their scores below are held-out estimates "
        "(entity F1, the checkpoint as saved, calibrated).",
        "",
        "| seed | kept | dev F1 | " + " | ".join(f"{split} valid F1" for split in splits) + " | train time |",
        "|---|---|---|" + "---|" * len(splits) + "---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.seed} | {run.metrics['kept']} | {run.metrics['dev']['entity']['f1']:.4f} | "
            + " | ".join(f"{run.kept_f1(split):.4f}" for split in splits)
            + f" | {run.metrics['train_seconds'] / 60:.1f} min |"
        )
    lines.append(
        f"| **mean ± sd** | | {mean_sd([run.metrics['dev']['entity']['f1'] for run in runs])} | "
        + " | ".join(f"**{mean_sd([run.kept_f1(split) for run in runs])}**" for split in splits)
        + " | |"
    )
    lines += [
        "",
        "Weight averaging against the best epoch, both scored from the same run (valid entity F1; dev F1 is what "
        "chose between them):",
        "",
        "| seed | candidate | epochs | dev F1 | " + " | ".join(f"{split} valid F1" for split in splits) + " |",
        "|---|---|---|---|" + "---|" * len(splits),
    ]
    for run in runs:
        for name, candidate in run.metrics["candidates"].items():
            epochs = ", ".join(map(str, candidate["epochs"]))
            lines.append(
                f"| {run.seed} | {name} | {epochs} | {candidate['selection_f1']:.4f} | "
                + " | ".join(f"{run.candidate_f1(name, split):.4f}" for split in splits)
                + " |"
            )
    for name in (BEST_EPOCH, runs[0].average):
        dev = mean_sd([run.metrics["candidates"][name]["selection_f1"] for run in runs])
        lines.append(
            f"| **mean ± sd** | {name} | | {dev} | "
            + " | ".join(f"{mean_sd([run.candidate_f1(name, split) for run in runs])}" for split in splits)
            + " |"
        )
    average = runs[0].average
    dev_gain = [
        run.metrics["candidates"][average]["selection_f1"] - run.metrics["candidates"][BEST_EPOCH]["selection_f1"]
        for run in runs
    ]
    lines.append(
        f"| **{average} − {BEST_EPOCH}** (paired) | | | {mean_sd(dev_gain)} | "
        + " | ".join(
            mean_sd([run.candidate_f1(average, split) - run.candidate_f1(BEST_EPOCH, split) for run in runs])
            for split in splits
        )
        + " |"
    )
    lines.append("")
    return "\n".join(lines) + "\n"


def figures(runs: list[SeedRun]) -> list[dict]:
    return [
        {
            "seed": run.seed,
            "kept": run.metrics["kept"],
            "dev_f1": run.metrics["dev"]["entity"]["f1"],
            "valid_f1": {split: run.kept_f1(split) for split in splits_of(run)},
            "candidates": {
                name: {split: run.candidate_f1(name, split) for split in splits_of(run)}
                for name in run.metrics["candidates"]
            },
            "train_seconds": run.metrics["train_seconds"],
        }
        for run in runs
    ]
