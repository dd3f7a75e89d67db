"""The int8 network of a version: ONNX Runtime dynamic quantization of the exported fp32 network.

The chosen MatMuls get int8 weights per output channel, their activations are quantized on the fly per batch: no
calibration data is needed and nothing depends on the inputs' ranges. On a CPU with VNNI (AVX512-VNNI, AVX-VNNI),
int8 dot products run several times as many multiply-adds per cycle as fp32.

What is quantized (:data:`DEFAULT_SCHEME`) was chosen by ``python -m bench.int8_choices`` on the default model:
each MatMul's sensitivity measured alone on training tweets, the most sensitive kept in fp32 until int8 and fp32
agree on ≥ 99 % of the entities of both valid splits (the table is in ``reports/serving.md``, "int8 choices").
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

QUANTIZED_OPS = ("MatMul",)
# What trainer.export serves on CPU unless told otherwise: bf16 (the fp32 network run by OpenVINO in bfloat16,
# postlens.runtime.openvino). On the default model it is faster than fp32 in Triton, finds ≥ 99.5 % of fp32's
# entities on both valid splits, and gives a post the same entities alone as in a batch (figures: reports/serving.md).
# Not int8: dynamic int8 quantizes each activation tensor with one scale for the whole batch, so a post's confidences
# (and, rarely, its entities) depend on the posts it is batched with: 2 of 115 entities and confidences by up to
# 0.049 changed between a post alone and in a batch of 64. `--precision int8` or `fp32` remain for who wants them.
DEFAULT_PRECISION = "bf16"


@dataclass(frozen=True)
class Int8Scheme:
    """Which MatMuls run in int8, and how their weights are quantized.

    ``scope``: only modules whose path contains it (None: every module); ``kept_fp32``: regular expressions of module
    paths that stay fp32 inside the scope; ``weights_only``: only MatMuls with a weight (not attention's
    activation × activation products)."""

    scope: str | None = "text_encoder."
    kept_fp32: tuple[str, ...] = ()
    weights_only: bool = False
    per_channel: bool = True
    reduce_range: bool = False

    def selects(self, node: onnx.NodeProto, weights: set[str]) -> bool:
        if node.op_type not in QUANTIZED_OPS:
            return False
        path = module_path(node)
        return (
            (self.scope is None or self.scope in path)
            and not any(re.search(pattern, path) for pattern in self.kept_fp32)
            and (not self.weights_only or any(name in weights for name in node.input))
        )

    def nodes(self, model: onnx.ModelProto) -> list[str]:
        weights = {initializer.name for initializer in model.graph.initializer}
        return [node.name for node in model.graph.node if self.selects(node, weights)]


# The text encoder's MatMuls (where a tweet's arithmetic is; the fusion, word-feature and emission layers are small
# and closer to the tags) but the 16 whose quantization alone moved the default model's emissions most on training
# tweets (bench.int8_choices): every feed-forward input projection, the feed-forward output projections of all but
# the last layer, the middle layers' attention values and one key. 20 of the 36 weight MatMuls run in int8, about a
# third of the encoder's arithmetic (the queries, most keys, the attention outputs, the last feed-forward output).
DEFAULT_SCHEME = Int8Scheme(
    kept_fp32=(
        r"\.layer\.\d+\.intermediate\.dense:",
        r"\.layer\.[0-4]\.output\.dense:",
        r"\.layer\.[1-4]\.attention\.self\.value:",
        r"\.layer\.2\.attention\.self\.key:",
    )
)


def module_path(node: onnx.NodeProto) -> str:
    """The module path the torch exporter recorded for ``node`` (its ``namespace`` metadata)."""
    return next((prop.value for prop in node.metadata_props if prop.key == "namespace"), "")


def quantize_network(fp32: Path, int8: Path, scheme: Int8Scheme = DEFAULT_SCHEME) -> None:
    """Write ``int8``: the network ``fp32`` with the MatMuls ``scheme`` selects in int8."""
    quantize_nodes(fp32, int8, scheme.nodes(onnx.load(str(fp32), load_external_data=False)), scheme)


def quantize_nodes(fp32: Path, int8: Path, nodes: Sequence[str], scheme: Int8Scheme = DEFAULT_SCHEME) -> None:
    """Write ``int8``: the network ``fp32`` with the MatMul nodes named ``nodes`` in int8, weights quantized as
    ``scheme`` says (its selection is not consulted)."""
    if not nodes:  # ONNX Runtime's quantizer takes an empty selection as every node
        raise ValueError("no MatMul to quantize")
    with without_recorded_shapes(fp32) as plain:
        quantize_dynamic(
            plain,
            int8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=list(nodes),
            per_channel=scheme.per_channel,
            reduce_range=scheme.reduce_range,
            weight_type=QuantType.QInt8,
        )


@contextmanager
def without_recorded_shapes(network: Path) -> Iterator[Path]:
    """A temporary copy of ``network`` for ONNX Runtime's quantizers: the torch exporter's recorded intermediate shapes
    disagree with ONNX's own shape inference, which the quantizers run; dropping them lets it infer them afresh (the
    graph itself is unchanged)."""
    model = onnx.load(str(network))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="postlens-quantize-") as tmp:
        plain = Path(tmp) / "network.onnx"
        onnx.save(model, str(plain))
        yield plain
