"""The entry model's configs as exported: on CPU two instances sharing the usable cores (or the instances asked
for); the GPU variant the same model on a GPU instance, TensorRT fp16, for ``tritonserver --model-config-name gpu``."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from postlens.runtime.cores import usable_cores
from trainer.export import MODEL_SOURCE, export_model
from trainer.serving_config import GPU_CONFIG, gpu_variant, with_parameter


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_gpu_variant_is_the_same_model_on_a_gpu() -> None:
    cpu = parse((MODEL_SOURCE / "config.pbtxt").read_text())
    gpu = parse(gpu_variant((MODEL_SOURCE / "config.pbtxt").read_text()))
    assert gpu.name == cpu.name and gpu.backend == cpu.backend
    assert list(gpu.input) == list(cpu.input) and list(gpu.output) == list(cpu.output)
    assert [(group.kind, group.count) for group in gpu.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)
    ]
    assert gpu.parameters["execution_provider"].string_value == "tensorrt"
    assert gpu.parameters["precision"].string_value == "fp16"
    assert gpu.max_batch_size >= cpu.max_batch_size
    assert gpu.dynamic_batching == cpu.dynamic_batching


def test_an_unknown_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="no parameter"):
        with_parameter((MODEL_SOURCE / "config.pbtxt").read_text(), "no_such_knob", "1")


def test_export_for_a_gpu_writes_both_configs_of_the_exported_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    version_dir = export_model(tiny_checkpoint, tmp_path, name="postlens-gpu", precision="fp32", device="gpu")
    model_root = version_dir.parent
    cpu, gpu = parse((model_root / "config.pbtxt").read_text()), parse((model_root / GPU_CONFIG).read_text())
    assert gpu.name == cpu.name == "postlens-gpu"
    assert list(gpu.input) == list(cpu.input)  # the checkpoint's image size in both
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cpu.parameters["precision"].string_value == "fp32"
    assert gpu.parameters["precision"].string_value == "fp16"


def test_the_cpu_config_runs_two_instances_sharing_the_usable_cores(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cpu = parse((export_model(tiny_checkpoint, tmp_path, precision="fp32").parent / "config.pbtxt").read_text())
    assert [(group.kind, group.count) for group in cpu.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    ]
    assert cpu.parameters["intra_op_threads"].string_value == "0"  # the usable cores ÷ the instances


def test_the_cpu_instances_can_be_chosen(tiny_checkpoint: Path, tmp_path: Path) -> None:
    version_dir = export_model(tiny_checkpoint, tmp_path, precision="fp32", cpu_instances=usable_cores() + 1)
    cpu = parse((version_dir.parent / "config.pbtxt").read_text())
    assert [group.count for group in cpu.instance_group] == [usable_cores() + 1]
