"""Loss composition: Flooding applies to the CRF NLL alone (MPCFN §3.6), so it engages even when other terms
(grounding, whose floor is log of a box's patch count) keep the total above the flood level."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.model.inputs import no_targets, random_batch
from tests.trainer.model.test_fusion_seeds import TEXTS, build
from trainer.model.losses import LossConfig, total_loss


def test_flooding_turns_the_crf_nll_round_below_its_level_and_leaves_the_other_terms() -> None:
    network, preprocessor = build("cross")
    network.train()
    inputs = random_batch(preprocessor, TEXTS, 1)
    output = network.encode(**inputs)
    targets = no_targets(inputs)
    # some grounding supervision (the first word shown in the whole first image), so the total sits above the CRF NLL
    targets.word_boxes[:, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    targets.word_box_mask[:, 0, 0] = True
    masks = inputs["word_mask"], inputs["image_mask"]
    plain, parts = total_loss(LossConfig(grounding=1.0), network, output, targets, *masks)
    level = parts["crf"] + 0.5 * parts["grounding"]  # above the CRF NLL, below the total
    flooded, flooded_parts = total_loss(LossConfig(grounding=1.0, flooding=level), network, output, targets, *masks)
    assert float(plain.detach()) > level
    assert float(flooded.detach()) == pytest.approx(float(plain.detach()) + 2 * (level - parts["crf"]), rel=1e-5)
    assert flooded_parts == parts  # the logged parts are the raw losses
    # Below the level, descending the flooded loss raises the CRF NLL: its gradient is reversed.
    emissions = output.emissions
    (plain_gradient,) = torch.autograd.grad(
        network.crf.nll(emissions, targets.tags, masks[0]).mean(), emissions, retain_graph=True
    )
    (flooded_gradient,) = torch.autograd.grad(flooded - plain, emissions, retain_graph=True)
    torch.testing.assert_close(flooded_gradient, -2 * plain_gradient)
