"""The shared tuned lens: one translator for every block with an identity path, fitted on all of them at once.

The sceptic's test of iterative refinement: if blocks refine one prediction in a
shared space, one translator decodes them all nearly as well as a translator per
block; the gap to the tuned lens at each block is the price of sharing.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..adapters import ModelAdapter
from .base import Lens, LensConfig
from .tuned import TunedLens
from .translators import AffineTranslator


class SharedTunedLens(TunedLens):
    """One translator for every block with an identity path; undefined (None) at blocks without one, which share
    no space with the others."""

    lens_type = "shared"

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        Lens.__init__(self, config, adapter)
        self.params.append(AffineTranslator(self.layout.slots * config.head_dim, config.head_dim))

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        return [(self.params[0], [k for k in range(len(self.layout.blocks)) if self.layout.has_path(k)])]

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        inputs, forwarded = self.fit_inputs(features, index)
        return None if forwarded is None else self.hidden(self.params[0], inputs, forwarded)
