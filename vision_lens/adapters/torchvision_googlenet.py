"""torchvision's GoogLeNet (InceptionV1): ``torchvision:googlenet``.

Blocks ``conv1`` .. ``conv3`` and ``inception3a`` .. ``inception5b``; the
max-pools between them are left out: they learn nothing and only subsample the
previous block's map, so they hold no new representation. Concatenated branches
give no linear path to the head, so only ``inception5b`` (the head's input) has
one. The auxiliary classifiers (``aux1`` after ``inception4a``, ``aux2`` after
``inception4d``) are reported beside the lenses where they were trained.
"""

from __future__ import annotations

from torch import nn
from torchvision import models

from ..readout import Block, IdentityPath
from .base import ModelAdapter, ModelFamily
from .errors import UnknownModelError
from .torchvision_family import TorchvisionAdapter, classes_of, read_as_torchvision
from .weights import LoadedWeights

BLOCKS = (
    "conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
    "inception4c", "inception4d", "inception4e", "inception5a", "inception5b",
)
# The auxiliary classifiers and the block whose full output map each reads.
AUX = {"inception4a": "aux1", "inception4d": "aux2"}


class GoogLeNetAdapter(TorchvisionAdapter):
    def __init__(self, model: models.GoogLeNet, aux_classifiers: dict[str, nn.Module]):
        self.model = model
        self.aux_classifiers = aux_classifiers
        self.blocks = []
        for name in BLOCKS:
            module = model.get_submodule(name)
            branches = ([module.branch1, module.branch2, module.branch3, module.branch4]
                        if name.startswith("inception") else [module])
            channels = sum(_out_channels(b) for b in branches)
            path = IdentityPath.identity(channels) if name == BLOCKS[-1] else None
            self.blocks.append(Block(name, name, channels, path))


def _out_channels(module: nn.Module) -> int:  # every conv is followed by its BatchNorm
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """A random-init network (``state`` None), or one shaped like the checkpoint ``state``: its class count and
    whether it has the auxiliary classifiers."""
    if arch != "googlenet":
        raise UnknownModelError(f"--model torchvision:{arch} is not supported; use torchvision:googlenet")
    # transform_input=True: the published weights expect torchvision's normalisation
    # remapped inside the model to the (x - 0.5) / 0.5 of the original training.
    aux_logits = state is None or "aux1.fc2.weight" in state
    return models.get_model(arch, num_classes=classes_of(state, arch, num_classes), aux_logits=aux_logits,
                            transform_input=True, init_weights=state is None)


def wrap(model: models.GoogLeNet, arch: str, weights: LoadedWeights) -> ModelAdapter:
    # torchvision documents that the auxiliary heads in its published GoogLeNet file (downloaded or a local
    # copy, known by its sha256) were never trained: reporting them would show chance accuracy as the model's.
    aux = {}
    if model.aux_logits and not weights.entry.identifies(weights.id):
        aux = {block: model.get_submodule(name) for block, name in AUX.items()}
    return read_as_torchvision(GoogLeNetAdapter(model, aux), arch)


FAMILY = ModelFamily(build, wrap)
