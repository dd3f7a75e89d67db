"""The linear-chain CRF's parameters and its training loss (negative log-likelihood, differentiable).

Decoding (Viterbi, marginals, span confidences) lives in :mod:`postlens.runtime.decode`, in NumPy, so serving does not
need torch. The scheme's constraints (no ``O → I-PER``, …) are fixed penalties added to the learned scores; the
``start``/``transitions``/``end`` properties include them, and those are what gets exported.
"""

from __future__ import annotations

import torch
from torch import nn

from postlens.runtime.decode import FORBIDDEN, CrfParams, TagScheme


class LinearChainCrf(nn.Module):
    # Buffers (registered below), declared for type checkers: nn.Module's attribute lookup is untyped.
    start_penalty: torch.Tensor
    transition_penalty: torch.Tensor
    end_penalty: torch.Tensor

    def __init__(self, scheme: TagScheme) -> None:
        super().__init__()
        size = len(scheme.labels)
        self.scheme = scheme
        self.start_scores = nn.Parameter(torch.zeros(size))
        self.transition_scores = nn.Parameter(torch.zeros(size, size))
        self.end_scores = nn.Parameter(torch.zeros(size))
        allowed_start, allowed_transitions, allowed_end = scheme.allowed()

        def penalty(allowed) -> torch.Tensor:
            return torch.where(torch.from_numpy(allowed), 0.0, FORBIDDEN).float()

        self.register_buffer("start_penalty", penalty(allowed_start), persistent=False)
        self.register_buffer("transition_penalty", penalty(allowed_transitions), persistent=False)
        self.register_buffer("end_penalty", penalty(allowed_end), persistent=False)

    @property
    def start(self) -> torch.Tensor:
        return self.start_scores + self.start_penalty

    @property
    def transitions(self) -> torch.Tensor:
        """[T, T] score of previous tag → next tag."""
        return self.transition_scores + self.transition_penalty

    @property
    def end(self) -> torch.Tensor:
        return self.end_scores + self.end_penalty

    def numpy_params(self) -> CrfParams:
        """The constrained scores as float64 arrays, for :mod:`postlens.runtime.decode` and export."""
        with torch.no_grad():
            return CrfParams(
                start=self.start.double().cpu().numpy(),
                transitions=self.transitions.double().cpu().numpy(),
                end=self.end.double().cpu().numpy(),
            )

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z per sequence [B] by the forward algorithm; ``mask`` [B, W] marks words (a prefix of each row)."""
        transitions = self.transitions
        alpha = self.start[None] + emissions[:, 0]
        for position in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[:, :, None] + transitions[None], dim=1) + emissions[:, position]
            alpha = torch.where(mask[:, position, None], step, alpha)
        return torch.logsumexp(alpha + self.end[None], dim=1)

    def sequence_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Score of the given tag sequences [B]; tags on padding are ignored."""
        maskf = mask.to(emissions.dtype)
        emitted = torch.gather(emissions, 2, tags[:, :, None])[:, :, 0]
        score = self.start[tags[:, 0]] + (emitted * maskf).sum(dim=1)
        steps = self.transitions[tags[:, :-1], tags[:, 1:]]
        score = score + (steps * maskf[:, 1:]).sum(dim=1)
        last = (mask.long().sum(dim=1) - 1).clamp(min=0)
        return score + self.end[tags.gather(1, last[:, None])[:, 0]]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the gold tags per sequence [B] (0 for posts without words)."""
        mask = mask.bool()
        nll = self.log_partition(emissions, mask) - self.sequence_score(emissions, tags, mask)
        return torch.where(mask.any(dim=1), nll, torch.zeros_like(nll))
