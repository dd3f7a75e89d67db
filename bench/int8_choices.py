"""What to quantize: ``python -m bench.int8_choices [--model DIR]`` (writes ``reports/int8_choices.md``, which
``bench.serving`` copies into ``reports/serving.md`` as "int8 choices").

1. Sensitivity, on training tweets (never valid): each Linear of the text encoder quantized alone (ONNX Runtime's
   dynamic quantization simulated in PyTorch); how far the network's emissions move from fp32's (relative L2 error
   over the words) and how many words' best tag changes.
2. Candidates, quantized by ONNX Runtime: the text encoder but its k most sensitive Linears (with and without
   attention's activation × activation products), one of them static QDQ calibrated on the same training tweets,
   and :data:`trainer.quantize.DEFAULT_SCHEME`; for each, the share of the entities of both valid splits that int8
   and fp32 both find, the entity F1 difference, and in-process posts/s (one thread, length batches, candidates
   alternating) against fp32.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from tqdm import tqdm

from deploy.demo import default_checkpoint
from postlens.runtime.exported import INT8_ONNX_FILE, ONNX_FILE, ExportedModel
from postlens.runtime.images import empty_images, stack_images
from postlens.schemas import ModelRef
from postlens.settings import get_settings
from trainer.data.conll import read_conll
from trainer.data.load import load_examples
from trainer.evaluate import build_report, entity_agreement, entity_sets, predict_all
from trainer.export import export_model
from trainer.model.checkpoint import load_checkpoint
from trainer.predict import ExportedPredictor
from trainer.quantize import DEFAULT_SCHEME, Int8Scheme, quantize_network, without_recorded_shapes

REPORT = Path(__file__).resolve().parent.parent / "reports" / "int8_choices.md"
SPLITS = ("twitter2015", "twitter2017")
AGREEMENT_TARGET = 0.99
F1_TOLERANCE_PT = 0.3
BATCH = 32
# The most sensitive Linears kept in fp32, per candidate: with attention's activation × activation products in int8
# (as every MatMul of the text encoder), and with only weight MatMuls in int8.
KEPT_COUNTS = (8, 12, 16, 20)
WEIGHTS_ONLY_KEPT_COUNTS = (0, 6, 12)
STATIC_KEPT = 12


@dataclass(frozen=True)
class Sensitivity:
    module: str
    relative_error: float  # ‖int8 − fp32‖ / ‖fp32‖ of the emissions over real words
    flipped: float  # share of words whose best tag changes


@dataclass
class Candidate:
    label: str
    file: Path
    quantized: int = 0  # MatMuls in int8
    agreement: dict[str, float] | None = None
    f1_delta_pt: dict[str, float] | None = None
    posts_per_s: float = 0.0

    @property
    def meets(self) -> bool:
        assert self.agreement is not None and self.f1_delta_pt is not None
        return min(self.agreement.values()) >= AGREEMENT_TARGET and all(
            abs(delta) <= F1_TOLERANCE_PT for delta in self.f1_delta_pt.values()
        )


def train_texts(per_split: int, seed: int = 0) -> list[str]:
    """A random sample of both splits' training tweets, interleaved."""
    rng = np.random.default_rng(seed)
    root = get_settings().shared_data_dir
    samples = []
    for split in SPLITS:
        texts = [example.text for example in read_conll(root / split / "train.txt")[0]]
        samples.append([texts[i] for i in rng.choice(len(texts), size=per_split, replace=False)])
    return [text for pair in zip(*samples, strict=True) for text in pair]


