"""The linear probe (Alain & Bengio 2016): the label-trained baseline, which does not use the unembedding."""

from __future__ import annotations

from torch import Tensor, nn

from ..adapters import ModelAdapter
from .base import LensConfig, SavedLens
from .translators import AffineTranslator


class LinearProbe(SavedLens):
    """Softmax regression on each block's whole-block pooled features, trained on the labels."""

    lens_type = "linear_probe"

    def __init__(self, config: LensConfig, adapter: ModelAdapter | None = None):
        super().__init__()
        self.config = config
        self.layout = config.feature_layout
        self.params = nn.ModuleList(
            AffineTranslator(self.layout.slots * c, config.num_classes) for c in self.layout.channels
        )

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, None]:
        return self.layout.whole(features, index), None

    def forward(self, features: Tensor, index: int) -> Tensor:
        return self.params[index](self.layout.whole(features, index))
