"""timm's ResNet family: ``timm:<name>`` for models with torchvision's ``layerS.B`` layout.

Blocks come from the module tree (``forward_intermediates`` gives only stage
outputs): the stem, i.e. the module after which ``layer1`` starts (``maxpool``
in timm's ResNet, deep stems included; ``pool0`` in the legacy SENets), then
every ``layerS.B``. The identity path is the chain of ``downsample`` shortcuts,
see :func:`~vision_lens.adapters.torchvision_models.shortcut_stride`: exact for
1x1 strided conv + BN and for timm's ``avg_down`` (``resnet*d``) on inputs
whose side is a multiple of 32; blocks before any other shortcut (e.g.
GroupNorm in ``resnet50_gn``) get no path, so their logit lens and transfers
are reported as undefined. Other layouts (ResNetV2's ``stages.N.blocks.M``,
non-ResNets) are refused.

Hub and local weights both load through timm's ``load_pretrained`` (what
``create_model(pretrained=True)`` calls), a local file given as
``pretrained_cfg_overlay=dict(file=...)``. Preprocessing is the model's pretrained config (``resolve_data_config`` +
``create_transform``) whatever the weights; class indices are the sorted
ImageNet synsets, ImageFolder's order.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from .base import (
    Block,
    ModelAdapter,
    WeightsError,
    file_sha256,
    load_state_dict_strict,
    register_adapter,
    state_dict_sha256,
)
from .torchvision_models import STAGES, resnet_blocks

AVERAGE_POOLS = ("avg", "fast", "fastavg")  # timm's SelectAdaptivePool2d types that average


def _resnet_layout(model: nn.Module, name: str, input_side: int) -> list[Block]:
    """The blocks of a timm model in torchvision's ResNet layout; ValueError for any other layout."""
    children = dict(model.named_children())
    order = list(children)
    pool = getattr(model, "global_pool", None)
    if (
        not all(isinstance(children.get(s), nn.Sequential) for s in STAGES)
        or order.index("layer1") == 0
        or not all(hasattr(block, "downsample") for s in STAGES for block in children[s])
        or getattr(pool, "pool_type", None) not in AVERAGE_POOLS
        or not isinstance(model.get_classifier(), nn.Linear)
    ):
        raise ValueError(
            f"--model timm:{name} ({type(model).__name__}) is not supported yet: vision-lens reads timm models "
            f"laid out like torchvision's ResNet (stem, layer1..layer4 of residual blocks with a downsample "
            f"shortcut, global average pool, linear classifier), e.g. timm:resnet50 or timm:resnet50d"
        )
    stem = order[order.index("layer1") - 1]
    modules = [f["module"] for f in model.feature_info]
    channels = {s: model.feature_info[modules.index(s)]["num_chs"] for s in STAGES}
    # The stem's output is layer1's input: the feature_info entry before layer1 is the
    # stem's last activation, whose channels the following pool keeps.
    channels[stem] = model.feature_info[modules.index("layer1") - 1]["num_chs"]
    # Stage maps are input_side / 4, / 8, / 16 where avg_down shortcuts average 2x2 cells.
    return resnet_blocks(model, stem, channels, even_maps=input_side % 32 == 0)


class TimmResNetAdapter(ModelAdapter):
    """A timm ResNet-family classifier with its pretrained config's preprocessing."""
    input_size = None  # the transform resizes and centre-crops any image to the model's input

    def __init__(self, model: nn.Module, blocks: list[Block], weights_id: str):
        self.model = model
        self.blocks = blocks
        self.weights_id = weights_id
        n = self.head.out_features
        subset = infer_imagenet_subset(model)
        # First synonym of each synset's description, like torchvision's category names.
        self.class_names = (
            [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]
            if subset and ImageNetInfo(subset).num_classes() == n
            else [str(i) for i in range(n)]
        )

    @property
    def head(self) -> nn.Linear:
        return self.model.get_classifier()

    @property
    def transform(self):
        return create_transform(**resolve_data_config(model=self.model))


def _checkpoint(path: str, arch: str) -> tuple[dict, int]:
    """A local file read by timm's reader (safetensors, EMA or wrapped state dicts) and its class count."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; pass a .pth/.safetensors state dict of timm:{arch}")
    try:
        state = timm.models.load_state_dict(path)
    except Exception as exc:  # torch.load and safetensors raise several types for a damaged file
        raise WeightsError(f"--weights {path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    key = get_pretrained_cfg(arch).classifier + ".weight"
    if key not in state:
        raise WeightsError(f"--weights {path}: no {key}, so not a checkpoint of the classifier timm:{arch}")
    return state, state[key].shape[0]


@register_adapter("timm")
def build_timm(
    arch: str, weights: str | None = None, num_classes: int | None = None, seed: int = 0
) -> TimmResNetAdapter:
    """``timm:<name>``: ``weights`` is ``"pretrained"``/None (timm's hub), ``"random"`` or a local file.

    ``num_classes`` applies to random initialisation (default: the pretrained
    config's); a checkpoint brings its own.
    """
    if not timm.is_model(arch):
        raise ValueError(f"--model timm:{arch}: timm has no model of that name (see timm.list_models('resnet*'))")
    cfg = get_pretrained_cfg(arch)
    state = None
    if weights == "random":
        num_classes = num_classes or cfg.num_classes
    elif weights in (None, "pretrained"):
        if not (cfg.hf_hub_id or cfg.url):
            raise WeightsError(f"timm publishes no weights for timm:{arch}; pass --weights PATH or --weights random")
        num_classes = cfg.num_classes
    else:
        state, num_classes = _checkpoint(weights, arch)
    # timm's loader drops a classifier whose size differs from the config's: the config gets the file's.
    overlay = {} if state is None else dict(file=str(weights), num_classes=num_classes)
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    blocks = _resnet_layout(model, arch, resolve_data_config(model=model)["input_size"][-1])  # before any download
    if weights == "random":
        return TimmResNetAdapter(model, blocks, "random-init:" + state_dict_sha256(model.state_dict()))
    try:
        timm.models.load_pretrained(model, num_classes=num_classes)
    except OSError as exc:  # the Hugging Face hub or a URL, unreachable
        where = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        raise WeightsError(
            f"could not download the pretrained weights of timm:{arch} from {where} ({exc.__class__.__name__}: "
            f"{exc}) Offline, download them on a machine with internet access and pass --weights PATH."
        ) from exc
    except RuntimeError:  # load_state_dict(strict=True) refused a local file: list its keys
        if state is not None:
            load_state_dict_strict(model, state, weights)
        raise
    weights_id = f"timm:{cfg.hf_hub_id or cfg.url}" if state is None else file_sha256(weights)
    return TimmResNetAdapter(model, blocks, weights_id)
