"""An exported model version, runnable without torch: preprocessing, the ONNX network, the NumPy CRF decoder.

A version folder (written by ``trainer.export``; the Triton entry model serves it) holds:

- ``network.onnx`` — the fusion network (dynamic batch, sub-token length, word count and image count 0–4), run at
  fp32 by ONNX Runtime or at bf16 by OpenVINO (:mod:`postlens.runtime.openvino`), and ``network.int8.onnx`` — the
  same with int8 weights and dynamically quantized activations (CPU serving);
- ``crf.npz`` — the label list and the constrained CRF scores (start, transitions, end) the decoder uses;
- ``tokenizer/`` and ``config.yaml`` — the sub-word tokenizer and resolved configuration, so preprocessing and
  decoding are exactly the training ones;
- ``model_card.json`` — where the weights came from, their metrics, when/how they were exported;
- ``model.py`` — the Triton Python-backend code.

A training checkpoint uses the same names for its config and tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import onnxruntime as ort
import yaml

from postlens.runtime.config import ModelConfig
from postlens.runtime.cores import usable_cores
from postlens.runtime.decode import CrfParams, Decoder
from postlens.runtime.preprocess import Preprocessor, SubwordTokenizer
from postlens.runtime.word_features import feature_input_names
from postlens.runtime.words import WORD_TOKENIZER_VERSION, Word
from postlens.schemas import ModelRef, PostPrediction

ONNX_FILE = "network.onnx"
INT8_ONNX_FILE = "network.int8.onnx"
CRF_FILE = "crf.npz"
CARD_FILE = "model_card.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
TRITON_CODE_FILE = "model.py"
TRITON_CONFIG_FILE = "config.pbtxt"
INPUT_NAMES = ("input_ids", "attention_mask", "word_index", "word_mask", "pixel_values", "image_mask")
# Plus word_shape [B, W] and word_chars [B, W, C] when the model config enables those word features.
# word_region_attention [B, W, N, P] over each image's P regions, whose boxes are region_boxes [B, N, P, 4].
OUTPUT_NAMES = ("emissions", "word_region_attention", "image_relevance", "region_boxes")
# How the network runs: fp32; int8 (CPU: the quantized file); bf16 (CPU: OpenVINO, postlens.runtime.openvino);
# fp16 (GPU: TensorRT builds fp16 kernels from fp32).
Precision = Literal["fp32", "int8", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
CPU_PRECISIONS = ("fp32", "int8", "bf16")  # what a version can be exported to serve on CPU
# One ONNX Runtime call costs about as much as this many sub-tokens of a post (a few hundred graph nodes' dispatch,
# the decoder's per-batch work): a length bucket is split off only when the padding it saves outweighs that.
RUN_COST_SUBTOKENS = 24


def version_precision(version_dir: Path, configured: str) -> str:
    """The CPU precision ``version_dir`` serves: the one it was exported to serve (its card), else ``configured`` (the
    model's config). Per version, so a rollback to a version exported at fp32 serves it as it was served."""
    try:
        exported = json.loads((version_dir / CARD_FILE).read_text()).get("precision")
    except (OSError, ValueError):
        exported = None
    return exported if exported in CPU_PRECISIONS else configured


def network_file(precision: str) -> str:
    """The file of a version folder that runs at ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return INT8_ONNX_FILE if precision == "int8" else ONNX_FILE


def length_buckets(lengths: Sequence[int], run_cost: int = RUN_COST_SUBTOKENS) -> list[np.ndarray]:
    """Rows of a batch grouped by length so padding is cheap: each group runs padded to its own longest row.

    The network's cost is about linear in the padded sub-tokens (rows × longest), plus ``run_cost`` per call; the
    cheapest split of the rows sorted by length into contiguous groups is found exactly (O(n²), n ≤ a batch).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    ordered = np.asarray(lengths)[order]
    best = [0.0] + [math.inf] * len(ordered)  # best[j]: cheapest cost of the first j rows
    cut = [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        for start in range(end):  # the last group: rows start..end-1, padded to ordered[end - 1]
            cost = best[start] + run_cost + (end - start) * int(ordered[end - 1])
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(ordered)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def execution_providers(name: str, device_id: int = 0, fp16: bool = False, cache_dir: Path | None = None) -> list[Any]:
    """ONNX Runtime providers for ``name`` ("cpu", "cuda", "tensorrt"), falling back along the chain on ops the
    faster provider lacks; refuses a provider this onnxruntime build does not have, rather than silently using CPU.

    ``fp16``: TensorRT builds half-precision kernels; ``cache_dir`` keeps its engines across restarts (building
    them takes minutes)."""
    tensorrt: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": fp16}
    if cache_dir is not None:
        tensorrt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
    chains: dict[str, list[Any]] = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"],
        "tensorrt": [
            ("TensorrtExecutionProvider", tensorrt),
            ("CUDAExecutionProvider", {"device_id": device_id}),
            "CPUExecutionProvider",
        ],
    }
    if name not in chains:
        raise ValueError(f"unknown execution provider {name!r}; expected one of {', '.join(chains)}")
    chain = chains[name]
    wanted = chain[0] if isinstance(chain[0], str) else chain[0][0]
    if wanted not in ort.get_available_providers():
        raise ValueError(f"onnxruntime {ort.__version__} here has no {wanted} (it has {ort.get_available_providers()})")
    return chain


class NetworkSession(Protocol):
    """What runs the network: an ONNX Runtime session, or :class:`postlens.runtime.openvino.OpenVinoSession`."""

    def run(self, names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def onnxruntime_session(network: Path, providers: Sequence[Any], threads: int) -> tuple[ort.InferenceSession, set[str]]:
    """``network`` in ONNX Runtime on ``providers``, and its output names."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads would spin for the next batch on cores that the tokenizer, the decoder and
    # other model instances need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(network), options, providers=list(providers))
    return session, {output.name for output in session.get_outputs()}


@dataclass
class ExportedModel:
    """A version folder, runnable: preprocessing, the ONNX network (ONNX Runtime, or OpenVINO at bf16), and the
    NumPy decoder."""

    preprocessor: Preprocessor
    session: NetworkSession
    decoder: Decoder
    length_batching: bool = True  # run a batch's posts in groups by length (length_buckets)
    engine: str = "ONNX Runtime"  # what runs the network, for the serving log
    shape_multiple: int = 1  # lengths a batch is padded to are rounded up to this (Preprocessor.select)

    @classmethod
    def load(
        cls,
        version_dir: Path,
        model: ModelRef,
        providers: Sequence[Any] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        precision: str = "fp32",
        length_batching: bool = True,
    ) -> ExportedModel:
        """``intra_op_threads`` 0: as many as this process may use (:func:`usable_cores`, the cgroup quota).
        ``precision`` bf16 runs on the CPU through OpenVINO, whatever ``providers`` says."""
        config = read_model_config(version_dir)
        tokenizer = SubwordTokenizer.load(version_dir / TOKENIZER_DIR)
        network = version_dir / network_file(precision)
        if not network.is_file():
            raise FileNotFoundError(
                f"{version_dir} has no {network.name} to run at {precision}: export it with "
                f"python -m trainer.export --precision {precision}"
            )
        threads = intra_op_threads or usable_cores()
        session: NetworkSession
        shape_multiple = 1
        if precision == "bf16":
            from postlens.runtime.openvino import SHAPE_MULTIPLE, OpenVinoSession  # imported only where bf16 runs

            session = OpenVinoSession(network, threads)
            outputs, engine = session.output_names, f"OpenVINO CPU at {session.inference_precision}"
            shape_multiple = SHAPE_MULTIPLE
        else:
            onnxruntime, outputs = onnxruntime_session(network, providers, threads)
            session, engine = onnxruntime, f"ONNX Runtime {onnxruntime.get_providers()[0]}"
        missing = set(OUTPUT_NAMES) - outputs
        if missing:  # an export of an earlier PostLens (region_boxes came with the DETR family)
            raise ValueError(
                f"{version_dir} lacks the outputs {sorted(missing)} this PostLens serves: re-export its checkpoint "
                "with python -m trainer.export"
            )
        with np.load(version_dir / CRF_FILE) as arrays:
            crf = CrfParams(start=arrays["start"], transitions=arrays["transitions"], end=arrays["end"])
        decoder = Decoder.from_config(config, crf, model)
        preprocessor = Preprocessor.from_config(config, tokenizer)
        return cls(preprocessor, session, decoder, length_batching, engine, shape_multiple)

    @property
    def image_size(self) -> int:
        return self.preprocessor.image_size

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The network's outputs (:data:`OUTPUT_NAMES`, in that order) for encoded inputs."""
        return self.session.run(list(OUTPUT_NAMES), {name: inputs[name] for name in self.input_names})

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES + feature_input_names(self.preprocessor.word_features)

    def decode(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[Word]],
        inputs: dict[str, np.ndarray],
        outputs: Sequence[np.ndarray],
    ) -> list[PostPrediction]:
        """Entities, confidences and regions from the network's ``outputs`` for encoded ``inputs``."""
        emissions, attention, relevance, boxes = outputs
        offsets = [[(word.start, word.end) for word in post_words] for post_words in words]
        return self.decoder.decode(
            texts, offsets, emissions, inputs["word_mask"], attention, inputs["image_mask"], relevance, boxes
        )

    def predict(self, texts: Sequence[str], images: np.ndarray, image_mask: np.ndarray) -> list[PostPrediction]:
        """Predictions for posts with uint8 [B, 4, S, S, 3] images and their [B, 4] mask, in order.

        Posts run in groups by image slots used: the vision encoder encodes every slot of a batch, masked or not,
        so one four-image post would make every post batched with it pay for four images (and a text-only group
        skips the vision encoder); and, with ``length_batching``, in groups by sub-token length, so short posts are
        not padded to the longest of the batch. Masking makes each post's result independent of its group in fp32
        (int8's dynamic quantization scales activations per batch: trainer.quantize.DEFAULT_PRECISION says what that
        costs; bf16 rounds each value alone, so its entities do not move with the batch, its confidences by ~1e-3).
        """
        images = np.asarray(images)
        image_mask = np.asarray(image_mask, dtype=bool)
        # Slots used by each post = its last unmasked slot + 1 (0 without images, or with no slots at all), so
        # image indices stay those of the request.
        slots_used = (image_mask * np.arange(1, image_mask.shape[1] + 1)).max(axis=1, initial=0)
        by_row: dict[int, PostPrediction] = {}
        for slots in np.unique(slots_used):
            rows = np.flatnonzero(slots_used == slots)
            group_texts = [texts[row] for row in rows]
            inputs, words = self.preprocessor.encode(group_texts, images[rows, :slots], image_mask[rows, :slots])
            lengths = inputs["attention_mask"].sum(axis=1)
            for part in length_buckets(lengths) if self.length_batching else [np.arange(len(rows))]:
                part_inputs = self.preprocessor.select(inputs, part, self.shape_multiple)
                part_texts, part_words = [group_texts[i] for i in part], [words[i] for i in part]
                decoded = self.decode(part_texts, part_words, part_inputs, self.run(part_inputs))
                by_row.update(zip(rows[part].tolist(), decoded, strict=True))
        return [by_row[row] for row in range(len(texts))]


def read_model_config(directory: Path) -> ModelConfig:
    """The model config of a version folder or checkpoint; refuses one trained with another word tokenizer."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint or model version: no {CONFIG_FILE}")
    config = ModelConfig.model_validate(yaml.safe_load(path.read_text())["model"])
    if config.word_tokenizer_version != WORD_TOKENIZER_VERSION:
        raise ValueError(
            f"{directory} was trained with word tokenizer version {config.word_tokenizer_version}, this code has "
            f"{WORD_TOKENIZER_VERSION}; retrain (and export) again"
        )
    return config
