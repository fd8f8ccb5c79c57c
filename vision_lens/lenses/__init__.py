"""Lens math only: maps from a block's pooled features to class logits, one module per kind.

``base`` holds what every lens shares (config, save and load, decoding through
the unembedding), ``translators`` the trainable maps; each kind of the registry
(:mod:`vision_lens.lens_kinds`) is one module here, imported when the registry first
asks for its class (so a kind's module needs no line in this file). Fitting is in
:mod:`vision_lens.fit`, capture in :mod:`vision_lens.capture`.
"""

from __future__ import annotations

from typing import Sequence

from ..adapters import ModelAdapter
from ..lens_kinds import lens_kind
from ..readout import FeatureLayout
from .base import Lens, LensConfig, LensFolderError, SavedLens, unembed_hash
from .logit import LogitLens
from .probe import LinearProbe
from .shared import SharedTunedLens
from .translators import AffineTranslator, Translator
from .tuned import TunedLens

__all__ = ["AffineTranslator", "Lens", "LensConfig", "LensFolderError", "LinearProbe", "LogitLens", "SavedLens",
           "SharedTunedLens", "Translator", "TunedLens", "build_lenses", "load_lens", "unembed_hash"]


def build_lenses(adapter: ModelAdapter, layout: FeatureLayout, lens_types: Sequence[str]) -> dict[str, SavedLens]:
    """Fresh lenses of the given kinds for ``adapter`` on features laid out as ``layout``, in the order given."""
    return {t: lens_kind(t).lens_class()(LensConfig.from_adapter(adapter, layout, t), adapter).to(adapter.device)
            for t in lens_types}


def load_lens(path, adapter: ModelAdapter, lens_type: str) -> SavedLens:
    """The lens of kind ``lens_type`` saved in the folder ``path``, checked against ``adapter`` (see
    :meth:`SavedLens.load`)."""
    return lens_kind(lens_type).lens_class().load(path, adapter)
