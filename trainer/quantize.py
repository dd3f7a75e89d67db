"""The int8 network of a version: ONNX Runtime dynamic quantization of the exported fp32 network.

The text encoder's weight MatMuls become int8 per output channel, their activations are quantized on the fly per
batch: no calibration data is needed and nothing depends on the inputs' ranges. On a CPU with VNNI (AVX512-VNNI,
AVX-VNNI), int8 dot products run several times as many multiply-adds per cycle as fp32.

What is quantized was chosen on the default model's Twitter-2015 / 2017 valid splits (entity F1 of fp32 0.7236 /
0.8412; share of entities fp32 and int8 both find): every MatMul per tensor −1.4 / −1.6 pt F1, 87 % / 89 % shared;
per channel −0.2 / +0.4 pt, 93 % / 96 %; the text encoder's only, per channel, −0.5 / +0.4 pt, 93 % / 96 %; the
same but the feed-forward output projections in fp32 −0.06 / +0.13 pt, 96.5 % / 97.4 % (the shipped choice: 30 of
the encoder's 36 weight MatMuls, two thirds of its arithmetic); both feed-forward projections in fp32 −0.3 / +0.1
pt, 98.1 % / 99.2 %, with a third of the arithmetic left in int8. The feed-forward output projection reads GELU
outputs, whose rare large values a per-batch int8 scale represents poorly.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

QUANTIZED_OPS = ("MatMul",)
# Only the text encoder's MatMuls (where a tweet's arithmetic is); the fusion, word-feature and emission layers are
# small and closer to the tags, and stay fp32.
QUANTIZED_SCOPE = "text_encoder."
# Kept in fp32 inside that scope: each layer's feed-forward output projection (BERT-family module path).
KEPT_FP32 = re.compile(r"\.layer\.\d+\.output\.dense")
# What trainer.export serves on CPU unless told otherwise.
DEFAULT_PRECISION = "int8"


def quantize_network(fp32: Path, int8: Path, per_channel: bool = True, scope: str | None = QUANTIZED_SCOPE) -> None:
    """Write ``int8``: the network ``fp32`` with int8 MatMul weights and dynamically quantized activations, for the
    MatMuls of the modules whose path contains ``scope`` (None: every MatMul; ONNX Runtime's quantizer also takes
    an empty selection as every MatMul), but for :data:`KEPT_FP32`."""
    model = onnx.load(str(fp32))
    nodes = [node.name for node in model.graph.node if node.op_type in QUANTIZED_OPS and quantized(node, scope)]
    # The torch exporter's recorded intermediate shapes disagree with ONNX's own shape inference, which the
    # quantizer runs; dropping them lets it infer them afresh (the graph itself is unchanged).
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="postlens-quantize-") as tmp:
        plain = Path(tmp) / "network.onnx"
        onnx.save(model, str(plain))
        quantize_dynamic(
            plain,
            int8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )


def quantized(node: onnx.NodeProto, scope: str | None) -> bool:
    """Whether ``node`` belongs to a module whose path contains ``scope`` (None: any) and is not one of
    :data:`KEPT_FP32` (the torch exporter records each node's module path in its ``namespace`` metadata)."""
    path = next((prop.value for prop in node.metadata_props if prop.key == "namespace"), "")
    return (scope is None or scope in path) and KEPT_FP32.search(path) is None