def encoded_batches(model: ExportedModel, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Text-only batches of similar length (little padding, as length batching serves them)."""
    ordered = sorted(texts, key=len)
    batches = []
    for first in range(0, len(ordered), BATCH):
        chunk = ordered[first : first + BATCH]
        images, mask = stack_images([empty_images(0, model.image_size)] * len(chunk), model.image_size)
        batches.append(model.preprocessor.encode(chunk, images[:, :0], mask[:, :0])[0])
    return batches


def emissions(model: ExportedModel, batches: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [model.run(inputs)[0] for inputs in batches]


def sensitivities(checkpoint: Path, batches: Sequence[dict[str, np.ndarray]]) -> list[Sensitivity]:
    """Each Linear of the text encoder quantized alone as ONNX Runtime's dynamic quantization does it (int8 weights
    per output channel, uint8 activations with a per-batch range), simulated in PyTorch; most sensitive first."""
    torch.set_num_threads(1)  # a two-thread OpenMP pool collapses whenever another process holds a core
    network = load_checkpoint(checkpoint)[0].eval()
    tensors = [{name: torch.from_numpy(value) for name, value in inputs.items()} for inputs in batches]
    masks = [inputs["word_mask"].astype(bool) for inputs in batches]

    def emissions() -> list[np.ndarray]:
        with torch.no_grad():
            return [network(**inputs)[0].numpy() for inputs in tensors]

    reference = emissions()
    linears = [
        (name, module)
        for name, module in network.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(Int8Scheme().scope or "")
    ]
    results = []
    for name, module in tqdm(linears, desc="sensitivity"):
        weight = module.weight.data.clone()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.5
        module.weight.data = (weight / scale).round().clamp(-128, 127) * scale
        hook = module.register_forward_pre_hook(lambda _, args: (fake_uint8(args[0]), *args[1:]))
        got = emissions()
        hook.remove()
        module.weight.data = weight
        diff = sum(float(np.square(g - r)[m].sum()) for g, r, m in zip(got, reference, masks, strict=True))
        norm = sum(float(np.square(r)[m].sum()) for r, m in zip(reference, masks, strict=True))
        flips = sum(int((g.argmax(-1) != r.argmax(-1))[m].sum()) for g, r, m in zip(got, reference, masks, strict=True))
        results.append(Sensitivity(name, (diff / norm) ** 0.5, flips / sum(int(m.sum()) for m in masks)))
    return sorted(results, key=lambda s: s.relative_error, reverse=True)


def fake_uint8(x: torch.Tensor) -> torch.Tensor:
    """``x`` through uint8 with its own range (including 0), as ONNX Runtime's DynamicQuantizeLinear."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero = round(-low / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def kept(modules: Sequence[str]) -> tuple[str, ...]:
    """:attr:`Int8Scheme.kept_fp32` patterns of exactly these modules (a node's path ends a module with ":")."""
    return tuple(re.escape(module) + ":" for module in modules)


class TweetReader(CalibrationDataReader):
    """Encoded training tweets for static quantization's calibration."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], names: Sequence[str]) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            [{name: inputs[name] for name in names} for inputs in batches]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_static_qdq(
    fp32: Path, out: Path, nodes: Sequence[str], batches: Sequence[dict[str, np.ndarray]], names: Sequence[str]
) -> None:
    with without_recorded_shapes(fp32) as plain:
        quantize_static(
            plain,
            out,
            TweetReader(batches, names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=list(nodes),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def version_with(version_dir: Path, network: Path, workdir: Path, name: str) -> Path:
    """A version folder like ``version_dir`` whose int8 network is ``network``."""
    folder = workdir / "versions" / name
    folder.mkdir(parents=True)
    for entry in version_dir.iterdir():
        if entry.name != INT8_ONNX_FILE:
            (folder / entry.name).symlink_to(entry)
    (folder / INT8_ONNX_FILE).symlink_to(network)
    return folder


def score(candidates: Sequence[Candidate], version_dir: Path, workdir: Path) -> None:
    """Each candidate's agreement with fp32 and F1 difference on both valid splits."""
    root = get_settings().shared_data_dir
    folders = [version_with(version_dir, c.file, workdir, f"score-{i}") for i, c in enumerate(candidates)]
    for split in SPLITS:
        examples = load_examples(root / split / "valid.txt")
        fp32 = predict_all(ExportedPredictor.load(version_dir, "fp32"), examples, BATCH)
        fp32_f1 = build_report(examples, fp32).report.entity.f1
        for candidate, folder in zip(candidates, folders, strict=True):
            int8 = predict_all(ExportedPredictor.load(folder, "int8"), examples, BATCH)
            f1 = build_report(examples, int8).report.entity.f1
            shared = entity_agreement(entity_sets(fp32), entity_sets(int8))
            candidate.agreement = {**(candidate.agreement or {}), split: shared}
            candidate.f1_delta_pt = {**(candidate.f1_delta_pt or {}), split: (f1 - fp32_f1) * 100}
            print(f"{split} {candidate.label}: agreement {candidate.agreement[split]:.2%}, "
                  f"Δ F1 {candidate.f1_delta_pt[split]:+.2f} pt", flush=True)  # fmt: skip


