"""A checkpoint → a new version of the Triton entry model: ``python -m trainer.export --model DIR --repo REPO``.

Writes the version folder that :mod:`postlens.runtime.exported` describes and reads back: the network as ONNX,
checked against PyTorch with ONNX Runtime on several input shapes before anything is written, the CRF arrays, the
tokenizer and config, a model card, and a copy of the one source file ``model_repository/postlens/model.py``.

The folder is assembled under a hidden staging name and renamed into place, so Triton never sees half a version.
If a Triton serving this repository answers, it is asked to load the model again: the new version comes up while
the old one keeps answering (version policy "latest 1").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch.export import Dim

import model_repository
from postlens.runtime.config import ModelConfig
from postlens.runtime.exported import (
    CARD_FILE,
    CONFIG_FILE,
    CPU_PRECISIONS,
    CRF_FILE,
    INPUT_NAMES,
    INT8_ONNX_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    TOKENIZER_DIR,
    TRITON_CODE_FILE,
    TRITON_CONFIG_FILE,
    ExportedModel,
)
from postlens.runtime.preprocess import Preprocessor
from postlens.runtime.word_features import feature_input_names
from postlens.schemas import MAX_MODEL_IMAGES, ModelRef
from postlens.settings import get_settings
from trainer.data.carried import read_carried
from trainer.model.checkpoint import load_checkpoint
from trainer.model.network import NerNetwork
from trainer.model.tokenizer import subword_tokenizer
from trainer.quantize import DEFAULT_PRECISION, quantize_network
from trainer.serving_config import with_cpu_instances, with_parameter, write_gpu_config

# The entry model's committed source (config.pbtxt, model.py): installed with the project (pyproject.toml packages
# model_repository as a namespace package, no __init__.py that would leave a __pycache__ model folder behind), so a
# non-editable install finds it as a clone does.
# Found through the namespace package's own path, not importlib.resources: an editable install adds a path-hook
# entry to that path, which importlib.resources refuses on Python 3.11 ("MultiplexedPath only supports directories").
MODEL_SOURCE = next(
    Path(entry) / "postlens" for entry in model_repository.__path__ if (Path(entry) / "postlens").is_dir()
)
# ONNX Runtime and PyTorch sum in different orders; float32 round-off stays far below this.
PARITY_TOLERANCE = 1e-4
_MODEL_NAME = re.compile(r'^name:\s*"[^"]*"', re.MULTILINE)
_IMAGES_DIMS = re.compile(r'(name:\s*"IMAGES"[^}]*?dims:\s*\[\s*4\s*,\s*)(\d+)(\s*,\s*)(\d+)(\s*,\s*3\s*\])')


# What a Triton in poll mode answers a load request with (it loads new versions itself).
_POLLING_REFUSAL = "explicit model load / unload is not allowed if polling is enabled"


class ExportError(RuntimeError):
    """The export was refused; nothing was written to the repository."""


# --------------------------------------------------------------------------------------------------------------
# Writing a version folder
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityCase:
    batch: int
    images: int  # image slots N fed to the network
    subtokens: int
    words: int
    max_abs_error: float


def next_version(model_root: Path) -> int:
    versions = (
        [int(entry.name) for entry in model_root.iterdir() if entry.is_dir() and entry.name.isdigit()]
        if model_root.is_dir()
        else []
    )
    return max(versions, default=0) + 1


def export_model(
    model_dir: Path,
    repo: Path,
    version: int | None = None,
    name: str | None = None,
    lineage: dict[str, Any] | None = None,
    *,
    precision: str = DEFAULT_PRECISION,
    device: str = "cpu",
    cpu_instances: int | None = None,
) -> Path:
    """Export checkpoint ``model_dir`` as a new version of Triton model ``name`` (default: the entry model the workers
    ask, ``POSTLENS_TRITON_MODEL``) in ``repo``; returns the version folder. ``lineage`` (what trainer.retrain knows:
    labels, audit, gates, decision) goes into the model card beside the parent version.

    ``precision`` "int8" also writes the quantized network and has the CPU config serve it ("fp32": the network as
    trained; "bf16": the same network, run by OpenVINO in bfloat16); ``device`` "gpu" also writes the GPU config
    (:mod:`trainer.serving_config`). ``cpu_instances``: the CPU config's instance count (default: the config's own,
    two instances sharing the usable cores)."""
    if precision not in CPU_PRECISIONS:
        choices = ", ".join(CPU_PRECISIONS)
        raise ExportError(f"precision is one of {choices} (a GPU runs fp16 from the fp32 network), not {precision!r}")
    model_root = repo / (name or get_settings().triton_model)
    network, tokenizer, config, checkpoint_version = load_checkpoint(model_dir)
    model_root.mkdir(parents=True, exist_ok=True)
    triton_config = with_parameter(_triton_config(model_root, config.vision_encoder.input_size), "precision", precision)
    if cpu_instances is not None:
        triton_config = with_cpu_instances(triton_config, cpu_instances)
    with staged_version(model_root, version) as (staging, version):
        started = time.perf_counter()
        _write_onnx(network, Preprocessor.from_config(config, subword_tokenizer(tokenizer)), staging / ONNX_FILE)
        crf = network.crf.numpy_params()
        arrays = {"labels": np.array(config.labels), "start": crf.start, "transitions": crf.transitions, "end": crf.end}
        np.savez(staging / CRF_FILE, **arrays)
        shutil.copytree(model_dir / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        shutil.copy2(model_dir / CONFIG_FILE, staging / CONFIG_FILE)
        shutil.copy2(MODEL_SOURCE / TRITON_CODE_FILE, staging / TRITON_CODE_FILE)
        cases = verify_parity(network, staging)
        if precision == "int8":
            quantize_network(staging / ONNX_FILE, staging / INT8_ONNX_FILE)
        card = _model_card(
            model_dir, model_root.name, checkpoint_version, version, config, cases, time.perf_counter() - started
        )
        card["precision"] = precision
        card["lineage"] = {"made_by": "trainer.export", "parent_version": _newest(model_root), **(lineage or {})}
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (model_root / TRITON_CONFIG_FILE).write_text(triton_config)
        if device == "gpu":
            write_gpu_config(model_root, triton_config)
    return model_root / str(version)


def copy_version(model_root: Path, source: int, lineage: dict[str, Any]) -> Path:
    """Serve version ``source`` again: its folder, byte for byte, as the next (newest) version, with a card that
    records ``lineage`` (e.g. ``rollback_of``). What was served is served again, whatever the exporter does today."""
    origin = model_root / str(source)
    if not (origin / CARD_FILE).is_file():
        raise ExportError(f"{origin} is not an exported version (no {CARD_FILE})")
    parent = _newest(model_root)
    with staged_version(model_root, None) as (staging, version):
        shutil.copytree(origin, staging, dirs_exist_ok=True)
        card = json.loads((staging / CARD_FILE).read_text())
        card.update(version=str(version), exported_at=datetime.now(UTC).isoformat(timespec="seconds"), git=_git_state())
        card["lineage"] = {"parent_version": parent, **lineage}
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return model_root / str(version)


def _newest(model_root: Path) -> int | None:
    return next_version(model_root) - 1 or None


@contextmanager
def staged_version(model_root: Path, version: int | None) -> Iterator[tuple[Path, int]]:
    """A hidden folder to assemble version ``version`` (default: the next one) in, renamed into place when the block
    succeeds and removed either way — Triton only treats all-digit folders as versions, so it never sees half a
    version. Versions are never overwritten."""
    version = version if version is not None else next_version(model_root)
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_root / str(version)
    if target.exists():
        raise ExportError(f"{target} exists already; versions are never overwritten (omit --version for the next one)")
    staging = model_root / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging, version
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _triton_config(model_root: Path, image_size: int) -> str:
    """The entry model's ``config.pbtxt`` (the source's, on a first export) declaring this checkpoint's image size
    and named after its folder (Triton requires both to agree; ``POSTLENS_TRITON_MODEL`` picks the folder).

    All versions of a Triton model share one config, so a checkpoint with another size is refused while other
    versions exist.
    """
    config_path = model_root / TRITON_CONFIG_FILE
    text = (config_path if config_path.exists() else MODEL_SOURCE / TRITON_CONFIG_FILE).read_text()
    match = _IMAGES_DIMS.search(text)
    if match is None:
        raise ExportError(f"{config_path}: no IMAGES input with dims [4, S, S, 3]")
    current = int(match.group(2))
    if current != image_size and next_version(model_root) > 1:
        raise ExportError(
            f"{model_root} serves {current}×{current} images but this checkpoint takes {image_size}×{image_size}; "
            "one Triton model has one input shape — export into a repository without older versions"
        )
    sized = _IMAGES_DIMS.sub(rf"\g<1>{image_size}\g<3>{image_size}\g<5>", text)
    return _MODEL_NAME.sub(f'name: "{model_root.name}"', sized, count=1)


def _write_onnx(network: NerNetwork, preprocessor: Preprocessor, path: Path) -> None:
    batch = Dim("batch", min=1)
    subtokens = Dim("subtokens", min=1, max=preprocessor.max_subtokens)
    words = Dim("words", min=1, max=preprocessor.max_words)
    images = Dim("images", min=0, max=MAX_MODEL_IMAGES)
    dynamic = {
        "input_ids": {0: batch, 1: subtokens},
        "attention_mask": {0: batch, 1: subtokens},
        "word_index": {0: batch, 1: words},
        "word_mask": {0: batch, 1: words},
        "pixel_values": {0: batch, 1: images},
        "image_mask": {0: batch, 1: images},
        "word_shape": {0: batch, 1: words},
        "word_chars": {0: batch, 1: words},  # C is a config constant
    }
    names = INPUT_NAMES + feature_input_names(preprocessor.word_features)
    # Sizes ≥ 2 everywhere: torch.export would specialise a dimension traced at 0 or 1 to that constant.
    example = random_inputs(preprocessor, batch=2, images=2, seed=0)
    with warnings.catch_warnings():
        # Several inputs share each dynamic axis; torch warns once per repeat of the shared name.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        # By keyword: an enabled feature may follow a disabled one in forward()'s signature.
        program = torch.onnx.export(
            network.eval(),
            (),
            kwargs={name: torch.from_numpy(example[name]) for name in names},
            input_names=list(names),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={name: dynamic[name] for name in names},
            dynamo=True,
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns nothing; dynamo=True is asked for above
        raise ExportError("torch.onnx.export returned no ONNX program")
    program.save(str(path))


def random_inputs(
    preprocessor: Preprocessor, batch: int, images: int, seed: int, long: bool = False
) -> dict[str, np.ndarray]:
    """Encoded random posts (vocabulary words, random pixels, ragged image counts) of the given shape; ``long``
    posts run past the word and sub-token limits."""
    rng = np.random.default_rng(seed)
    vocabulary = sorted(token for token in preprocessor.tokenizer.vocabulary if token.isalpha())
    most = preprocessor.max_words * 2 if long else 12
    texts = [" ".join(rng.choice(vocabulary, size=int(rng.integers(2, most + 1)))) for _ in range(batch)]
    size = preprocessor.image_size
    pixels = rng.integers(0, 256, size=(batch, images, size, size, 3), dtype=np.uint8)
    mask = np.zeros((batch, images), dtype=bool)
    for row in range(batch):
        mask[row, : int(rng.integers(0, images + 1))] = True
    mask[:1] = True  # every slot is used by some post, as in serving (which drops unused slots)
    inputs, _ = preprocessor.encode(texts, pixels, mask)
    return inputs


def verify_parity(network: NerNetwork, version_dir: Path) -> list[ParityCase]:
    """Run the written version with ONNX Runtime and the network with PyTorch on several shapes; raise on mismatch."""
    exported = ExportedModel.load(version_dir, ModelRef(name="parity", version="0"))
    shapes = [(1, 0, False), (3, 1, False), (2, 4, False), (5, 3, False), (4, 2, True), (1, 4, True)]
    cases = []
    for seed, (batch, images, long) in enumerate(shapes, start=1):
        inputs = random_inputs(exported.preprocessor, batch, images, seed, long)
        with torch.no_grad():
            expected = network(**{name: torch.from_numpy(value) for name, value in inputs.items()})
        actual = exported.run(inputs)
        errors = []
        for name, want, got in zip(OUTPUT_NAMES, expected, actual, strict=True):
            want = want.numpy()
            if want.shape != got.shape:
                raise ExportError(
                    f"ONNX output {name} has shape {got.shape}, PyTorch {want.shape} (batch {batch}, {images} images)"
                )
            errors.append(float(np.abs(want - got).max()) if want.size else 0.0)
        case = ParityCase(batch, images, inputs["input_ids"].shape[1], inputs["word_index"].shape[1], max(errors))
        if case.max_abs_error > PARITY_TOLERANCE or not np.isfinite(case.max_abs_error):
            worst = OUTPUT_NAMES[int(np.argmax(errors))]
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by {case.max_abs_error:.3g} (> {PARITY_TOLERANCE}) in {worst} "
                f"for batch {batch}, {images} image slots, {case.subtokens} sub-tokens, {case.words} words; "
                f"per output: {dict(zip(OUTPUT_NAMES, errors, strict=True))}. Nothing was written."
            )
        cases.append(case)
    return cases


def _model_card(
    model_dir: Path,
    name: str,
    checkpoint_version: str,
    version: int,
    config: ModelConfig,
    cases: list[ParityCase],
    seconds: float,
) -> dict[str, Any]:
    import onnx
    import transformers

    metrics = model_dir / "metrics.json"
    return {
        "name": name,
        "version": str(version),
        "source_checkpoint": str(model_dir.resolve()),
        "checkpoint_version": checkpoint_version,
        "strategy": config.fusion.name,
        "text_encoder": config.text_encoder.name,
        "vision_encoder": {"family": config.vision_encoder.family, "name": config.vision_encoder.name},
        "labels": config.labels,
        "image_size": config.vision_encoder.image_size,
        "max_words": config.max_words,
        "max_subtokens": config.max_subtokens,
        "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "export_seconds": round(seconds, 1),
        "git": _git_state(),
        "libraries": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "openvino": importlib.metadata.version("openvino"),  # runs bf16 versions (postlens.runtime.openvino)
            "transformers": transformers.__version__,
        },
        "parity": {"tolerance": PARITY_TOLERANCE, "cases": [case.__dict__ for case in cases]},
        # The reference set the next retraining gates on and the replay sample it fine-tunes with: files inside the
        # checkpoint, by content hash, and where their posts came from.
        "carried": read_carried(model_dir).model_dump(),
    }


def _git_state() -> dict[str, Any] | None:
    """The commit the exporting code is at, and whether the work tree had changes on top of it."""
    root = MODEL_SOURCE.parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


# --------------------------------------------------------------------------------------------------------------
# Telling Triton
# --------------------------------------------------------------------------------------------------------------


def load_in_triton(http_url: str, model_name: str, version: int, timeout_s: float = 600.0) -> str:
    """Ask Triton (explicit model control) to load ``model_name`` again, so it serves ``version``; the versions
    it serves now keep answering until the new one is ready. Returns what happened, in one line."""
    try:
        urllib.request.urlopen(f"{http_url}/v2/health/live", timeout=3).close()
    except OSError:
        return f"no Triton answers at {http_url}; it will serve version {version} once it (re)loads {model_name}"
    load = urllib.request.Request(f"{http_url}/v2/repository/models/{model_name}/load", data=b"{}", method="POST")
    ready = f"{http_url}/v2/models/{model_name}/versions/{version}/ready"
    try:
        urllib.request.urlopen(load, timeout=timeout_s).close()
        urllib.request.urlopen(ready, timeout=10).close()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        if _POLLING_REFUSAL not in detail:
            raise ExportError(
                f"version {version} is written, but Triton at {http_url} did not load it: {detail}"
            ) from error
        # A Triton polling its repository (compose, the Helm chart) loads the new version by itself: wait for it.
        deadline = time.monotonic() + timeout_s
        while not _answers(ready):
            if time.monotonic() > deadline:
                raise ExportError(f"version {version} is written, but Triton at {http_url} did not load it") from None
            time.sleep(1.0)
    return f"Triton at {http_url} now serves {model_name} version {version}"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except OSError:  # HTTPError included: not ready yet
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint dir written by trainer.train")
    parser.add_argument("--repo", type=Path, default=settings.model_repository, help="Triton model repository")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--name", help="Triton model name (default: POSTLENS_TRITON_MODEL, the one workers ask)")
    parser.add_argument(
        "--triton-http",
        help="Triton HTTP URL to load the new version into (default: the local stack's Triton, when --repo is the "
        "repository it serves)",
    )
    parser.add_argument("--no-load", action="store_true", help="only write the version; do not contact Triton")
    parser.add_argument(
        "--precision",
        choices=CPU_PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"the precision the CPU config serves (default {DEFAULT_PRECISION}; the fp32 network is always written; "
        "bf16 runs it in OpenVINO)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: also write configs/gpu.pbtxt (KIND_GPU, TensorRT fp16) for tritonserver --model-config-name gpu",
    )
    parser.add_argument(
        "--cpu-instances",
        type=int,
        help="model instances of the CPU config, sharing the usable cores (default: the config's, two: measured "
        "fastest on a quiet 2-core machine, reports/serving.md)",
    )
    args = parser.parse_args(argv)

    try:
        target = export_model(
            args.model,
            args.repo,
            args.version,
            args.name,
            precision=args.precision,
            device=args.device,
            cpu_instances=args.cpu_instances,
        )
    except ExportError as error:
        raise SystemExit(f"export refused: {error}") from None
    card = json.loads((target / CARD_FILE).read_text())
    worst = max(case["max_abs_error"] for case in card["parity"]["cases"])
    print(f"wrote {target} (ONNX Runtime vs PyTorch: max |Δ| {worst:.2g} over {len(card['parity']['cases'])} shapes)")

    http_url = args.triton_http or settings.triton_load_url(args.repo)
    if args.no_load or http_url is None:
        print("Triton not contacted; it serves the new version when it (re)loads the model")
        return
    try:
        print(load_in_triton(http_url.rstrip("/"), target.parent.name, int(target.name)))
    except ExportError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
