"""InceptionV1 (GoogLeNet) for 32x32 CIFAR images: ``cifar:inceptionv1``.

GoogLeNet's block structure and names (``conv1`` .. ``conv3``, ``inception3a`` ..
``inception5b``, auxiliary classifiers ``aux1`` after ``inception4a`` and ``aux2``
after ``inception4d``), built from torchvision's own ``Inception``,
``InceptionAux`` and ``BasicConv2d`` modules. Adapted to 32x32 inputs: the stem
keeps the full resolution (3x3 convolutions) and max-pools once after ``conv3``,
as GoogLeNet's ``maxpool2`` does, so the inception stages see 16x16, 8x8 and 4x4
maps (the resolutions of a CIFAR ResNet's stages, halved: that keeps training
within reach of a CPU). ``width`` scales every
channel count (1.0 is GoogLeNet's); a checkpoint carries its own width.
Train one with ``scripts/train_cifar.py --arch inceptionv1``.

As in every Inception, concatenated branches give no linear path to the head:
only ``inception5b`` (the head's input) has one, so the logit lens and transfer
are undefined elsewhere, and the auxiliary classifiers are reported beside the
lenses at their blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.googlenet import BasicConv2d, Inception, InceptionAux

from ..readout import Block, IdentityPath
from .base import ModelAdapter, ModelFamily
from .cifar import read_as_cifar
from .errors import WeightsError
from .weights import LoadedWeights

# GoogLeNet's (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per inception block.
INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128), "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
POOL_AFTER = ("conv3", "inception3b", "inception4e")  # where GoogLeNet halves the resolution
AUX_AT = {"inception4a": "aux1", "inception4d": "aux2"}
BLOCKS = ("conv1", "conv2", "conv3", *INCEPTIONS)


RANDOM_INIT_WIDTH = 0.5  # the width scripts/train_cifar.py --arch inceptionv1 trains by default: random init matches it


def scaled(channels: int, width: float) -> int:
    return max(4, round(channels * width))


class CifarInceptionV1(nn.Module):
    """GoogLeNet's topology for 32x32 inputs; ``forward`` gives the logits, ``forward_train`` also the aux ones."""

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        self.register_buffer("width", torch.tensor(float(width)))  # in the state dict: checkpoints rebuild exactly
        self.conv1 = BasicConv2d(3, scaled(64, width), kernel_size=3, padding=1)
        self.conv2 = BasicConv2d(scaled(64, width), scaled(64, width), kernel_size=1)
        self.conv3 = BasicConv2d(scaled(64, width), scaled(192, width), kernel_size=3, padding=1)
        channels = scaled(192, width)
        for name, config in INCEPTIONS.items():
            c1, c3r, c3, c5r, c5, pool = (scaled(c, width) for c in config)
            setattr(self, name, Inception(channels, c1, c3r, c3, c5r, c5, pool))
            channels = c1 + c3 + c5 + pool
            if name in AUX_AT:
                setattr(self, AUX_AT[name], InceptionAux(channels, num_classes))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, num_classes)

    def _features(self, x: Tensor, aux: list[Tensor] | None) -> Tensor:
        for name in BLOCKS:
            x = getattr(self, name)(x)
            if aux is not None and name in AUX_AT:
                aux.append(getattr(self, AUX_AT[name])(x))
            if name in POOL_AFTER:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        return self.dropout(x.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self._features(x, None))

    def forward_train(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The logits and the auxiliary classifiers' logits (``aux1``, ``aux2``), for training."""
        aux: list[Tensor] = []
        return self.fc(self._features(x, aux)), aux


class CifarInceptionAdapter(ModelAdapter):
    """Blocks ``conv1`` .. ``inception5b``; only the last has a path; ``aux1`` and ``aux2`` reported beside them."""

    def __init__(self, model: CifarInceptionV1):
        self.model = model
        self.aux_classifiers = {block: model.get_submodule(aux) for block, aux in AUX_AT.items()}
        self.blocks = []
        for name in BLOCKS:
            module = model.get_submodule(name)
            channels = module.bn.num_features if name.startswith("conv") else sum(
                [b.bn.num_features for b in (module.branch1, module.branch2[-1], module.branch3[-1], module.branch4[-1])]
            )
            path = IdentityPath.identity(channels) if name == BLOCKS[-1] else None
            self.blocks.append(Block(name, name, channels, path))

    @property
    def unembed(self) -> nn.Linear:
        return self.model.fc

    @property
    def transform(self):
        return self._transform


def build(arch: str, state: dict | None, num_classes: int | None) -> CifarInceptionV1:
    """Random init (``state`` None) at ``RANDOM_INIT_WIDTH``, or shaped like the checkpoint ``state`` (its width
    and classes)."""
    if state is None:
        return CifarInceptionV1(num_classes or 10, RANDOM_INIT_WIDTH)
    if "width" not in state or "fc.weight" not in state:
        raise WeightsError("no width or fc.weight, so not a checkpoint of cifar:inceptionv1 "
                           "(scripts/train_cifar.py --arch inceptionv1 writes them)")
    return CifarInceptionV1(state["fc.weight"].shape[0], float(state["width"]))


def wrap(model: CifarInceptionV1, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return read_as_cifar(CifarInceptionAdapter(model), weights)


FAMILY = ModelFamily(build, wrap)
