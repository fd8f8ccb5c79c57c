"""The tuned lens (Belrose et al. 2023): an affine translator per block that reads the whole block.

Where block ``k`` has an identity path ``P_k`` (affine, with channel map
``W_k``), its translator is residual around what the network itself forwards::

    h_k = P_k(p_path) + A_k (W_k p_whole) + b_k,    logits = unembed(h_k)

so ``A_k = 0, b_k = 0`` is exactly the logit lens. Transfer applies ``A_i, b_i``
to block ``j``'s carried features. Without a path the translator is a plain
affine map ``A p_whole + b`` into the head's space.
"""

from __future__ import annotations

from torch import Tensor

from ..adapters import ModelAdapter
from .base import Lens, LensConfig
from .translators import AffineTranslator, Translator


class TunedLens(Lens):
    """A translator per block that reads the whole block, then the frozen unembedding.

    With an identity path: ``P(p_path) + A (W p_whole) + b`` (see the module
    docstring), ``A`` and ``b`` zero-initialised, so every tuned lens starts
    as the logit lens and weight decay pulls towards it.
    """

    lens_type = "tuned"

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        super().__init__(config, adapter)
        d, layout = config.head_dim, self.layout
        for k, channels in enumerate(layout.channels):
            self.params.append(self.translator(layout.slots * (d if layout.has_path(k) else channels), d))

    def translator(self, n_in: int, n_out: int) -> Translator:
        """A block's translator from ``n_in`` inputs to the head's ``n_out``: affine here."""
        return AffineTranslator(n_in, n_out)

    def standardization_groups(self) -> list[list[int]]:
        """All blocks with an identity path together (they meet each other's translators in transfer), the rest alone."""
        with_path = [k for k in range(len(self.layout.blocks)) if self.layout.has_path(k)]
        return [with_path] * bool(with_path) + [[k] for k in range(len(self.layout.blocks)) if k not in with_path]

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, Tensor | None]:
        """``(W p_whole, P p_path)`` with an identity path; ``(p_whole, None)`` without one."""
        forwarded = self.forwarded(features, index)
        if forwarded is None:
            return self.layout.whole(features, index), None
        return self.carried_whole(features, index), forwarded

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        """Apply translator ``translator`` to block ``index``'s features (transfer when they differ).

        Two blocks share a space only through their identity paths; where
        either block lacks one, a cross-block transfer is undefined (None).
        """
        inputs, forwarded = self.fit_inputs(features, index)
        if translator != index and (forwarded is None or not self.layout.has_path(translator)):
            return None
        return self.hidden(self.params[translator], inputs, forwarded)

    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        return self.translate(features, index, index)

    def transfer(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        """Logits of translator ``translator`` applied to block ``index``'s features."""
        hidden = self.translate(features, index, translator)
        return None if hidden is None else self.unembed(hidden)

