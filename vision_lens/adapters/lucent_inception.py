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
* 1008 outputs in the class order of the TensorFlow graph, not ImageNet's
  sorted synsets. lucent ships no label file for them (Lucid keeps its label
  lists in its own model-zoo storage), so the map from ImageNet synsets to
  these outputs cannot be established from lucent's files, and
  :meth:`label_map` returns -1 for every class: all images count as
  unlabelled, so accuracy, top-5 and cross-entropy are null, while KL to the
  model's output, agreement and entropy are computed on all 1008 outputs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1, model_urls
from torch import Tensor, nn
from torchvision import transforms

from .base import Block, ModelAdapter, fetch_checkpoint, load_state_dict_strict, register_adapter, state_dict_sha256

BLOCKS = (
    "conv2d0", "conv2d1", "conv2d2", "mixed3a", "mixed3b", "mixed4a", "mixed4b",
    "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b",
)
BRANCHES = ("1x1", "3x3", "5x5", "pool_reduce")  # concatenated in this order
INPUT_SIDE = 224
# x * 255 - 117 on ToTensor's [0, 1], written as a Normalize so the transform has a stable repr.
LUCID_RANGE = transforms.Normalize(mean=[117 / 255] * 3, std=[1 / 255] * 3)


class LucentInceptionV1Adapter(ModelAdapter):
    """lucent's InceptionV1 with its own preprocessing and its 1008 unlabelled outputs."""
    input_size = None  # the transform resizes and centre-crops any image to the model's input

    def __init__(self, model: InceptionV1, weights_id: str):
        self.model = model
        self.weights_id = weights_id
        self.class_names = [str(i) for i in range(self.head.out_features)]
        self.blocks = []
        for name in BLOCKS:
            convs = [name] if name.startswith("conv") else [f"{name}_{b}" for b in BRANCHES]
            channels = sum(model.get_submodule(f"{c}_pre_relu_conv").out_channels for c in convs)
            # Concatenated branches give no linear path to the head; mixed5b is its input.
            self.blocks.append(Block(name, name, channels, () if name == BLOCKS[-1] else None))

    @property
    def head(self) -> nn.Linear:
        return self.model.softmax2_pre_activation_matmul

    @property
    def transform(self):
        return transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(INPUT_SIDE), transforms.ToTensor(), LUCID_RANGE]
        )

    def label_map(self, classes: Sequence[str]) -> np.ndarray:
        """-1 for every class: lucent ships no map from synsets to its 1008 outputs (see the module docstring)."""
        return np.full(len(classes), -1, dtype=np.int64)

    def logits(self, x: Tensor) -> Tensor:
        """The pre-softmax output of the head (``forward`` returns probabilities)."""
        captured = []
        handle = self.head.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]


@register_adapter("lucent")
def build_lucent(arch: str, weights: str | None = None, seed: int = 0) -> LucentInceptionV1Adapter:
    """``lucent:inceptionv1``: ``weights`` is ``"pretrained"``/None (lucent's URL), ``"random"`` or a local file."""
    if arch != "inceptionv1":
        raise ValueError(f"--model lucent:{arch} is not supported; lucent's model zoo has lucent:inceptionv1")
    torch.manual_seed(seed)
    # The redirected ReLU only changes gradients (for feature visualisation); the forward pass is the same.
    model = InceptionV1(pretrained=False, redirected_ReLU=False)
    if weights == "random":
        return LucentInceptionV1Adapter(model, "random-init:" + state_dict_sha256(model.state_dict()))
    if weights in (None, "pretrained"):
        weights = model_urls["inceptionv1"]
    state, weights_id = fetch_checkpoint(weights)
    load_state_dict_strict(model, state, weights)
    return LucentInceptionV1Adapter(model, weights_id)
