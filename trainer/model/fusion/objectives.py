"""Training objectives that strategies return as auxiliary losses (and InfoNCE, which losses.py shares)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log(Σ_positives e^logit / Σ_all e^logit) (MGIPS-CL eq. 16; with one positive per row,
    the diagonal, it is InfoNCE, eq. 17)."""
    positive_logits = torch.where(positives, logits, torch.full_like(logits, float("-inf")))
    return (logits.logsumexp(dim=-1) - positive_logits.logsumexp(dim=-1)).mean()


def implicit_positive_pairs(similarity: torch.Tensor, top_k: int) -> torch.Tensor:
    """[N, N] positives: each text's own image plus the ``top_k`` in-batch images most similar to it (MGIPS-CL
    §3.4.1; chosen on detached similarities, so mining itself takes no gradient)."""
    own = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    k = min(top_k, similarity.shape[1])
    mined = torch.zeros_like(own).scatter(1, similarity.detach().topk(k, dim=1).indices, True)
    return own | mined


def central_moment_discrepancy(x: torch.Tensor, y: torch.Tensor, order: int) -> torch.Tensor:
    """CMD_K (Zellinger et al., 2017; SMCL §3.7 eq. 19) between the rows of x [N, D] and y [M, D]: distance of the
    means plus of the central moments of order 2..K."""
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    centred_x, centred_y = x - mean_x, y - mean_y
    total = torch.linalg.vector_norm(mean_x - mean_y)
    for k in range(2, order + 1):
        total = total + torch.linalg.vector_norm(centred_x.pow(k).mean(dim=0) - centred_y.pow(k).mean(dim=0))
    return total


def soft_orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖AᵀB‖²_F over a batch of paired rows (SMCL §3.7 eq. 20), on centred unit-norm rows and averaged per entry
    so its scale does not depend on width or batch size (as in MISA's difference loss)."""
    a = F.normalize(a - a.mean(dim=0), dim=-1)
    b = F.normalize(b - b.mean(dim=0), dim=-1)
    return (a.T @ b).pow(2).mean()
