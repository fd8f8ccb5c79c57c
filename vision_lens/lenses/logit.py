"""The logit lens: the model's own unembedding applied to what a block's identity path carries to the head."""

from __future__ import annotations

from torch import Tensor

from .base import Lens


class LogitLens(Lens):
    """The frozen unembedding applied to what the identity path carries from the block (undefined without one)."""

    lens_type = "logit"

    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        return self.forwarded(features, index)
