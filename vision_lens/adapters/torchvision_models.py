"""torchvision's ImageNet classifiers: ``torchvision:googlenet`` and ``torchvision:resnet{18,34,50,101,152}``.

Weights, preprocessing and category names come from torchvision's weights
enum (``weights.DEFAULT``, ``weights.transforms()``, ``weights.meta``). Class
indices follow torchvision's ImageNet order, the sorted synsets (n01440764,
...), which are the ``class_folders`` that data classes are matched to by name.

The ResNet helpers here (``resnet_blocks``, ``shortcut_stride``) also serve
timm's ResNets, which share torchvision's module tree.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import nn
from torchvision import models

from ..readout import Block, IdentityPath
from ..resources import imagenet_synsets
from .base import ModelAdapter, ModelError, ModelFamily, UnknownModelError, WeightsError, path_reader, register_family

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
STAGES = ("layer1", "layer2", "layer3", "layer4")
# The max-pools between these blocks (maxpool1..4) are left out: they learn nothing
# and only subsample the previous block's map, so they hold no new representation.
GOOGLENET_BLOCKS = (
    "conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
    "inception4c", "inception4d", "inception4e", "inception5a", "inception5b",
)
# GoogLeNet's auxiliary classifiers and the block whose full output map each reads.
GOOGLENET_AUX = {"inception4a": "aux1", "inception4d": "aux2"}


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


def _googlenet_blocks(model: models.GoogLeNet) -> list[Block]:
    def out_channels(module: nn.Module) -> int:  # every conv is followed by its BatchNorm
        return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    blocks = []
    for name in GOOGLENET_BLOCKS:
        module = model.get_submodule(name)
        inception = name.startswith("inception")
        branches = [module.branch1, module.branch2, module.branch3, module.branch4] if inception else [module]
        channels = sum(out_channels(b) for b in branches)
        # Concatenated branches give no linear path to the head; the last block is the head's input.
        path = IdentityPath.identity(channels) if name == GOOGLENET_BLOCKS[-1] else None
        blocks.append(Block(name, name, channels, path))
    return blocks


def _torchvision_resnet_channels(model: models.ResNet) -> dict[str, int]:
    # A stage outputs what the next one takes in; the last one feeds the head.
    inputs = [model.get_submodule(s)[0].conv1.in_channels for s in STAGES] + [model.fc.in_features]
    return {"maxpool": inputs[0], **dict(zip(STAGES, inputs[1:]))}


class TorchvisionAdapter(ModelAdapter):
    """A torchvision classifier with the published weights' preprocessing and category names."""
    input_size = None  # the transform resizes and centre-crops any image to the model's input

    def __init__(
        self, model: nn.Module, published: models.WeightsEnum, aux_classifiers: dict[str, nn.Module] | None = None
    ):
        self.model = model
        self.published = published
        self.aux_classifiers = aux_classifiers or {}
        if isinstance(model, models.GoogLeNet):
            self.blocks = _googlenet_blocks(model)
        else:
            self.blocks = resnet_blocks(model, "maxpool", _torchvision_resnet_channels(model))
        categories = published.meta["categories"]
        n = model.fc.out_features
        self.class_names = list(categories) if n == len(categories) else [str(i) for i in range(n)]
        self.class_folders = imagenet_synsets() if n == len(categories) else None

    @property
    def unembed(self) -> nn.Linear:
        return self.model.fc

    @property
    def transform(self):
        # Random-init and local checkpoints get the published weights' preprocessing too.
        return self.published.transforms()


def _check(arch: str) -> str:
    if arch not in ("googlenet", *RESNETS):
        raise UnknownModelError(f"--model torchvision:{arch} is not supported; use googlenet or one of "
                                f"{', '.join(RESNETS)}")
    return arch


def _build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """A random-init network (``state`` None), or one shaped like the checkpoint ``state``.

    A checkpoint decides its class count and, for GoogLeNet, whether it has
    the auxiliary classifiers.
    """
    if state is not None and "fc.weight" not in state:
        raise WeightsError(f"checkpoint has no fc.weight, so it is not a torchvision {arch} checkpoint")
    num_classes = state["fc.weight"].shape[0] if state is not None else num_classes or 1000
    if _check(arch) != "googlenet":
        return models.get_model(arch, num_classes=num_classes)
    # transform_input=True: the published weights expect torchvision's normalisation
    # remapped inside the model to the (x - 0.5) / 0.5 of the original training.
    aux_logits = state is None or "aux1.fc2.weight" in state
    return models.get_model(
        arch, num_classes=num_classes, aux_logits=aux_logits, transform_input=True, init_weights=state is None
    )


def _is_published_googlenet(weights_id: str, published: models.WeightsEnum) -> bool:
    """Whether weights are torchvision's GoogLeNet file (downloaded or a local copy), by its sha256."""
    name = published.url.rsplit("/", 1)[-1]  # googlenet-1378be20.pth: torch.hub names carry a sha256 prefix
    return weights_id.startswith(name.rsplit("-", 1)[-1].split(".")[0])


def _wrap(model: nn.Module, arch: str, weights_id: str) -> TorchvisionAdapter:
    published = models.get_model_weights(arch).DEFAULT
    aux = {}
    # torchvision documents that the auxiliary heads in its published GoogLeNet file
    # were never trained: reporting them would show chance accuracy as the model's.
    if arch == "googlenet" and model.aux_logits and not _is_published_googlenet(weights_id, published):
        aux = {block: model.get_submodule(name) for block, name in GOOGLENET_AUX.items()}
    return TorchvisionAdapter(model, published, aux)


# torchvision:googlenet and torchvision:resnet{18,34,50,101,152}; "pretrained" is torchvision's DEFAULT weights.
register_family("torchvision", ModelFamily(_build, _wrap, lambda arch: models.get_model_weights(_check(arch)).DEFAULT.url))
