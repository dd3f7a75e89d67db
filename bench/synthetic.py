"""Section (b) of the model benchmark: the fusion strategies and the seed papers' component ablations on the
synthetic suite (``trainer.synth``), each trained with the same seed, data and budget on the ``tiny`` preset.

Per variant: entity F1 overall and per subset, grounding accuracy, image–text alignment recall@1, ECE of entity
confidences (test split), parameters (all, and the fusion's own), training time per epoch (validation included)
and, for the strategies, served posts/s: the checkpoint exported (``trainer.export``) and run by
``postlens.runtime.exported`` — the code Triton's entry model runs — on one ONNX Runtime thread, preprocessing and
decoding included. (Ablations are not exported: an ONNX export takes about half a minute here, and a switched-off
component only removes work.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postlens.runtime.exported import ExportedModel
from postlens.runtime.images import load_images, stack_images
from postlens.schemas import MAX_MODEL_IMAGES, ModelRef
from trainer.data.examples import Example
from trainer.data.load import load_examples
from trainer.evaluate import EvaluationReport, build_report, embed_all, predict_all
from trainer.export import export_model
from trainer.plots import plot_score_panels, plot_scores
from trainer.predict import Predictor
from trainer.run_config import load_preset, preset_names, resolve_config
from trainer.synth import SUBSET_SHARES, generate
from trainer.train import chunks, train

HEADING = "## (b) Synthetic multimodal posts"
PRESET = "tiny"
STRATEGIES = ("text", "late", "early", "cross", "mpcfn", "mgips", "smcl")
SUBSETS = tuple(SUBSET_SHARES)
# The same for every variant: enough for the seed strategies to pick up the image on a few hundred posts.
BUDGET = ("train.epochs=12", "train.patience=4")
SERVING_BATCH = 32  # posts per predict call, as a dynamic batch of the entry model can be
# A subset F1 difference smaller than this is read as "no difference": one entity of ~30 posts' worth.
NOISE_F1 = 0.02


@dataclass(frozen=True)
class Variant:
    strategy: str
    ablation: str = ""  # as the paper names it ("w/o CP"); "" for the strategy as published
    switches: tuple[str, ...] = ()  # the ablation's overrides

    @property
    def name(self) -> str:
        return f"{self.strategy} {self.ablation}" if self.ablation else self.strategy

    @property
    def overrides(self) -> tuple[str, ...]:
        return (*BUDGET, *paper_loss(self.strategy), *self.switches)


def paper_loss(strategy: str) -> tuple[str, ...]:
    """The ``loss`` section of the strategy's paper preset as overrides (MPCFN's Flooding level; the seeds'
    auxiliary weights), so a seed strategy trains with its own objective on the tiny encoders."""
    if strategy not in preset_names():
        return ()

    def flatten(prefix: str, node: Any) -> list[str]:
        if isinstance(node, dict):
            return [item for key, value in node.items() for item in flatten(f"{prefix}.{key}", value)]
        return [f"{prefix}={node}"]

    return tuple(flatten("loss", load_preset(strategy).get("loss", {})))


# The papers' ablation tables (MPCFN Table 2, MGIPS-CL Table 3, SMCL Table 3), named as they name them; MPCFN's
# dynamic gate and SMCL's two losses on their own are not in those tables.
ABLATIONS: dict[str, tuple[Variant, ...]] = {
    "mpcfn": (
        Variant("mpcfn", "w/o CP (correlation gate)", ("model.fusion.correlation_gate=false",)),
        Variant("mpcfn", "w/o dynamic gate", ("model.fusion.dynamic_gate=false",)),
        Variant("mpcfn", "w/o CF (cross-fusion)", ("model.fusion.cross_fusion=false",)),
        Variant("mpcfn", "w/o Flooding", ("loss.flooding=0",)),
    ),
    "mgips": (
        Variant("mgips", "w/o IPS-CL", ("loss.auxiliary.implicit_positive=0",)),
        Variant("mgips", "w/o MGI", ("model.fusion.interweave=false",)),
        Variant("mgips", "w/o Row-grained", ("model.fusion.row_grained=false",)),
        Variant("mgips", "w/o Column-grained", ("model.fusion.column_grained=false",)),
    ),
    "smcl": (
        Variant("smcl", "w/o AE", ("model.fusion.alignment_encoder=false",)),
        Variant("smcl", "w/o RE", ("model.fusion.refinement_encoder=false",)),
        Variant("smcl", "w/o AE+RE", ("model.fusion.alignment_encoder=false", "model.fusion.refinement_encoder=false")),
        Variant("smcl", "w/o IGM", ("model.fusion.image_guidance=false",)),
        Variant("smcl", "w/o L_sim (CMD)", ("loss.auxiliary.similarity=0",)),
        Variant("smcl", "w/o L_diff", ("loss.auxiliary.difference=0",)),
    ),
}


def variants() -> list[Variant]:
    return [Variant(strategy) for strategy in STRATEGIES] + [v for group in ABLATIONS.values() for v in group]


@dataclass
class VariantResult:
    variant: Variant
    report: EvaluationReport
    metrics: dict[str, Any]  # trainer.train's metrics.json
    parameters: int
    fusion_parameters: int
    served_posts_per_second: float | None  # None: not exported

    @property
    def seconds_per_epoch(self) -> float:
        return self.metrics["train_seconds"] / self.metrics["epochs_run"]

    def subset_f1(self, subset: str) -> float:
        if self.report.subsets is None:
            raise ValueError(f"{self.variant.name}: the evaluation has no subsets (the data carries no subset tags)")
        return self.report.subsets[subset].entity.f1

    @property
    def grounding(self) -> float | None:
        return self.report.grounding.accuracy if self.report.grounding else None

    @property
    def recall_at_1(self) -> float | None:
        return self.report.alignment["recall@1"] if self.report.alignment else None

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.variant.strategy,
            "ablation": self.variant.ablation,
            "overrides": list(self.variant.overrides),
            "test": self.report.to_json(),
            "parameters": self.parameters,
            "fusion_parameters": self.fusion_parameters,
            "seconds_per_epoch": self.seconds_per_epoch,
            "epochs_run": self.metrics["epochs_run"],
            "best_epoch": self.metrics["best_epoch"],
            "served_posts_per_second": self.served_posts_per_second,
        }


def served_posts_per_second(version_dir: Path, examples: Sequence[Example]) -> float:
    """Posts/s of the exported model over ``examples`` in batches of SERVING_BATCH (images already decoded), after
    one warm-up batch."""
    exported = ExportedModel.load(version_dir, ModelRef(name="bench", version=version_dir.name), intra_op_threads=1)
    batches = []
    for chunk in chunks(examples, SERVING_BATCH):
        images, mask = stack_images(
            [load_images(e.images, exported.image_size, MAX_MODEL_IMAGES) for e in chunk], exported.image_size
        )
        batches.append(([e.text for e in chunk], images, mask))
    exported.predict(*batches[0])
    started = time.perf_counter()
    for batch in batches:
        exported.predict(*batch)
    return len(examples) / (time.perf_counter() - started)


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    valid: list[Example]
    test: list[Example]

    @classmethod
    def load(cls, data: Path) -> Splits:
        return cls(*(load_examples(data / f"{split}.jsonl") for split in ("train", "valid", "test")))


def run_variant(variant: Variant, splits: Splits, work: Path) -> VariantResult:
    """Train, score on test and, for a strategy as published, export and time serving."""
    model_dir = work / variant.name.replace("/", "").replace(" ", "-")
    trained = train(resolve_config(PRESET, variant.strategy, variant.overrides), splits.train, splits.valid, model_dir)
    predictor = Predictor.load(model_dir)
    predictions = predict_all(predictor, splits.test, batch_size=64)
    report = build_report(splits.test, predictions, embed_all(predictor, splits.test, batch_size=64)).report
    parameters = dict(predictor.network.named_parameters())
    served = (
        None
        if variant.switches
        else served_posts_per_second(export_model(model_dir, model_dir / "repository"), splits.test)
    )
    return VariantResult(
        variant,
        report,
        trained.metrics,
        sum(p.numel() for p in parameters.values()),
        sum(p.numel() for name, p in parameters.items() if name.startswith("fusion.")),
        served,
    )


def run_synthetic(work: Path, posts: int, seed: int) -> list[VariantResult]:
    data = work / "synthetic"
    if not (data / "test.jsonl").is_file():
        generate(data, posts, seed)
    splits = Splits.load(data)
    results = []
    todo = variants()
    for index, variant in enumerate(todo, 1):
        print(f"[{index}/{len(todo)}] synthetic {variant.name}: {' '.join(variant.overrides)}", flush=True)
        started = time.perf_counter()
        results.append(run_variant(variant, splits, work))
        print(f"[{index}/{len(todo)}] {row(results[-1])}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def row(result: VariantResult) -> str:
    report = result.report
    name = result.variant.ablation or f"**{result.variant.strategy}**"
    cells = [
        name,
        _metric(report.entity.f1),
        *(_metric(result.subset_f1(subset)) for subset in SUBSETS),
        _metric(result.grounding),
        _metric(result.recall_at_1),
        _metric(report.ece),
        f"{result.parameters / 1e6:.2f} M / {result.fusion_parameters / 1e3:.0f} k",
        f"{result.seconds_per_epoch:.1f} s",
        "—" if result.served_posts_per_second is None else f"{result.served_posts_per_second:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = [
    "| variant | entity F1 | "
    + " | ".join(f"{subset} F1" for subset in SUBSETS)
    + " | grounding acc. | alignment R@1 | ECE | parameters (all / fusion) | train time / epoch | served posts/s |",
    "|---|---|" + "---|" * len(SUBSETS) + "---|---|---|---|---|---|",
]


def _difference(full: float | None, ablated: float | None) -> float | None:
    return None if full is None or ablated is None else full - ablated


def mechanism_finding(full: VariantResult, ablated: VariantResult) -> str:
    """Where the component helped (the full model better by ≥ NOISE_F1), where it hurt and where it made no
    difference: per subset F1 and grounding accuracy, as measured."""
    scores: dict[str, tuple[float | None, float | None]] = {
        f"{subset} F1": (full.subset_f1(subset), ablated.subset_f1(subset)) for subset in SUBSETS
    }
    scores["grounding"] = (full.grounding, ablated.grounding)
    differences = {name: _difference(*pair) for name, pair in scores.items()}
    helped = [f"{name} {value:+.3f}" for name, value in differences.items() if value is not None and value >= NOISE_F1]
    hurt = [f"{name} {value:+.3f}" for name, value in differences.items() if value is not None and value <= -NOISE_F1]
    neutral = [name for name, value in differences.items() if value is not None and abs(value) < NOISE_F1]
    component = ablated.variant.ablation.removeprefix("w/o ")
    parts = [f"helped on {', '.join(helped)}" if helped else "helped nowhere"]
    if hurt:
        parts.append(f"hurt on {', '.join(hurt)}")
    if neutral:
        parts.append(f"no difference on {', '.join(neutral)}")
    return f"- `{full.variant.strategy}` {component}: " + "; ".join(parts) + "."


def markdown(results: Sequence[VariantResult], command: str, posts: int, seed: int) -> str:
    by_variant = {result.variant: result for result in results}
    lines = [
        f"{HEADING}: fusion strategies and the seed papers' ablations (tiny encoders), test split",
        "",
        f"Command: `{command}`",
        "",
        f"`trainer.synth` with {posts} posts (seed {seed}; subsets {', '.join(SUBSETS)} — `multi_image` posts have",
        "2–4 images of which only one shows the entity, the mechanism the seeds' image gates and multi-image encoders",
        f"are for); preset `{PRESET}`, seed and budget the same for every row ({', '.join(f'`{o}`' for o in BUDGET)});",
        "temperature and grounding threshold fitted on valid. Each seed strategy trains with its paper preset's loss",
        "section (MPCFN: Flooding b = 0.3 on the CRF NLL; MGIPS-CL: IPS-CL + standard CL; SMCL: α = 0.3 CMD,",
        "β = 0.2 difference). Train time per epoch includes the validation pass; served posts/s is the exported model",
        "run by `postlens.runtime.exported` (Triton's entry-model code) on one ONNX Runtime thread,",
        f"batches of {SERVING_BATCH}, preprocessing and decoding included (strategies only: ablations are not",
        "exported). CPU only, 2 shared cores:",
        "times are indicative. Section (a) is text only (the tweet images are not distributed), so the fusion",
        "strategies and their mechanisms are compared here alone.",
        "",
        "### Strategies",
        "",
        *TABLE_HEAD,
        *(row(by_variant[Variant(strategy)]) for strategy in STRATEGIES),
        "",
        "![Synthetic strategies](model_synthetic.png)",
        "",
        "### Component ablations (the papers' tables)",
        "",
        *TABLE_HEAD,
    ]
    for strategy, ablations in ABLATIONS.items():
        lines += [row(by_variant[Variant(strategy)]), *(row(by_variant[variant]) for variant in ablations)]
    lines += [
        "",
        "![Synthetic ablations](model_synthetic_ablations.png)",
        "",
        f"### What each mechanism bought (full model − ablated; |difference| < {NOISE_F1} read as no difference)",
        "",
    ]
    for strategy, ablations in ABLATIONS.items():
        lines += [mechanism_finding(by_variant[Variant(strategy)], by_variant[variant]) for variant in ablations]
    text = by_variant[Variant("text")]
    lines += ["", "Against `text` (per subset F1, strategy − text):", ""]
    for strategy in STRATEGIES[1:]:
        result = by_variant[Variant(strategy)]
        gains = ", ".join(f"{subset} {result.subset_f1(subset) - text.subset_f1(subset):+.3f}" for subset in SUBSETS)
        lines.append(f"- `{strategy}`: {gains}.")
    return "\n".join(lines) + "\n"


def _scores(result: VariantResult) -> list[float]:
    return [result.report.entity.f1, *(result.subset_f1(s) for s in SUBSETS), result.grounding or 0.0]


SCORE_GROUPS = ["entity F1", *(f"{subset} F1" for subset in SUBSETS), "grounding acc."]


def plot(results: Sequence[VariantResult], strategies_path: Path, ablations_path: Path) -> None:
    by_variant = {result.variant: result for result in results}
    series = {strategy: _scores(by_variant[Variant(strategy)]) for strategy in STRATEGIES}
    plot_scores(SCORE_GROUPS, series, strategies_path, "Synthetic test split by fusion strategy (tiny encoders)")
    panels = {
        f"{strategy} and its ablations": {
            "full": _scores(by_variant[Variant(strategy)]),
            **{v.ablation: _scores(by_variant[v]) for v in ablations},
        }
        for strategy, ablations in ABLATIONS.items()
    }
    plot_score_panels(SCORE_GROUPS, panels, ablations_path)
