"""A training run's configuration: presets (YAML files in ``trainer/configs/``, or a path) with ``--set a.b=value``
overrides, validated into a :class:`RunConfig` (model, loss and training sections)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from postlens.runtime.config import ModelConfig
from trainer.model.losses import LossConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXTENDS = "extends"  # the preset key naming the preset it builds on


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)  # fusion and output layers
    encoder_lr: float = Field(1e-4, gt=0)  # text and vision encoders
    vision_lr: float | None = Field(None, gt=0)  # the vision encoder's own rate (MGIPS-CL); None = encoder_lr
    crf_lr: float = Field(1e-2, gt=0)
    # Keep the text encoder's sub-word embedding table as pretrained: on a few thousand tweets most rows see no
    # gradient worth having, and the table is half of MiniLM's parameters (optimizer time).
    freeze_word_embeddings: bool = False
    # Keep the vision encoder as built or pretrained: a detector's boxes (DETR) come from states that fine-tuning
    # would move while its box head, never trained here, reads them.
    freeze_vision_encoder: bool = False
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1)  # share of steps with a rising learning rate
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(5, ge=1)  # epochs without a better selection F1 (dev, or valid) before stopping
    # Share of the training posts held out as the dev slice (by a hash of their words, trainer.data.split) that
    # selects the epoch, stops early and calibrates, so valid stays an honest estimate. 0: all of that on valid.
    dev_share: float = Field(0.0, ge=0, lt=1)
    # Also try the mean of the last k epochs' weights (trainer.model.averaging) against the best epoch; the one with
    # the higher selection F1 is kept. 0 or 1: the best epoch alone.
    average_last: int = Field(0, ge=0)
    eval_batch_size: int = Field(64, ge=1)
    threads: int = Field(2, ge=1)  # torch CPU threads
    # Run the training forward pass under bfloat16 autocast (the losses stay fp32): about 1.5x the steps per second
    # on a CPU with avx512_bf16 or AMX. Selection, calibration and the saved weights stay fp32.
    bf16_autocast: bool = False
    # Shuffled examples are sorted by length within windows of this many batches, so a batch pads little
    # (tweets vary 5–70 sub-tokens); the batches are then shuffled. 1 = plain shuffled batches.
    length_window: int = Field(1, ge=1)
    # Training posts the checkpoint keeps as its replay sample: retraining mixes them with new labels so the model
    # does not forget what it knew (trainer.data.carried). 0 keeps none (retraining then needs --extra-train).
    replay_record: int = Field(2000, ge=0)


class DataConfig(BaseModel):
    """The files a preset trains and selects on: paths relative to the shared data directory (or absolute)."""

    model_config = ConfigDict(extra="forbid")

    train: list[Path] = Field(min_length=1)
    valid: list[Path] = Field(min_length=1)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str
    seed: int = 13
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig | None = None  # a preset that names its data trains without --train/--valid

    @property
    def named_data(self) -> DataConfig:
        """The data the preset names (for callers that train on it without --train/--valid)."""
        if self.data is None:
            raise ValueError(f"preset {self.preset!r} names no data: give --train and --valid")
        return self.data


def preset_names() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset's settings; one with ``extends: OTHER`` is OTHER's settings with its own laid over them."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset {name!r}; presets: {', '.join(preset_names())} (or a path to a YAML file)")
    config = yaml.safe_load(path.read_text()) or {}
    base = config.pop(EXTENDS, None)
    if base is not None:
        config = merge_sections(load_preset(base), config)
    return {**config, "preset": path.stem}


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: a section present in both merges key by key, any other value replaces."""
    merged = dict(base)
    for key, value in over.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_sections(merged[key], value) if both_sections else value
    return merged


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``a.b.c=value`` assignments into a nested dict; values are YAML (``3`` → int, ``[1, 2]`` → list)."""
    config = copy.deepcopy(config)
    for override in overrides:
        key, equals, value = override.partition("=")
        if not equals or not key:
            raise ValueError(f"--set {override!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {override!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return config


def resolve_config(preset: str, strategy: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    config = load_preset(preset)
    if strategy:
        config = apply_overrides(config, [f"model.fusion.name={strategy}"])
    return RunConfig.model_validate(apply_overrides(config, overrides))
