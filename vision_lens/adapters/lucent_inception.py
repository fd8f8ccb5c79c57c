"""Lucid's InceptionV1 through lucent: ``lucent:inceptionv1``.

This is the TensorFlow GoogLeNet of the Distill circuits work ("inception5h"),
converted to PyTorch by lucent (``lucent.modelzoo.inceptionv1``). Its module
names are Lucid's layer names: a block's representation is the output of the
ReLU module ``conv2d0``..``conv2d2`` (post-ReLU, before the max-pool and
local response norm that follow) or of the concatenation ``mixed3a``..
``mixed5b``, which is what Lucid visualises under those names.

Differences from torchvision's GoogLeNet that the adapter handles:

* ``forward`` returns softmax probabilities; :meth:`logits` reads the
  pre-softmax output of ``softmax2_pre_activation_matmul`` (the head,
  1024 -> 1008) with a forward hook instead.
* Inputs are RGB in [-117, 138] (Lucid's ``x * 255 - 117``) at exactly 224x224:
  the model average-pools mixed5b with a 7x7 window and reshapes to
  (-1, 1024), which only gives one vector per image at 7x7, i.e. at 224.
  There, the 7x7 average pool is the global average that capture computes.
* 1008 outputs in the class order of the TensorFlow graph: output 0 is a
  dummy class, outputs 1 … 1000 are the ILSVRC-2012 devkit IDs 1 … 1000, and
  outputs 1001 … 1007 are unused. The devkit order ships with the package
  (``resources/ilsvrc2012_devkit_synsets.txt``), so :meth:`label_map` maps an
  ImageFolder's synset classes onto outputs 1 … 1000 and accuracy, top-5 and
  cross-entropy are reported as for every other model. The softmax keeps all
  1008 outputs, as the model computes it: the dummy and unused outputs take
  part in KL, entropy and cross-entropy with whatever probability the model
  gives them, and an image whose top output is one of them counts as wrong.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor, nn
from torchvision import transforms

from ..errors import MissingExtraError
from ..readout import Block, IdentityPath
from ..resources import devkit_synsets
from .base import ModelAdapter, ModelFamily
from .errors import ClassMatchError, UnknownModelError

try:
    from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1
except ModuleNotFoundError as exc:  # torch-lucent is an extra: it brings test tools with it (setup.cfg)
    raise MissingExtraError("the lucent: family", "torch-lucent", "lucent") from exc

BLOCKS = (
    "conv2d0", "conv2d1", "conv2d2", "mixed3a", "mixed3b", "mixed4a", "mixed4b",
    "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b",
)
BRANCHES = ("1x1", "3x3", "5x5", "pool_reduce")  # concatenated in this order
INPUT_SIDE = 224
# x * 255 - 117 on ToTensor's [0, 1], written as a Normalize so the transform has a stable repr.
LUCID_RANGE = transforms.Normalize(mean=[117 / 255] * 3, std=[1 / 255] * 3)
OUTPUTS = 1008
FIRST_CLASS_OUTPUT = 1  # output 0 is a dummy; outputs 1001..1007 are unused


class LucentInceptionV1Adapter(ModelAdapter):
    """lucent's InceptionV1 with its own preprocessing; outputs 1..1000 are the devkit classes."""

    input_size = None  # the transform resizes and centre-crops any image to the model's input

    def __init__(self, model: InceptionV1):
        self.model = model
        synsets = devkit_synsets()
        self.class_names = (
            ["dummy"] + [name for _, name in synsets]
            + [f"unused_{k}" for k in range(FIRST_CLASS_OUTPUT + len(synsets), OUTPUTS)]
        )
        self.output_of_synset = {s: FIRST_CLASS_OUTPUT + k for k, (s, _) in enumerate(synsets)}
        self.blocks = []
        for name in BLOCKS:
            convs = [name] if name.startswith("conv") else [f"{name}_{b}" for b in BRANCHES]
            channels = sum(model.get_submodule(f"{c}_pre_relu_conv").out_channels for c in convs)
            # Concatenated branches give no linear path to the head; mixed5b is its input.
            path = IdentityPath.identity(channels) if name == BLOCKS[-1] else None
            self.blocks.append(Block(name, name, channels, path))

    @property
    def unembed(self) -> nn.Linear:
        return self.model.softmax2_pre_activation_matmul

    @property
    def transform(self):
        return transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(INPUT_SIDE), transforms.ToTensor(), LUCID_RANGE]
        )

    def label_map(self, classes: Sequence[str], by_position: bool = False) -> np.ndarray:
        """The output (1..1000) of each synset class; -1 for a class that is no ILSVRC-2012 synset (by position:
        the base class's rule)."""
        if by_position:
            return super().label_map(classes, by_position)
        if not any(c in self.output_of_synset for c in classes):
            raise ClassMatchError(
                f"none of the data's classes ({', '.join(list(classes)[:3])}, …) is an ILSVRC-2012 synset "
                f"(n01440764, …); {self.name} needs ImageNet laid out by synset"
            )
        return np.array([self.output_of_synset.get(c, -1) for c in classes], dtype=np.int64)

    def logits(self, x: Tensor) -> Tensor:
        """The pre-softmax output of the head (``forward`` returns probabilities)."""
        captured = []
        handle = self.unembed.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]


def build(arch: str, state: dict | None, num_classes: int | None) -> InceptionV1:
    if arch != "inceptionv1":
        raise UnknownModelError(f"--model lucent:{arch} is not supported; lucent's model zoo has lucent:inceptionv1")
    # The redirected ReLU only changes gradients (for feature visualisation); the forward pass is the same.
    return InceptionV1(pretrained=False, redirected_ReLU=False)


# "pretrained" is lucent's URL (its model_urls["inceptionv1"], registered in zoo.py).
FAMILY = ModelFamily(build, lambda model, arch, weights: LucentInceptionV1Adapter(model))
