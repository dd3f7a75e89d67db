"""The exported network run by OpenVINO in bfloat16: the CPU precision that is faster than fp32 and still answers a
post the same alone as in a batch.

ONNX Runtime's x86 CPU kernels have no bf16 MatMul, so ``network.onnx`` is compiled by OpenVINO with the bf16
inference precision (weights and activations rounded to bf16 inside each MatMul, accumulated in fp32). Unlike int8's
dynamic quantization there is no per-batch scale: a post's entities do not depend on its batch-mates. The figures
(speed, entity agreement with fp32 on both valid splits) are in ``reports/serving.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# OpenVINO's CPU default on a bf16-capable core is already bf16: the hint is always set, so "fp32" never runs bf16
# by accident and bf16 is asked for by name.
PRECISION_HINT = "bf16"
# OpenVINO prepares its CPU kernels for each new input shape (cached, but the cache fills slowly): sub-token and
# word lengths rounded up to a multiple of 8 served about 1.1× the posts/s of exact lengths in Triton, 1.06× in
# process once warm; 16 gained less, paying for more padding (reports/serving.md).
SHAPE_MULTIPLE = 8


class OpenVinoSession:
    """The part of ``onnxruntime.InferenceSession`` that :class:`postlens.runtime.exported.ExportedModel` uses
    (``run`` and the output names), on the network compiled by OpenVINO for the CPU."""

    def __init__(self, network: Path, threads: int) -> None:
        import openvino as ov  # only a bf16 instance pays for importing it

        self.compiled = ov.Core().compile_model(
            str(network),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": PRECISION_HINT,
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1,  # one batch at a time per model instance, as Triton calls it
                "PERFORMANCE_HINT": "LATENCY",
                "ENABLE_CPU_PINNING": False,  # the cores are shared with the tokenizer, the decoder, other instances
            },
        )
        self.request = self.compiled.create_infer_request()
        # What the CPU runs: a core without bf16 arithmetic falls back to f32, which the instance's log should say.
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def output_names(self) -> set[str]:
        return {name for output in self.compiled.outputs for name in output.get_names()}

    def run(self, names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)  # copies the outputs out of the request, which the next call reuses
        return [result[self.compiled.output(name)] for name in names]