def throughput(folders: dict[str, Path], texts: Sequence[str], seconds: float) -> dict[str, float]:
    """In-process posts/s of ``ExportedModel.predict`` (one thread, length batches) per folder, alternating."""
    ref = ModelRef(name="bench", version="1")
    models = {
        label: ExportedModel.load(folder, ref, intra_op_threads=1, precision="fp32" if label == "fp32" else "int8")
        for label, folder in folders.items()
    }
    size = next(iter(models.values())).image_size
    images, mask = stack_images([empty_images(0, size)] * BATCH, size)
    spent = dict.fromkeys(models, 0.0)
    posts = dict.fromkeys(models, 0)
    first = 0
    deadline = time.perf_counter() + seconds * len(models)
    while time.perf_counter() < deadline or min(posts.values()) < 4 * BATCH:
        chunk = [texts[(first + i) % len(texts)] for i in range(BATCH)]
        first += BATCH
        for label, model in models.items():
            started = time.perf_counter()
            model.predict(chunk, images, mask)
            spent[label] += time.perf_counter() - started
            posts[label] += BATCH
    return {label: posts[label] / spent[label] for label in models}


def candidates(
    fp32: Path, ranking: Sequence[Sensitivity], batches: Sequence[dict[str, np.ndarray]], workdir: Path
) -> list[Candidate]:
    """The text encoder in int8 but its ``k`` most sensitive Linears, for several ``k``, with and without attention's
    activation × activation products; one set calibrated statically on training tweets; and the exporter's default."""
    model = onnx.load(str(fp32), load_external_data=False)
    names = [graph_input.name for graph_input in model.graph.input]
    out = workdir / "candidates"
    out.mkdir()
    made: list[Candidate] = []
    order = [s.module for s in ranking]
    shipped = set(DEFAULT_SCHEME.nodes(model))
    for weights_only, counts in ((False, KEPT_COUNTS), (True, WEIGHTS_ONLY_KEPT_COUNTS)):
        for count in counts:
            scheme = Int8Scheme(kept_fp32=kept(order[:count]), weights_only=weights_only)
            which = "weight MatMuls" if weights_only else "MatMuls"
            label = f"text encoder's {which} but its {count} most sensitive Linears"
            if set(scheme.nodes(model)) == shipped:
                label = f"**{label} (shipped: `trainer.quantize.DEFAULT_SCHEME`)**"
            made.append(Candidate(label, out / f"{len(made)}.onnx", len(scheme.nodes(model))))
            print(f"quantizing: {label}", flush=True)
            quantize_network(fp32, made[-1].file, scheme)
    static = Int8Scheme(kept_fp32=kept(order[:STATIC_KEPT]))
    made.append(Candidate(f"same as {STATIC_KEPT}, static QDQ calibrated on train tweets", out / "static.onnx"))
    made[-1].quantized = len(static.nodes(model))
    print(f"quantizing: {made[-1].label}", flush=True)
    quantize_static_qdq(fp32, made[-1].file, static.nodes(model), batches, names)
    if not any("shipped" in candidate.label for candidate in made):
        made.append(Candidate("trainer.quantize.DEFAULT_SCHEME (shipped)", out / "default.onnx", len(shipped)))
        quantize_network(fp32, made[-1].file)
    return made


