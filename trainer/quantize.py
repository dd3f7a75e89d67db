"""The int8 network of a version: ONNX Runtime dynamic quantization of the exported fp32 network.

Weights of every MatMul become int8 (per output channel, or per tensor), activations are quantized on the fly per
batch: no calibration data is needed and nothing depends on the inputs' ranges. On a CPU with VNNI (AVX512-VNNI,
AVX-VNNI), int8 dot products run several times as many multiply-adds per cycle as fp32. The MatMuls are the
text encoder's projections and feed-forward layers, where a tweet's arithmetic is; the rest stays fp32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

QUANTIZED_OPS = ("MatMul",)
# What trainer.export serves on CPU unless told otherwise.
DEFAULT_PRECISION = "int8"


def quantize_network(fp32: Path, int8: Path, per_channel: bool = False) -> None:
    """Write ``int8``: the network ``fp32`` with int8 MatMul weights and dynamically quantized activations."""
    model = onnx.load(str(fp32))
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
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )
