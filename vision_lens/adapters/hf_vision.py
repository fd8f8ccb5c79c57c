"""transformers' class-token image classifiers: ``hf:<folder or hub id>`` (``ViTForImageClassification``,
``DeiTForImageClassification``, ``ViTMSNForImageClassification``).

The readout is :mod:`~vision_lens.adapters.vit`'s, in transformers' module names. The lensed blocks are what
``output_hidden_states=True`` returns: the embeddings' output (``vit.embeddings``: patches, the class token, DeiT's
distillation token, position embeddings) and every encoder layer's (``vit.encoder.layer.N``), the residual stream
of one width, so every block's identity path is the identity. A lens reads the class token, and the unembedding
is the model's own final LayerNorm (``vit.layernorm``) followed by its ``classifier``, which is how the model
computes its logits from the last layer's class token: the logit lens is exact at the last block.

* **Weights**: ``--weights pretrained`` loads the folder or hub id with ``from_pretrained``; ``--weights random``
  builds the model from its config alone (seeded); ``--weights PATH`` reads a state dict file (``.safetensors``,
  ``.pt``/``.pth``/``.bin``) into the config's model.
* **Preprocessing** is the model's image processor config (``preprocessor_config.json``, with its class's
  defaults): resize (to ``size``'s height and width, or its shortest edge) with its ``resample``, centre crop
  (transformers' offsets), rescale to [0, 1], normalise by ``image_mean`` and ``image_std``, as torchvision
  transforms. Settings that would change the pixels otherwise are refused by name rather than ignored.
* **Classes**: ``config.id2label`` in output order; the labels are the data's class folder names, unless they are
  transformers' placeholders (``LABEL_0`` ..), and then the folders match the outputs by sorted position.

``DeiTForImageClassificationWithTeacher`` averages two classifiers on two tokens (the class and the distillation
token), so no single token's vector gives its logits: it is refused, as timm's distilled DeiTs are.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from torchvision import transforms
from torchvision.transforms import functional as TF

from ..errors import MissingExtraError
from ..readout import Block, IdentityPath
from .base import ModelAdapter, ModelFamily
from .errors import ModelError, WeightsError
from .loading import read_checkpoint, state_dict_sha256
from .vit import STAGE, VisionTransformerAdapter
from .weights import LoadedWeights

try:
    import transformers
    from transformers import AutoConfig, AutoImageProcessor
except ModuleNotFoundError as exc:  # transformers is an extra: most runs never need it
    raise MissingExtraError("the hf: family", "transformers", "hf") from exc

# The image classifiers whose logits are ``classifier(layernorm(last layer)[:, 0])``.
READ_BY_CLASS_TOKEN = ("ViTForImageClassification", "DeiTForImageClassification", "ViTMSNForImageClassification")
TWO_TOKEN_HEADS = ("DeiTForImageClassificationWithTeacher",)

# PIL's resampling filter codes, as image processor configs store them, and torchvision's name for each.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Image processor settings that leave the pixels of an RGB image as the steps above make them.
NEUTRAL_SETTINGS = {"do_convert_rgb", "image_processor_type", "processor_class", "_processor_class",
                    "feature_extractor_type", "do_reduce_labels", "reduce_labels", "input_data_format",
                    "data_format", "return_tensors", "device", "disable_grouping", "default_to_square"}


def _config(arch: str):
    try:
        return AutoConfig.from_pretrained(arch)
    except (OSError, ValueError) as exc:  # no such folder or hub id, offline, or a config transformers cannot read
        raise ModelError(f"--model hf:{arch}: transformers cannot read its config ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); give a folder written by "
                         "save_pretrained or a Hugging Face hub id (offline: download it first, pass its folder)"
                         ) from exc


def _model_class(arch: str, config) -> type:
    named = config.architectures or []
    refused = [a for a in named if a in TWO_TOKEN_HEADS]
    if refused:
        raise ModelError(
            f"--model hf:{arch}: {refused[0]} averages two classifiers, one on its class token and one on its "
            "distillation token, so no single token's vector gives its logits and an exact logit lens does not "
            "exist; vision-lens refuses it rather than approximate. Load the checkpoint as "
            "DeiTForImageClassification (its class-token classifier) and save that, or use a ViT")
    readable = [a for a in named if a in READ_BY_CLASS_TOKEN]
    if not readable:
        raise ModelError(f"--model hf:{arch}: its config names {', '.join(named) or 'no architecture'}; the hf: image "
                         f"classifiers vision-lens reads are {', '.join(READ_BY_CLASS_TOKEN)} (their logits come from "
                         "the class token alone)")
    return getattr(transformers, readable[0])


def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """The config's model at random init (``num_classes`` outputs if given), or shaped like the state dict."""
    config = _config(arch)
    model_class = _model_class(arch, config)
    if state is not None:
        if "classifier.weight" not in state:
            raise WeightsError(f"no classifier.weight, so not a state dict of {model_class.__name__}")
        num_classes = state["classifier.weight"].shape[0]
    if num_classes is not None and num_classes != config.num_labels:
        config.num_labels = num_classes  # transformers' placeholder labels, LABEL_0 ..
    return model_class(config)


