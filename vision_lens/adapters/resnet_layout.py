"""ResNets in torchvision's module tree (``layer1`` .. ``layer4`` of blocks with a ``downsample`` shortcut): their
blocks and identity paths, shared by ``torchvision:resnet*`` and timm's ResNets, which keep that tree."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import nn

from ..readout import Block
from .base import path_reader

STAGES = ("layer1", "layer2", "layer3", "layer4")


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [leaf for child in module for leaf in _leaves(child)] if type(module) is nn.Sequential else [module]


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def shortcut_stride(shortcuts: Sequence[nn.Module], even_maps: bool = True) -> int | None:
    """How far a chain of shortcut modules subsamples, or None unless it acts on every pixel alike.

    Linear shortcuts commute with global average pooling once capture pools
    on the sub-grid they read. Allowed, by exact type (timm's subclasses such
    as ``BatchNormAct2d`` add nonlinearities):

    * unpadded 1x1 convolutions: stride s reads the sub-grid ``x[::s, ::s]``;
    * ``BatchNorm2d`` (eval mode: a per-channel affine map) and ``Identity``;
    * non-overlapping average pools (timm's ``avg_down``, with ``ceil_mode``
      as timm builds them) before any strided convolution, if ``even_maps``:
      the maps they read have even sides, so that averaging cells and then
      the whole map is averaging the whole map.
    """
    stride, averaged = 1, False
    for module in (leaf for shortcut in shortcuts for leaf in _leaves(shortcut)):
        kind = type(module)
        if kind in (nn.Identity, nn.BatchNorm2d):
            continue
        if (
            kind is nn.AvgPool2d and even_maps and module.ceil_mode and _pair(module.padding) == (0, 0)
            and _pair(module.kernel_size) == _pair(module.stride)
        ):
            averaged = True
        elif (
            kind is nn.Conv2d and module.kernel_size == (1, 1) and module.padding == (0, 0)
            and module.stride[0] == module.stride[1] and not (averaged and module.stride[0] > 1)
        ):
            stride *= module.stride[0]
        else:
            return None
    return stride


def resnet_blocks(model: nn.Module, stem: str, channels: Mapping[str, int], even_maps: bool = True) -> list[Block]:
    """``stem`` (the output of module ``stem``) and every ``layerS.B`` of a ResNet in torchvision's layout.

    A block's output reaches the head input through the shortcuts of all
    later blocks: the identity where ``downsample`` is None, the projection
    (1x1 strided conv + BN) where it is not. ``channels`` maps the stem and
    each stage (``layer1``...) to its output channels; ``even_maps`` as in
    :func:`shortcut_stride`.
    """
    names = [f"{stage}.{b}" for stage in STAGES for b in range(len(model.get_submodule(stage)))]
    read = path_reader(model)
    blocks = []
    for k, name in enumerate([stem, *names]):
        later = [f"{n}.downsample" for n in names[k:] if model.get_submodule(n).downsample is not None]
        stride = shortcut_stride([model.get_submodule(p) for p in later], even_maps)
        c = channels[name.split(".")[0]]
        path = None if stride is None else read(later, c, stride)
        # The stem is named for what it is; its module is where the stem ends (maxpool, pool0). It is a stage
        # of its own, and each layerS one stage.
        blocks.append(Block("stem", name, c, path, stage="stem") if k == 0 else
                      Block(name, name, c, path, stage=name.split(".")[0]))
    return blocks
