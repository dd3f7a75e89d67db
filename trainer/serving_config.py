"""The entry model's Triton configurations written beside an export: the CPU one (``config.pbtxt``) at the precision
the export chose (its instance count if asked), and a GPU variant of the same model for
``tritonserver --model-config-name gpu``.

On CPU the instances share the cores the cgroup quota allows (:func:`postlens.runtime.cores.usable_cores`):
``intra_op_threads`` 0 gives each instance the usable cores ÷ the instances. Two instances ship (on 2 cores, one
thread each: the best measured, ``bench.serving``, ``reports/serving.md``); ``--cpu-instances`` writes another count.

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
_CPU_INSTANCES = re.compile(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+(\s+kind:\s*KIND_CPU)")
_MAX_BATCH = re.compile(r"^max_batch_size:\s*\d+", re.MULTILINE)
# A GPU runs a larger batch for little more than a small one: let the batcher form larger batches than on CPU.
GPU_MAX_BATCH = 64


def with_parameter(config: str, key: str, value: str) -> str:
    """``config`` (config.pbtxt text) with its string parameter ``key`` set to ``value``, comments kept."""
    pattern = re.compile(rf'(\{{\s*key:\s*"{re.escape(key)}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")')
    if pattern.search(config) is None:
        raise ValueError(f'the model config has no parameter "{key}"')
    return pattern.sub(rf"\g<1>{value}\g<2>", config, count=1)


def with_cpu_instances(config: str, count: int) -> str:
    """``config`` (config.pbtxt text) with ``count`` CPU instances."""
    if count < 1:
        raise ValueError(f"a model needs at least one instance, not {count}")
    if _CPU_INSTANCES.search(config) is None:
        raise ValueError("the model config has no KIND_CPU instance_group")
    return _CPU_INSTANCES.sub(rf"\g<1>{count}\g<2>", config, count=1)


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