def load_published(model: nn.Module, arch: str) -> str:
    """``from_pretrained`` on the folder or hub id, its weights put into ``model``; their id is their content's."""
    try:
        loaded = type(model).from_pretrained(arch)
    except OSError as exc:  # no weights file, or the hub unreachable
        raise WeightsError(f"--model hf:{arch} --weights pretrained: transformers cannot load its weights "
                           f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); offline, "
                           "download the model first and pass its folder, or pass --weights random") from exc
    model.load_state_dict(loaded.state_dict(), strict=True)
    return "hf:" + state_dict_sha256(model.state_dict())


def read(path: str) -> dict[str, Tensor]:
    """A state dict file: safetensors (what save_pretrained writes) or a torch checkpoint."""
    if Path(path).suffix != ".safetensors":
        return read_checkpoint(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; pass a .safetensors or .pt state dict of the model")
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise WeightsError(f"--weights {path}: not a readable safetensors file ({exc.__class__.__name__}: {exc})"
                           ) from exc


class HFCenterCrop(nn.Module):
    """Centre crop at transformers' offsets (``(size - crop) // 2``; torchvision rounds them)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, image):
        width, height = TF.get_image_size(image)
        if height < self.height or width < self.width:
            return TF.center_crop(image, [self.height, self.width])  # pads, as transformers does
        return TF.crop(image, (height - self.height) // 2, (width - self.width) // 2, self.height, self.width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width})"


def image_processor_transform(arch: str, settings: dict) -> transforms.Compose:
    """The transform of an image processor's ``settings`` (its ``to_dict()``), as torchvision steps."""
    unknown = sorted(k for k, v in settings.items() if v and k not in NEUTRAL_SETTINGS and k not in {
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std"})
    if unknown:
        raise ModelError(f"--model hf:{arch}: its image processor sets {', '.join(unknown)}, which vision-lens does "
                         "not reproduce; save an image processor config without them (resize, centre crop, "
                         "rescale, normalise)")
    steps = []
    if settings.get("do_resize"):
        size = settings["size"]
        interpolation = transforms.InterpolationMode(RESAMPLE[settings.get("resample", 2)])
        if "height" in size and "width" in size:
            steps.append(transforms.Resize((size["height"], size["width"]), interpolation=interpolation))
        elif set(size) == {"shortest_edge"}:
            steps.append(transforms.Resize(size["shortest_edge"], interpolation=interpolation))
        else:
            raise ModelError(f"--model hf:{arch}: its image processor's size {size} is neither height and width nor "
                             "a shortest edge; save one that is")
    if settings.get("do_center_crop"):
        steps.append(HFCenterCrop(settings["crop_size"]["height"], settings["crop_size"]["width"]))
    if not settings.get("do_rescale") or abs(settings.get("rescale_factor", 0) * 255 - 1) > 1e-6:
        raise ModelError(f"--model hf:{arch}: its image processor does not rescale pixels by 1/255 (do_rescale="
                         f"{settings.get('do_rescale')}, rescale_factor={settings.get('rescale_factor')}); "
                         "vision-lens reads images as [0, 1] tensors")
    steps.append(transforms.ToTensor())
    if settings.get("do_normalize"):
        steps.append(transforms.Normalize(settings["image_mean"], settings["image_std"]))
    return transforms.Compose(steps)


def _image_processor_settings(arch: str) -> dict:
    try:
        return AutoImageProcessor.from_pretrained(arch, use_fast=False).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model hf:{arch}: no image processor config beside the model ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); save the model's image processor into "
                         "its folder (processor.save_pretrained(folder): preprocessor_config.json)") from exc


class TransformersViTAdapter(VisionTransformerAdapter):
    """A transformers ViT or DeiT, read as timm's are in transformers' module names: blocks ``<base>.embeddings``,
    ``<base>.encoder.layer.N``; unembed ``<base>.layernorm`` + ``classifier``."""

    def __init__(self, model: nn.Module, arch: str):  # timm's attributes are not there: not the parent's __init__
        self.model = model
        prefix = model.base_model_prefix
        base = getattr(model, prefix)
        config = model.config
        dim = config.hidden_size
        grid = [s // p for s, p in zip(_pair(config.image_size), _pair(config.patch_size))]
        tokens = (1 + (getattr(base.embeddings, "distillation_token", None) is not None), *grid)
        path = IdentityPath.identity(dim)
        names = [f"{prefix}.embeddings"] + [f"{prefix}.encoder.layer.{i}" for i in range(len(base.encoder.layer))]
        self.blocks = [Block(n, n, dim, path, stage=STAGE, tokens=tokens) for n in names]
        # The final LayerNorm acts per token, so layernorm(x)[:, 0] == layernorm(x[:, 0]).
        self._unembed = nn.Sequential(base.layernorm, model.classifier)
        settings = _image_processor_settings(arch)
        self._transform = image_processor_transform(arch, settings)
        resized = settings.get("do_resize") or settings.get("do_center_crop")
        self.input_size = None if resized else _pair(config.image_size)  # else the images must be the model's size
        labels = [config.id2label[i] for i in range(config.num_labels)]
        self.class_names = labels
        self.class_folders = None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels

    def logits(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def wrap(model: nn.Module, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return TransformersViTAdapter(model, arch)


FAMILY = ModelFamily(build, wrap, load_published=load_published, read=read)
