"""Training losses and their weights: CRF NLL (with Flooding), image–text InfoNCE, and grounding supervision.

- **CRF NLL** — mean negative log-likelihood of the gold tags per post.
- **Flooding** (Ishida et al., 2020) — ``|L − b| + b`` on the CRF NLL (MPCFN §3.6 floods its tagging objective):
  once it falls below the level ``b`` the gradient turns round, which keeps the model from driving it to zero
  (0 disables it). Not on the total: the grounding term alone never falls below log(regions of a gold box), so a
  flooded total would never reach ``b``.
- **InfoNCE** — symmetric contrastive alignment of pooled text and pooled image embeddings within the batch
  (posts with images only).
- **Grounding** — where gold boxes exist (synthetic data), each depicted entity's words should spread their region
  attention evenly over the regions the box covers (:mod:`trainer.model.region_targets`, from the network's region
  boxes), and the words of entities the images do not show should attend to nothing; and
  a post's image relevance should say whether its images show any entity. Datasets without box annotation
  contribute nothing to either.
- **Auxiliary** — whatever a fusion strategy returns as its own losses (MGIPS-CL's implicit-positive contrastive,
  SMCL's CMD and soft orthogonality), weighted by ``auxiliary`` or else by the strategy's paper defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trainer.model.fusion.objectives import multi_positive_nce
from trainer.model.network import NerNetwork, NetworkOutput
from trainer.model.region_targets import covered_regions


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crf: float = Field(1.0, ge=0)
    flooding: float = Field(0.0, ge=0)  # level b of Flooding on the CRF NLL; 0 = off
    contrastive: float = Field(0.0, ge=0)
    contrastive_temperature: float = Field(0.07, gt=0)
    grounding: float = Field(0.0, ge=0)  # attention on gold boxes
    relevance: float = Field(0.0, ge=0)  # image relevance vs. "the images show an entity"
    auxiliary: dict[str, float] = Field(default_factory=dict)  # weight by name of a strategy's own losses


@dataclass
class Targets:
    tags: torch.Tensor  # [B, W] label ids
    word_boxes: torch.Tensor  # [B, W, N, 4] the gold box of each depicted entity's words in image n…
    word_box_mask: torch.Tensor  # [B, W, N] bool …where it has one
    unseen_words: torch.Tensor  # [B, W] bool: words of entities that the (box-annotated) images do not show
    relevance: torch.Tensor  # [B] 1 when the post's images show one of its entities
    relevance_known: torch.Tensor  # [B] bool: the post has images and its dataset annotates boxes


def flooding(loss: torch.Tensor, level: float) -> torch.Tensor:
    return (loss - level).abs() + level if level > 0 else loss


def info_nce(text: torch.Tensor, image: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over the rows in ``keep``: row i's text and image are the positive pair."""
    text = F.normalize(text[keep], dim=-1)
    image = F.normalize(image[keep], dim=-1)
    if text.shape[0] < 2:  # no negatives to contrast with
        return text.sum() * 0.0
    logits = text @ image.T / temperature
    diagonal = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return (multi_positive_nce(logits, diagonal) + multi_positive_nce(logits.T, diagonal)) / 2


def grounding_nll(attention: torch.Tensor, box_regions: torch.Tensor, unseen_words: torch.Tensor) -> torch.Tensor:
    """Mean over supervised words of: for a depicted entity's word, the cross-entropy of its region attention against
    the uniform distribution over its gold-box regions (spreading attention over the whole box, not one region of it,
    makes the decoded box cover the object); for a word of an entity the images do not show, −log of the attention
    left on "nothing here" (so attention mass itself says whether an entity is shown)."""
    flat_attention = attention.flatten(2)  # [B, W, N·P]
    flat_target = box_regions.flatten(2)
    counts = flat_target.sum(dim=-1)
    depicted = counts > 0
    on_box = -(flat_target * torch.log(flat_attention.clamp(min=1e-6))).sum(dim=-1) / counts.clamp(min=1)
    off_images = -torch.log((1 - flat_attention.sum(dim=-1)).clamp(min=1e-6))
    total = (on_box * depicted).sum() + (off_images * unseen_words).sum()
    return total / (depicted.sum() + unseen_words.sum()).clamp(min=1)


def relevance_bce(relevance: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy(relevance.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1)


def total_loss(
    config: LossConfig,
    network: NerNetwork,
    output: NetworkOutput,
    targets: Targets,
    word_mask: torch.Tensor,
    image_mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted training loss and its parts (for logging). Grounding terms apply to strategies that attend
    to regions."""
    parts = {"crf": network.crf.nll(output.emissions, targets.tags, word_mask).mean()}
    if config.contrastive and output.image_embedding is not None:
        parts["contrastive"] = info_nce(
            output.text_embedding, output.image_embedding, image_mask.any(dim=1), config.contrastive_temperature
        )
    if config.grounding and network.fusion.grounds:
        box_regions = covered_regions(targets.word_boxes, targets.word_box_mask, output.region_boxes)
        parts["grounding"] = grounding_nll(output.word_region_attention, box_regions, targets.unseen_words)
    if config.relevance and network.fusion.grounds:
        parts["relevance"] = relevance_bce(output.image_relevance, targets.relevance, targets.relevance_known)
    weights = {name: getattr(config, name) for name in parts}
    parts.update(output.auxiliary_losses)
    weights.update(
        {name: config.auxiliary.get(name, default) for name, default in network.fusion.auxiliary_weights.items()}
    )
    objectives = {**parts, "crf": flooding(parts["crf"], config.flooding)}
    loss = sum(weights[name] * value for name, value in objectives.items())
    return loss, {name: float(value.detach()) for name, value in parts.items()}
