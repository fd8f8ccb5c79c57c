"""timm's MBConv networks: EfficientNet and MobileNetV2 (timm's ``efficientnet`` module: ``timm:efficientnet_b0``,
``timm:mobilenetv2_100``, ...) and MobileNetV3 (its ``mobilenetv3`` module: ``timm:mobilenetv3_large_100``, ...).

Blocks: ``stem`` (``conv_stem`` and ``bn1``) and every inverted-residual block
``blocks.S.B``, each map averaged. Only the head's input has an affine path to
the head, since nothing carries a block's output there linearly:

* an inverted-residual block adds its input back only where it keeps the shape,
  so the skip exists only within a stage and every stage's first block restarts
  the stream through its nonlinear convolutions;
* EfficientNet and MobileNetV2 end in ``conv_head`` and ``bn2`` with its
  activation, on the map, before the pool: the head's input is their output,
  the block ``features`` (timm's ``forward_features``), read through the linear
  ``classifier`` (the convex fitter);
* MobileNetV3 pools the last block first, then applies ``conv_head``,
  ``norm_head`` and ``act2`` to the 1x1 map: the last block is the head's
  input, read through those and the ``classifier`` on the pooled vector (the
  autograd fitter).

Every other block's logit lens and transfers are undefined (``null``), as
Inception's are. Weights, preprocessing and classes:
:mod:`~vision_lens.adapters.timm_family`.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..readout import Block, IdentityPath
from .base import on_pooled_vector
from .errors import ModelError
from .timm_family import AVERAGE_POOLS, TimmAdapter, timm_family


def _width(module: nn.Module) -> int:
    """A block's output channels: its last convolution's (the projection; squeeze-excite convolutions come before)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _check(model: nn.Module, name: str) -> None:
    """ModelError unless ``model`` is an MBConv network with an averaging pool and a linear classifier."""
    head = hasattr(model, "bn2") or all(hasattr(model, m) for m in ("conv_head", "norm_head", "act2"))
    pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
    if not (head and isinstance(getattr(model, "blocks", None), nn.Sequential) and pool in AVERAGE_POOLS
            and isinstance(model.get_classifier(), nn.Linear)):
        raise ModelError(
            f"--model {name} ({type(model).__name__}) is not supported yet: vision-lens reads timm's MBConv networks "
            f"laid out as EfficientNet (conv_stem, bn1, blocks, conv_head, bn2, average pool, linear classifier) or "
            f"MobileNetV3 (the same blocks, then average pool, conv_head, act2, linear classifier)"
        )


class MBConvAdapter(TimmAdapter):
    """An EfficientNet, MobileNetV2 or MobileNetV3 (see the module doc)."""

    def __init__(self, model: nn.Module, name: str):
        _check(model, name)
        self.model = model
        self.blocks = [Block("stem", "bn1", model.conv_stem.out_channels, None, stage="stem")]
        self.blocks += [Block(f"blocks.{s}.{b}", f"blocks.{s}.{b}", _width(block), None, stage=f"blocks.{s}")
                        for s, stage in enumerate(model.blocks) for b, block in enumerate(stage)]
        if hasattr(model, "bn2"):  # EfficientNet: the head's input is conv_head and bn2's output
            width = model.conv_head.out_channels
            self.blocks.append(Block("features", "bn2", width, IdentityPath.identity(width), stage="features"))
            self._unembed = model.classifier
        else:  # MobileNetV3: the last block's map is pooled, then conv_head and act2 act on the 1x1 map
            self.blocks[-1] = replace(self.blocks[-1], path=IdentityPath.identity(self.blocks[-1].channels))
            self._unembed = nn.Sequential(on_pooled_vector(model.conv_head, model.norm_head, model.act2),
                                          model.classifier)

    @property
    def unembed(self) -> nn.Module:
        return self._unembed

    @property
    def head_dim(self) -> int:
        return self.blocks[-1].channels


FAMILY = timm_family(check=_check, adapter=MBConvAdapter)
