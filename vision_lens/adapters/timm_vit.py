"""timm's class-token Vision Transformers: ``timm:vit_*``, ``timm:deit_*`` (timm's ``VisionTransformer``).

Read by :class:`~vision_lens.adapters.vit.VisionTransformerAdapter`, as
``cifar:vit`` is: the embedding output and every ``blocks.N``, through
``norm``/``fc_norm`` and ``head``; a ViT that pools its tokens before the head
is refused by name. Weights, preprocessing and classes:
:mod:`~vision_lens.adapters.timm_family`.
"""

from __future__ import annotations

from torch import nn

from .timm_family import TimmAdapter, timm_family
from .vit import VisionTransformerAdapter, check_readout


class TimmVisionTransformerAdapter(TimmAdapter, VisionTransformerAdapter):
    """The ViT readout with the preprocessing of the model's pretrained config."""

    def __init__(self, model: nn.Module, name: str):
        VisionTransformerAdapter.__init__(self, model)


FAMILY = timm_family(check=check_readout, adapter=TimmVisionTransformerAdapter)
