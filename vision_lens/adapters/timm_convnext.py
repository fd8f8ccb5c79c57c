"""timm's ConvNeXt (timm's ``convnext`` module: ``timm:convnext_tiny``, ``timm:convnextv2_*``, ...).

Blocks: ``stem`` and every ``stages.S.blocks.B``, each map averaged. Within a
stage a block adds its update to a residual stream, so the blocks of the last
stage reach the head by the identity; the stage transitions
(``stages.S.downsample``: a LayerNorm2d, then a strided convolution) are not
per-pixel affine, so the stem and the blocks of every earlier stage have no path
(their logit lens and transfers are ``null``). The head pools the last block's
map, then normalises the pooled vector (``head.norm``, a LayerNorm2d on the 1x1
map) before ``head.pre_logits`` and ``head.fc``: that is the unembedding, on the
pooled vector, so lenses take the autograd fitter. Variants that normalise the
map before pooling (``norm_pre``, e.g. ``convnext_tiny_hnf``) are read at its
output, the block ``features``, through the linear ``head.fc``.
Weights, preprocessing and classes: :mod:`~vision_lens.adapters.timm_family`.
"""

from __future__ import annotations

from torch import nn

from ..readout import Block, IdentityPath
from .base import on_pooled_vector
from .errors import ModelError
from .timm_family import AVERAGE_POOLS, TimmAdapter, timm_family


def _check(model: nn.Module, name: str) -> None:
    """ModelError unless ``model`` is laid out as timm's ConvNeXt, with an averaging pool and a linear ``fc``."""
    head = getattr(model, "head", None)
    if not (hasattr(model, "stem") and hasattr(model, "stages") and hasattr(model, "norm_pre")
            and getattr(getattr(head, "global_pool", None), "pool_type", None) in AVERAGE_POOLS
            and isinstance(getattr(head, "fc", None), nn.Linear)):
        raise ModelError(f"--model {name} ({type(model).__name__}) is not supported yet: vision-lens reads timm's "
                         f"ConvNeXt laid out as stem, stages.S.blocks.B, average pool, norm, linear fc")


class ConvNeXtAdapter(TimmAdapter):
    """A timm ConvNeXt (see the module doc)."""

    def __init__(self, model: nn.Module, name: str):
        _check(model, name)
        self.model = model
        last = len(model.stages) - 1
        normalised_first = not isinstance(model.norm_pre, nn.Identity)
        self.blocks = [Block("stem", "stem", model.stem[0].out_channels, None, stage="stem")]
        for s, stage in enumerate(model.stages):
            for b, block in enumerate(stage.blocks):
                width = block.conv_dw.out_channels
                path = IdentityPath.identity(width) if s == last and not normalised_first else None
                self.blocks.append(Block(f"stages.{s}.blocks.{b}", f"stages.{s}.blocks.{b}", width, path,
                                         stage=f"stages.{s}"))
        if normalised_first:
            width = self.blocks[-1].channels
            self.blocks.append(Block("features", "norm_pre", width, IdentityPath.identity(width), stage="features"))
            self._unembed = model.head.fc
        else:
            self._unembed = nn.Sequential(on_pooled_vector(model.head.norm), model.head.pre_logits, model.head.fc)

    @property
    def unembed(self) -> nn.Module:
        return self._unembed


FAMILY = timm_family(check=_check, adapter=ConvNeXtAdapter)
