"""The entry model's Triton configurations written beside an export: the CPU one (``config.pbtxt``) at the precision
the export chose, and a GPU variant of the same model for ``tritonserver --model-config-name gpu``.

Triton reads ``<model>/configs/<name>.pbtxt`` instead of ``config.pbtxt`` when started with
``--model-config-name <name>``: one repository, one set of versions, a configuration per kind of machine. The GPU
variant runs each version's fp32 network through TensorRT with fp16 kernels (CUDA, then CPU, for what TensorRT
lacks); the int8 network is for CPUs (its dynamic quantization ops are CPU kernels).
"""

from __future__ import annotations

import re
from pathlib import Path

GPU_CONFIG_NAME = "gpu"
GPU_CONFIG = Path("configs") / f"{GPU_CONFIG_NAME}.pbtxt"
_INSTANCE_GROUP = re.compile(r"^instance_group\s*\[.*?\][ \t]*$", re.MULTILINE | re.DOTALL)
_MAX_BATCH = re.compile(r"^max_batch_size:\s*\d+", re.MULTILINE)
# A GPU runs a larger batch for little more than a small one: let the batcher form larger batches than on CPU.
GPU_MAX_BATCH = 64


def with_parameter(config: str, key: str, value: str) -> str:
    """``config`` (config.pbtxt text) with its string parameter ``key`` set to ``value``, comments kept."""
    pattern = re.compile(rf'(\{{\s*key:\s*"{re.escape(key)}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")')
    if pattern.search(config) is None:
        raise ValueError(f'the model config has no parameter "{key}"')
    return pattern.sub(rf"\g<1>{value}\g<2>", config, count=1)


def gpu_variant(config: str) -> str:
    """The GPU configuration of the model that ``config`` (its CPU config.pbtxt text) describes."""
    if _INSTANCE_GROUP.search(config) is None:
        raise ValueError("the model config has no instance_group to place on a GPU")
    gpu = _INSTANCE_GROUP.sub("instance_group [ { count: 1 kind: KIND_GPU } ]", config, count=1)
    gpu = _MAX_BATCH.sub(f"max_batch_size: {GPU_MAX_BATCH}", gpu, count=1)
    gpu = with_parameter(gpu, "execution_provider", "tensorrt")
    gpu = with_parameter(gpu, "precision", "fp16")
    return "# GPU variant written by trainer.export --device gpu: tritonserver --model-config-name gpu\n" + gpu


def write_gpu_config(model_root: Path, cpu_config: str) -> Path:
    """Write the GPU variant of ``cpu_config`` under ``model_root``; returns its path."""
    path = model_root / GPU_CONFIG
    path.parent.mkdir(exist_ok=True)
    path.write_text(gpu_variant(cpu_config))
    return path
