"""The built-in architectures: one registration each, with its weights entry (torch-free).

``vision-lens models``, the README's model table and the contract tests read
these. A stated block count is checked against the built model by
``tests/test_architecture_contract.py``; so are the facts the libraries also
state (torchvision's URLs and accuracies, timm's hub ids, the preprocessing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .. import resources
from .registry import Architecture, Pattern, register
from .weights import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, Weights


@dataclass(frozen=True)
class TimmModules:
    """Takes the timm models defined in these modules of ``timm.models`` (timm's own grouping by architecture)."""

    modules: tuple[str, ...]

    def __call__(self, arch: str) -> bool:
        import timm

        return timm.is_model(arch) and timm.models.is_model_in_modules(arch, self.modules)

    def names(self) -> Iterable[str]:
        import timm

        return timm.list_models(module=list(self.modules))


@dataclass(frozen=True)
class TransformersTask:
    """Takes a transformers model, a folder written by ``save_pretrained`` or a Hugging Face hub id, whose config
    names a model class of ``task`` (``image-classification``, ``causal-lm``: that task's auto mapping in
    transformers). False, never an error, for anything else; True where the hub cannot be reached or
    transformers is not installed, so that the family's build says why."""

    task: str

    def __call__(self, arch: str) -> bool:
        try:
            architectures = _config_architectures(arch)
            if architectures is None:
                return True
            classes = _task_classes(self.task)
            return classes is None or any(a in classes for a in architectures)
        except Exception:  # whatever a stray name, a damaged config or a library raises: not one of ours
            return False

    def names(self) -> Iterable[str]:
        return ()


_TASK_MAPPINGS = {"image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
                  "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"}


def _task_classes(task: str) -> set[str] | None:
    """The model class names of ``task`` in transformers' auto mappings; None where transformers is missing."""
    try:
        from transformers.models.auto import modeling_auto
    except ModuleNotFoundError:
        return None
    names = set()
    for value in getattr(modeling_auto, _TASK_MAPPINGS[task]).values():
        names.update((value,) if isinstance(value, str) else value)
    return names


def _config_architectures(arch: str) -> list[str] | None:
    """The ``architectures`` of a model folder's or hub id's config.json; None where the hub cannot be asked."""
    import json
    from pathlib import Path

    folder = Path(resources.located(arch)).expanduser()
    if folder.is_dir():
        return list(json.loads((folder / "config.json").read_text()).get("architectures") or ())
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", arch) or arch.startswith((".", "/")):
        return []  # neither a folder nor a hub id
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError)
    except ModuleNotFoundError:
        return None
    try:
        return list(json.loads(Path(hf_hub_download(arch, "config.json")).read_text()).get("architectures") or ())
    except (LocalEntryNotFoundError, GatedRepoError):  # offline and not cached, or not allowed: cannot tell
        return None
    except (EntryNotFoundError, RepositoryNotFoundError):  # no such model on the hub
        return []
    except OSError:  # unreachable
        return None


def _family(module: str) -> str:
    return f"{__package__}.{module}:FAMILY"


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 (cifar:)

CIFAR = Preprocessing(IMAGENET_MEAN, IMAGENET_STD)  # no resize; the published checkpoints' normalisation
CIFAR_UNTRAINED = Weights(None, CIFAR, "cifar10")
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CIFAR_RESNET = "stem + every layerS.B, each block's map averaged (option-A shortcut paths); linear head"
_PREACT = "stem + every layerS.B, the pre-activation stream averaged (option-A paths); LayerNorm + linear"
_PLAIN = ("ResNet without shortcuts: stem + every layerS.B, map averaged (option-A channel embedding, not the "
          "network's own path); linear head")


def _trained_here(file: str, arch: str) -> Weights:
    return Weights(f"results/checkpoints/{file}", CIFAR, "cifar10",
                   train=f"python scripts/train_cifar.py --arch {arch} --data CIFAR10_DIR --out results/checkpoints/{file}")


# Their README's test errors: 8.27, 7.37, 6.90, 6.61 and 6.32 %.
for depth, file, accuracy in ((20, "resnet20-12fca82f.th", 0.9173), (32, "resnet32-d509ac18.th", 0.9263),
                              (44, "resnet44-014dd654.th", 0.9310), (56, "resnet56-4bfd9763.th", 0.9339),
                              (110, "resnet110-1d1ed7c2.th", 0.9368)):
    register(Architecture(f"cifar:resnet{depth}", _family("cifar_resnet"), _CIFAR_RESNET, blocks=1 + (depth - 2) // 2,
                          weights=Weights(_AKAMASTER + file, CIFAR, "cifar10", "akamaster/pytorch_resnet_cifar10",
                                          accuracy=accuracy)))
