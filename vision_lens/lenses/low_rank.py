"""The low-rank tuned lens: a tuned lens whose translators have rank at most ``RANK``.

The translator of block ``k`` is ``U_k V_k^T`` on the standardised carried
features (plus a bias), ``V_k`` reading ``RANK`` directions and ``U_k`` writing
them into the head's space, residual around the identity path as in the tuned
lens. With ``U_k = 0`` (its start) it is the logit lens; ``V_k`` starts at
random, seeded, or no gradient would reach either factor. The product is not
convex in the factors, so the convex solver does not apply: autograd L-BFGS
fits it to its penalised optimum (the L2 penalty on both factors) and
tuned-lens's recipe fits it as tuned-lens fits any lens. Its gap to the tuned
lens at a block says how much of the block's read-out needs more than ``RANK``
directions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .translators import Translator
from .tuned import TunedLens

RANK = 16


class LowRankTranslator(Translator):
    """``x -> U V^T (x - mean) / scale + b``, ``V`` ``(in, rank)``, ``U`` ``(out, rank)``."""

    def __init__(self, n_in: int, n_out: int, rank: int = RANK):
        super().__init__(n_in)
        rank = max(1, min(rank, n_in, n_out))
        self.low_rank = nn.Sequential(nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out))
        self.reset(torch.Generator().manual_seed(0))

    @property
    def core(self) -> nn.Sequential:
        return self.low_rank

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """``U = 0, b = 0`` (the logit lens); ``V`` random with unit-variance outputs on standardised inputs."""
        down, up = self.low_rank
        down.weight.copy_(torch.randn(down.weight.shape, generator=generator) / math.sqrt(down.in_features))
        up.weight.zero_()
        up.bias.zero_()


class LowRankTunedLens(TunedLens):
    """:class:`TunedLens` with :class:`LowRankTranslator` translators."""

    lens_type = "low_rank"

    def translator(self, n_in: int, n_out: int) -> LowRankTranslator:
        return LowRankTranslator(n_in, n_out)
