"""torchvision's ImageNet ResNets: ``torchvision:resnet{18,34,50,101,152}``.

Blocks: ``stem`` (the output of ``maxpool``) and every ``layerS.B``; identity
paths along the ``downsample`` shortcuts (:mod:`~vision_lens.adapters.resnet_layout`).
"""

from __future__ import annotations

from torch import nn
from torchvision import models

from .base import ModelAdapter, ModelFamily
from .errors import UnknownModelError
from .resnet_layout import STAGES, resnet_blocks
from .torchvision_family import TorchvisionAdapter, classes_of, read_as_torchvision
from .weights import LoadedWeights

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _channels(model: models.ResNet) -> dict[str, int]:
    # A stage outputs what the next one takes in; the last one feeds the head.
    inputs = [model.get_submodule(s)[0].conv1.in_channels for s in STAGES] + [model.fc.in_features]
    return {"maxpool": inputs[0], **dict(zip(STAGES, inputs[1:]))}


class TorchvisionResNetAdapter(TorchvisionAdapter):
    def __init__(self, model: models.ResNet):
        self.model = model
        self.blocks = resnet_blocks(model, "maxpool", _channels(model))


def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """A random-init network (``state`` None), or one shaped like the checkpoint ``state`` (its class count)."""
    if arch not in RESNETS:
        raise UnknownModelError(f"--model torchvision:{arch} is not supported; use one of {', '.join(RESNETS)}")
    return models.get_model(arch, num_classes=classes_of(state, arch, num_classes))


def wrap(model: models.ResNet, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return read_as_torchvision(TorchvisionResNetAdapter(model), arch)


FAMILY = ModelFamily(build, wrap)