register(Architecture("cifar:resnet<6n+2>", _family("cifar_resnet"), _CIFAR_RESNET + "; any depth 6n+2",
                      CIFAR_UNTRAINED, takes=Pattern(r"resnet\d+"), example="cifar:resnet8"))
register(Architecture("cifar:preact_resnet20", _family("cifar_resnet"), _PREACT, blocks=10,
                      weights=_trained_here("cifar10-preact-resnet20.th", "preact_resnet20")))
register(Architecture("cifar:preact_resnet<6n+2>", _family("cifar_resnet"), _PREACT + "; any depth 6n+2",
                      CIFAR_UNTRAINED, takes=Pattern(r"preact_resnet\d+"), example="cifar:preact_resnet8"))
register(Architecture("cifar:plain20", _family("cifar_resnet"), _PLAIN, blocks=10,
                      weights=_trained_here("cifar10-plain20.th", "plain20")))
register(Architecture("cifar:plain<6n+2>", _family("cifar_resnet"), _PLAIN + "; any depth 6n+2", CIFAR_UNTRAINED,
                      takes=Pattern(r"plain\d+"), example="cifar:plain8"))
register(Architecture("cifar:inceptionv1", _family("cifar_inception"),
                      "conv1 .. inception5b, each block's map averaged; only inception5b has a path; aux heads "
                      "reported", blocks=12, weights=_trained_here("cifar10-inceptionv1.th", "inceptionv1")))
register(Architecture("cifar:vit", _family("cifar_vit"), "embed + every blocks.N, the class token; final LayerNorm + "
                      "head", blocks=7, weights=_trained_here("cifar10-vit.th", "vit")))

# ---------------------------------------------------------------------------------------------------------------
# ImageNet: torchvision's weights enums, timm's hub, lucent's model zoo

_TORCHVISION = "https://download.pytorch.org/models/"
_TV_RESNET = "stem + every layerS.B, map averaged (downsample shortcut paths); linear head"
V1 = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224)  # torchvision's IMAGENET1K_V1 weights
V2 = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, resize=232, crop=224)  # and IMAGENET1K_V2

for arch, blocks, file, preprocessing, accuracy, tag in (
    ("resnet18", 9, "resnet18-f37072fd.pth", V1, 0.69758, "ResNet18_Weights.IMAGENET1K_V1"),
    ("resnet34", 17, "resnet34-b627a593.pth", V1, 0.73314, "ResNet34_Weights.IMAGENET1K_V1"),
    ("resnet50", 17, "resnet50-11ad3fa6.pth", V2, 0.80858, "ResNet50_Weights.IMAGENET1K_V2"),
    ("resnet101", 34, "resnet101-cd907fc2.pth", V2, 0.81886, "ResNet101_Weights.IMAGENET1K_V2"),
    ("resnet152", 51, "resnet152-f82ba261.pth", V2, 0.82284, "ResNet152_Weights.IMAGENET1K_V2"),
):
    register(Architecture(f"torchvision:{arch}", _family("torchvision_resnet"), _TV_RESNET, blocks=blocks,
                          weights=Weights(_TORCHVISION + file, preprocessing, "imagenet", "torchvision", tag, accuracy)))
register(Architecture("torchvision:googlenet", _family("torchvision_googlenet"),
                      "conv1 .. inception5b, each block's map averaged; only inception5b has a path; aux heads",
                      blocks=12, weights=Weights(_TORCHVISION + "googlenet-1378be20.pth", V1, "imagenet", "torchvision",
                                                 "GoogLeNet_Weights.IMAGENET1K_V1", 0.69778)))

_TIMM_HUB = "timm's hub"
_TIMM_OPEN = Weights("hf-hub:timm/<name>.<its default tag>", None, None, _TIMM_HUB)  # the model's pretrained config
_TIMM_RESNETS = TimmModules(("resnet", "senet", "resnest", "res2net", "sknet"))
_VIT = "embed + every blocks.N, the class token; final LayerNorm + head"
_TIMM_VITS = TimmModules(("vision_transformer", "vision_transformer_hybrid", "deit"))


