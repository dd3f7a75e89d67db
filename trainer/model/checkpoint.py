"""A trained model on disk (docs/contracts.md): ``config.yaml``, ``model.pt``, ``tokenizer/`` (+ metrics and curve).

``config.yaml`` is the whole resolved run configuration; its ``model`` section rebuilds the network exactly
(architecture recorded, no original model files needed), ``version`` names the weights (a hash of ``model.pt``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from postlens.runtime.config import ModelConfig
from postlens.runtime.exported import CONFIG_FILE, TOKENIZER_DIR, read_model_config
from trainer.model.network import NerNetwork

WEIGHTS_FILE = "model.pt"


def save_checkpoint(
    out: Path, run_config: dict[str, Any], network: NerNetwork, tokenizer: PreTrainedTokenizerBase
) -> str:
    """Write weights, tokenizer and config (with ``version`` added); returns the version."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    torch.save(network.state_dict(), weights)
    version = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    config = {**run_config, "version": version}
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return version


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint: no {CONFIG_FILE}")
    return yaml.safe_load(path.read_text())


def model_config(model_dir: Path) -> ModelConfig:
    """The checkpoint's model config, with the tokenizer pointing at its saved copy; refuses another word tokenizer."""
    config = read_model_config(Path(model_dir))
    text = config.text_encoder.model_copy(update={"tokenizer": str(Path(model_dir) / TOKENIZER_DIR)})
    return config.model_copy(update={"text_encoder": text})


def load_checkpoint(model_dir: Path) -> tuple[NerNetwork, PreTrainedTokenizerBase, ModelConfig, str]:
    """Network (eval mode), tokenizer, model config and version of a checkpoint."""
    config = model_config(model_dir)
    network, tokenizer, config = NerNetwork.build(config, pretrained=False)
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.eval(), tokenizer, config, str(read_config(model_dir)["version"])
