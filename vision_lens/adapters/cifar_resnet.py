"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts, post- and pre-activation.

``cifar:resnet<depth>``: the module tree matches the public checkpoints of
akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layer{1,2,3}.{b}``,
``linear``), so they load with ``strict=True`` once the ``module.`` prefix of
their DataParallel wrapper is removed. A ReLU follows every sum.

``cifar:preact_resnet<depth>``: full pre-activation blocks (He et al. 2016,
"Identity Mappings in Deep Residual Networks"): each block adds
``conv(relu(bn(conv(relu(bn(x))))))`` to a stream that nothing else touches, and
the option-A shortcuts carry the stream across stages linearly, so the stream
at the end is the stem's output plus every block's update. The head reads the
globally averaged stream through a LayerNorm and a linear layer: a language
model's final LayerNorm and unembedding, on images (He et al. put BN-ReLU before
the pool instead, which no pooled vector reads exactly). Train one with
``scripts/train_cifar.py --arch preact_resnet20``.

``cifar:plain<depth>``: ResNet-(6n+2)'s architecture with its shortcuts removed,
the "plain" network He et al. trained beside their CIFAR ResNets: each block is
``relu(bn2(conv2(relu(bn1(conv1(x))))))`` and nothing carries a block's input
past it. There is no residual stream, yet within a stage every block's output
has one shape, so a translator fitted on one block can be applied to another.
The adapter gives each block the ResNet's option-A channel embedding (subsample
by 2, zero-pad channels) as its path into the head's space, for the tuned lens's
skip term and for transfer across stages; the network itself has no such path,
so its logit lens is the network's own read-out only at the last block. Train
one with ``scripts/train_cifar.py --arch plain20``.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from ..readout import Block
from .base import ModelAdapter, ModelFamily, path_reader
from .cifar import read_as_cifar
from .errors import ModelError, UnknownModelError
from .weights import LoadedWeights


class OptionAShortcut(nn.Module):
    """Identity shortcut across a stage change: subsample by 2, zero-pad channels."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = OptionAShortcut(planes // 4)
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PlainBlock(nn.Module):
    """ResNet's basic block without its shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class PreActBlock(nn.Module):
    """A full pre-activation block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, the sum left as it is."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = OptionAShortcut(planes // 4)
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)


def _depth_blocks(depth: int) -> int:
    if (depth - 2) % 6:
        raise ModelError(f"--model: a CIFAR ResNet's depth must be 6n+2 (20, 32, 44, ...), got {depth}")
    return (depth - 2) // 6


def _stage(block: type[nn.Module], in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(block(in_planes, planes, stride), *(block(planes, planes) for _ in range(n - 1)))


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of n blocks, 16/32/64 channels; ``block=PlainBlock`` for the plain
    network of the same depth (no shortcuts)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, block: type[nn.Module] = BasicBlock):
        super().__init__()
        n = _depth_blocks(depth)
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(block, 16, 16, n, 1)
        self.layer2 = _stage(block, 16, 32, n, 2)
        self.layer3 = _stage(block, 32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean((2, 3)))


class PreActCifarResNet(nn.Module):
    """Pre-activation ResNet-(6n+2) for 32x32 inputs; the head is pool, LayerNorm, linear (see the module doc)."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        n = _depth_blocks(depth)
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.layer1 = _stage(PreActBlock, 16, 16, n, 1)
        self.layer2 = _stage(PreActBlock, 16, 32, n, 2)
        self.layer3 = _stage(PreActBlock, 32, 64, n, 2)
        self.norm = nn.LayerNorm(64)
        self.linear = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.norm(x.mean((2, 3))))


class CifarResNetAdapter(ModelAdapter):
    """Blocks ``stem`` and every ``layerS.B``, each with its option-A path into the head's space."""

    def __init__(self, model: CifarResNet | PreActCifarResNet):
        self.model = model
        if isinstance(model.layer2[0], PlainBlock):
            # No shortcut to read off: the option-A embedding a ResNet of this shape would have (module doc).
            read = path_reader(nn.ModuleDict({"into_layer2": OptionAShortcut(8), "into_layer3": OptionAShortcut(16)}))
            carry = {"layer1": ("into_layer2", "into_layer3"), "layer2": ("into_layer3",), "layer3": ()}
        else:
            read = path_reader(model)
            # The option-A shortcut that carries stage s into stage s+1 sits in that stage's first block,
            # and each one keeps every 2nd pixel.
            carry = {"layer1": ("layer2.0.shortcut", "layer3.0.shortcut"), "layer2": ("layer3.0.shortcut",),
                     "layer3": ()}
        paths = {s: read(carry[s], c, 2 ** len(carry[s])) for s, c in (("layer1", 16), ("layer2", 32), ("layer3", 64))}
        # The stem's output is the stream that layer1 reads: after BN-ReLU, or straight from the pre-activation
        # net's first convolution. It is a stage of its own.
        stem = "conv1" if isinstance(model, PreActCifarResNet) else "relu"
        self.blocks = [Block("stem", stem, 16, paths["layer1"], stage="stem")]
        for stage, channels in (("layer1", 16), ("layer2", 32), ("layer3", 64)):
            for b in range(len(model.get_submodule(stage))):
                self.blocks.append(Block(f"{stage}.{b}", f"{stage}.{b}", channels, paths[stage], stage=stage))
        self._unembed = (nn.Sequential(model.norm, model.linear) if isinstance(model, PreActCifarResNet)
                         else model.linear)

    @property
    def unembed(self) -> nn.Module:
        """The linear head; for the pre-activation net, its LayerNorm and then the linear head."""
        return self._unembed

    @property
    def transform(self):
        return self._transform


def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """``resnet<depth>``, ``preact_resnet<depth>`` or ``plain<depth>``: random init with ``num_classes`` (default
    10), or shaped like the checkpoint ``state``, which decides its class count (the pipeline checks it against the
    data)."""
    match = re.fullmatch(r"(resnet|preact_resnet|plain)(\d+)", arch)
    if match is None:
        raise UnknownModelError(f"--model cifar:{arch}: not a CIFAR ResNet (cifar:resnet<6n+2>, "
                                "cifar:preact_resnet<6n+2>, cifar:plain<6n+2>)")
    if state is not None and "linear.weight" in state:
        num_classes = state["linear.weight"].shape[0]
    kind, depth = match.group(1), int(match.group(2))
    if kind == "preact_resnet":
        return PreActCifarResNet(depth, num_classes or 10)
    return CifarResNet(depth, num_classes or 10, block=PlainBlock if kind == "plain" else BasicBlock)


def wrap(model: nn.Module, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return read_as_cifar(CifarResNetAdapter(model), weights)


FAMILY = ModelFamily(build, wrap)