def _timm_hub(hub_id: str, resize: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Weights:
    return Weights(f"hf-hub:{hub_id}", Preprocessing(mean, std, resize, 224, "bicubic"), "imagenet", _TIMM_HUB)


register(Architecture("timm:resnet50", _family("timm_resnet"), _TV_RESNET, blocks=17,
                      weights=_timm_hub("timm/resnet50.a1_in1k", 235)))
register(Architecture("timm:<ResNet>", _family("timm_resnet"), _TV_RESNET + "; any timm model of timm's resnet, "
                      "senet, resnest, res2net or sknet modules in torchvision's layout", _TIMM_OPEN,
                      takes=_TIMM_RESNETS, example="timm:resnet18d"))
register(Architecture("timm:vit_small_patch16_224", _family("timm_vit"), _VIT, blocks=13,
                      weights=_timm_hub("timm/vit_small_patch16_224.augreg_in21k_ft_in1k", 248, (0.5,) * 3, (0.5,) * 3)))
register(Architecture("timm:<ViT>", _family("timm_vit"), _VIT + "; any timm ViT that reads its class token "
                      "(timm:vit_*, timm:deit_*)", _TIMM_OPEN, takes=_TIMM_VITS, example="timm:vit_tiny_patch16_224"))

_EFFICIENTNET = ("stem + every blocks.S.B (inverted residuals: skips within a stage only), map averaged, then the "
                 "features after conv_head and bn2; only those have a path; linear head")
_MOBILENETV3 = ("stem + every blocks.S.B (inverted residuals: skips within a stage only), map averaged; only the last "
                "has a path; conv_head, act2 + linear on the pooled vector")
register(Architecture("timm:efficientnet_b0", _family("timm_mbconv"), _EFFICIENTNET, blocks=18,
                      weights=_timm_hub("timm/efficientnet_b0.ra_in1k", 256)))
register(Architecture("timm:mobilenetv2_100", _family("timm_mbconv"), _EFFICIENTNET, blocks=19,
                      weights=_timm_hub("timm/mobilenetv2_100.ra_in1k", 256)))
register(Architecture("timm:mobilenetv3_large_100", _family("timm_mbconv"), _MOBILENETV3, blocks=17,
                      weights=_timm_hub("timm/mobilenetv3_large_100.ra_in1k", 256)))
register(Architecture("timm:<MBConv>", _family("timm_mbconv"), "as above; any timm model of timm's efficientnet "
                      "(EfficientNet, MobileNetV2, ...) or mobilenetv3 (MobileNetV3, ...) modules", _TIMM_OPEN,
                      takes=TimmModules(("efficientnet", "mobilenetv3")), example="timm:mobilenetv3_small_050"))

_CONVNEXT = ("stem + every stages.S.blocks.B, map averaged; the last stage's blocks have the identity path; head norm + "
             "fc on the pooled vector")
register(Architecture("timm:convnext_tiny", _family("timm_convnext"), _CONVNEXT, blocks=19,
                      weights=_timm_hub("timm/convnext_tiny.in12k_ft_in1k", 235)))
register(Architecture("timm:<ConvNeXt>", _family("timm_convnext"), _CONVNEXT + "; any timm model of timm's convnext "
                      "module", _TIMM_OPEN, takes=TimmModules(("convnext",)), example="timm:convnext_atto"))

register(Architecture("lucent:inceptionv1", _family("lucent_inception"),
                      "Lucid's blocks conv2d0 .. mixed5b, map averaged; only mixed5b has a path", blocks=12,
                      weights=Weights("https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/"
                                      "inception5h.pth",
                                      Preprocessing((117 / 255,) * 3, (1 / 255,) * 3, 256, 224), "lucid",
                                      "lucent's model zoo")))

# ---------------------------------------------------------------------------------------------------------------
# transformers (hf:): a folder written by save_pretrained, or a hub id

# A tiny ViT config that ships with the package, so that the contract tests build an hf: model offline.
_TINY_VIT = resources.package_folder("tiny-vit-cifar10")
register(Architecture("hf:<image-classifier>", _family("hf_vision"),
                      "embeddings + every encoder.layer.N, the class token; final LayerNorm + classifier (ViT, DeiT, "
                      "ViT-MSN)", Weights("hf-hub:<folder or hub id>", None, None, "transformers"),
                      takes=TransformersTask("image-classification"), example=f"hf:{_TINY_VIT}"))

# A tiny GPT-2 config that ships with the package, for the same reason.
_TINY_GPT2 = resources.package_folder("tiny-gpt2")
register(Architecture("hf:<causal-LM>", _family("hf_causal_lm"),
                      "embed + each layer, per token; final norm + unembedding",
                      Weights("hf-hub:<folder or hub id>", None, None, "transformers"),
                      takes=TransformersTask("causal-lm"), example=f"hf:{_TINY_GPT2}"))
