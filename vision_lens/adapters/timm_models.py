"""timm models: ``timm:<name>`` for its ResNets (torchvision's ``layerS.B`` layout) and its class-token ViTs.

ViTs (``timm:vit_*``, ``timm:deit_*``, any ``VisionTransformer``) are read by
:class:`~vision_lens.adapters.vit.VisionTransformerAdapter`: the embedding output
and every ``blocks.N``, through ``norm``/``fc_norm`` and ``head``; one that pools its
tokens before the head is refused by name. The rest of this note is about ResNets.

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

Published weights load through timm's ``load_pretrained`` (what
``create_model(pretrained=True)`` calls); a local file is read by timm's
``load_state_dict`` (safetensors or torch) and loaded strictly. Preprocessing is the model's pretrained config (``resolve_data_config`` +
``create_transform``) whatever the weights; class indices are the sorted
ImageNet synsets, ImageFolder's order.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..readout import Block
from .base import ModelAdapter, ModelError, ModelFamily, UnknownModelError, WeightsError, register_family
from .torchvision_models import STAGES, resnet_blocks
from .vit import VisionTransformerAdapter, check_readout

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
        raise ModelError(
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

    def __init__(self, model: nn.Module, blocks: list[Block]):
        self.model = model
        self.blocks = blocks
        self.class_names, self.class_folders = class_names(model, self.num_classes)

    @property
    def unembed(self) -> nn.Linear:
        return self.model.get_classifier()

    @property
    def transform(self):
        return create_transform(**resolve_data_config(model=self.model))


def class_names(model: nn.Module, n: int) -> tuple[list[str], list[str] | None]:
    """``(class_names, class_folders)`` of the model's ``n`` outputs where they are an ImageNet subset timm knows:
    the first synonym of each synset's description (like torchvision's category names), and the synsets (the
    folder names of ImageNet laid out by synset); else the output indices, and None (matched by position)."""
    subset = infer_imagenet_subset(model)
    if subset and ImageNetInfo(subset).num_classes() == n:
        info = ImageNetInfo(subset)
        return [d.split(",")[0] for d in info.label_descriptions()], list(info.label_names())
    return [str(i) for i in range(n)], None


def _is_vit(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer)


def _wrap(model: nn.Module, arch: str, weights_id: str) -> ModelAdapter:
    if _is_vit(model):
        transform = create_transform(**resolve_data_config(model=model))
        names, folders = class_names(model, model.head.out_features)
        return VisionTransformerAdapter(model, names, transform, input_size=None, class_folders=folders)
    return TimmResNetAdapter(model, _blocks(model, arch))


def _read(path: str) -> dict:
    """A local file read by timm's reader (safetensors, EMA or wrapped state dicts)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; pass a .pth/.safetensors state dict of the timm model")
    try:
        return timm.models.load_state_dict(path)
    except Exception as exc:  # torch.load and safetensors raise several types for a damaged file
        raise WeightsError(f"--weights {path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc


def _config(arch: str):
    if not timm.is_model(arch):
        raise UnknownModelError(f"--model timm:{arch}: timm has no model of that name (see timm.list_models())")
    return get_pretrained_cfg(arch)


def _blocks(model: nn.Module, arch: str) -> list[Block]:
    return _resnet_layout(model, arch, resolve_data_config(model=model)["input_size"][-1])


def _build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """A random-init network with ``num_classes`` (default: the pretrained config's), or one shaped like ``state``.

    Unsupported layouts are refused here, before any download.
    """
    cfg = _config(arch)
    if state is not None:
        key = cfg.classifier + ".weight"
        if key not in state:
            raise WeightsError(f"no {key}, so not a checkpoint of the classifier timm:{arch}")
        num_classes = state[key].shape[0]
    model = timm.create_model(arch, num_classes=num_classes or cfg.num_classes)
    if _is_vit(model):
        check_readout(model, f"timm:{arch}")
    else:
        _blocks(model, arch)
    return model


def _load_published(model: nn.Module, arch: str) -> str:
    """timm's own hub loader, as ``create_model(pretrained=True)``: the weights' id is their hub name."""
    cfg = _config(arch)
    if not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm publishes no weights for timm:{arch}; pass --weights PATH or --weights random")
    try:
        timm.models.load_pretrained(model, num_classes=cfg.num_classes)
    except OSError as exc:  # the Hugging Face hub or a URL, unreachable
        where = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        raise WeightsError(
            f"could not download the pretrained weights of timm:{arch} from {where} ({exc.__class__.__name__}: "
            f"{exc}) Offline, download them on a machine with internet access and pass --weights PATH."
        ) from exc
    return f"timm:{cfg.hf_hub_id or cfg.url}"


# timm:<name> for models in torchvision's ResNet layout and class-token ViTs; "pretrained" loads through timm's
# hub loader.
register_family("timm", ModelFamily(
    _build,
    _wrap,
    lambda arch: _config(arch).hf_hub_id or _config(arch).url,
    load_published=_load_published,
    read=_read,
    names=timm.list_models,
))