def report(ranking: Sequence[Sensitivity], made: Sequence[Candidate], fp32_speed: float, checkpoint: Path) -> str:
    def row(c: Candidate) -> str:
        assert c.agreement is not None and c.f1_delta_pt is not None
        return (
            f"| {c.label} | {c.quantized} | "
            + " | ".join(f"{c.agreement[s]:.2%}" for s in SPLITS)
            + " | "
            + " | ".join(f"{c.f1_delta_pt[s]:+.2f}" for s in SPLITS)
            + f" | {c.posts_per_s:.1f} | {c.posts_per_s / fp32_speed:.2f}× | {'yes' if c.meets else 'no'} |"
        )

    lines = [
        f"`python -m bench.int8_choices` — checkpoint `{checkpoint}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Candidates (dynamic quantization, int8 weights per channel, unless said): entities int8 and fp32 both find ÷ "
        f"either finds, and int8 − fp32 entity F1, on the valid splits (target ≥ {AGREEMENT_TARGET:.0%} and "
        f"≤ {F1_TOLERANCE_PT} pt on both); in-process posts/s of `ExportedModel.predict` (one thread, length "
        f"batches of {BATCH} training tweets, candidates alternating): fp32 {fp32_speed:.1f} posts/s.",
        "",
        "| int8 scheme | MatMuls in int8 | agreement 2015 | agreement 2017 | Δ F1 2015 (pt) | Δ F1 2017 (pt) | posts/s "
        "| vs fp32 | meets both |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(row(c) for c in made),
        "",
        "Sensitivity, on training tweets (never valid): each MatMul quantized alone; the emissions' relative L2 error "
        "against fp32 and the share of words whose best tag changes (the 20 most sensitive Linears of the text "
        "encoder; ONNX Runtime's dynamic quantization simulated in PyTorch: int8 weights per output channel, uint8 "
        "activations with the batch's range).",
        "",
        "| MatMul (module) | relative error | words flipped |",
        "|---|---:|---:|",
        *(f"| {s.module} | {s.relative_error:.4f} | {s.flipped:.3%} |" for s in ranking[:20]),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_choices", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint dir (default: the default served model)")
    parser.add_argument(
        "--train-tweets", type=int, default=192, help="training tweets per split (sensitivity, calibration)"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="in-process timing per candidate")
    args = parser.parse_args(argv)
    settings = get_settings()
    checkpoint = args.model or default_checkpoint(settings, settings.home / "demo")
    with tempfile.TemporaryDirectory(prefix="postlens-int8-") as tmp:
        workdir = Path(tmp)
        version_dir = export_model(checkpoint, workdir / "export", precision="fp32")
        fp32 = version_dir / ONNX_FILE
        texts = train_texts(args.train_tweets)
        batches = encoded_batches(ExportedModel.load(version_dir, ModelRef(name="bench", version="1")), texts)
        ranking = sensitivities(checkpoint, batches)
        REPORT.with_suffix(".json").write_text(json.dumps([s.__dict__ for s in ranking], indent=1) + "\n")
        for s in ranking[:16]:
            print(f"{s.relative_error:.4f} {s.flipped:.3%} {s.module}", flush=True)
        made = candidates(fp32, ranking, batches, workdir)
        score(made, version_dir, workdir)
        folders = {c.label: version_with(version_dir, c.file, workdir, f"speed-{i}") for i, c in enumerate(made)}
        speeds = throughput({"fp32": version_dir, **folders}, texts, args.seconds)
        for candidate in made:
            candidate.posts_per_s = speeds[candidate.label]
        REPORT.write_text(report(ranking, made, speeds["fp32"], checkpoint))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
