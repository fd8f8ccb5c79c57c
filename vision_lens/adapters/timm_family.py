"""What every ``timm:`` family shares: building a timm model by name, its weights and its pretrained config.

Each timm layout (ResNets, class-token ViTs, MBConv networks, ConvNeXt) is one
file that gives :func:`timm_family` a ``check`` (refuse a model outside the
layout, before any download) and an adapter class; the registry routes a
``timm:<name>`` to the layout that registers timm's module of that name.

* **Build**: ``timm.create_model(name)`` at random init, with the pretrained
  config's classes or a checkpoint's (its classifier's rows).
* **Published weights** load through timm's ``load_pretrained`` (what
  ``create_model(pretrained=True)`` calls); a local file is read by timm's
  ``load_state_dict`` (safetensors or torch) and loaded strictly.
* **Preprocessing** is the model's pretrained config (``resolve_data_config`` +
  ``create_transform``) whatever the weights; class indices are the sorted
  ImageNet synsets, ImageFolder's order, where timm knows the subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import timm
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from .base import ModelAdapter, ModelFamily
from .errors import UnknownModelError, WeightsError
from .weights import LoadedWeights

AVERAGE_POOLS = ("avg", "fast", "fastavg")  # timm's SelectAdaptivePool2d types that average


def timm_family(check: Callable[[nn.Module, str], object], adapter: Callable[[nn.Module, str], ModelAdapter]
                ) -> ModelFamily:
    """The family of timm models in one layout: ``check(model, name)`` raises ModelError for a model outside it,
    ``adapter(model, name)`` wraps one (``name`` is ``timm:<arch>``, for messages)."""

    def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
        """A random-init network with ``num_classes`` (default: the pretrained config's), or one shaped like
        ``state``. Unsupported layouts are refused here, before any download."""
        cfg = _config(arch)
        if state is not None:
            key = cfg.classifier + ".weight"
            if key not in state:
                raise WeightsError(f"no {key}, so not a checkpoint of the classifier timm:{arch}")
            num_classes = state[key].shape[0]
        model = timm.create_model(arch, num_classes=num_classes or cfg.num_classes)
        check(model, f"timm:{arch}")
        return model

    def wrap(model: nn.Module, arch: str, weights: LoadedWeights) -> ModelAdapter:
        return read_as_timm(adapter(model, f"timm:{arch}"))

    return ModelFamily(build, wrap, load_published=_load_published, read=_read)


class TimmAdapter(ModelAdapter):
    """What a timm layout's adapter inherits: the preprocessing of its model's pretrained config, which resizes and
    centre-crops any image to the model's input."""

    input_size = None

    @property
    def transform(self):
        return create_transform(**resolve_data_config(model=self.model))


def read_as_timm(adapter: ModelAdapter) -> ModelAdapter:
    """``adapter`` with the names of its classes (see :func:`class_names`)."""
    adapter.class_names, adapter.class_folders = class_names(adapter.model, adapter.num_classes)
    return adapter


def class_names(model: nn.Module, n: int) -> tuple[list[str], list[str] | None]:
    """``(class_names, class_folders)`` of the model's ``n`` outputs where they are an ImageNet subset timm knows:
    the first synonym of each synset's description (like torchvision's category names), and the synsets (the
    folder names of ImageNet laid out by synset); else the output indices, and None (matched by position)."""
    subset = infer_imagenet_subset(model)
    if subset and ImageNetInfo(subset).num_classes() == n:
        info = ImageNetInfo(subset)
        return [d.split(",")[0] for d in info.label_descriptions()], list(info.label_names())
    return [str(i) for i in range(n)], None


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
