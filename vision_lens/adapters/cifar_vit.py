"""A pre-LN Vision Transformer for 32x32 CIFAR images: ``cifar:vit``.

timm's own ``VisionTransformer`` (pre-LN blocks, a class token, learned
position embeddings, the final LayerNorm and a linear head reading the class
token), so that ``cifar:vit`` and ``timm:vit_*`` share one adapter
(:mod:`~vision_lens.adapters.vit`). Only the patch embedding differs from a
plain ViT: a small convolutional tokenizer, as in CCT (Hassani et al. 2021),
two 3x3 convolutions with ReLU, each followed by a 2x2 max-pool, which turns the
image into an 8x8 grid of 64 tokens (the grid of patch size 4) and trains to a
far better accuracy than linear patches in the epochs a CPU affords.

Width 192, depth 6, 3 heads, MLP ratio 2 (``CONFIG``). Train one with
``scripts/train_cifar.py --arch vit``.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .base import ModelAdapter, ModelFamily
from .cifar import read_as_cifar
from .errors import WeightsError
from .vit import VisionTransformerAdapter
from .weights import LoadedWeights

CONFIG = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0, global_pool="token")
TOKENIZER_CHANNELS = 64  # the first convolution's


class ConvTokenizer(nn.Module):
    """``(N, 3, 32, 32) -> (N, 64, dim)``: conv 3x3, ReLU, max-pool 2, conv 3x3, ReLU, max-pool 2, flattened."""

    def __init__(self, dim: int, channels: int = TOKENIZER_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, dim, 3, padding=1)
        self.grid_size = (8, 8)  # what timm's PatchEmbed calls it; the adapter reads it
        self.num_patches = 64

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return x.flatten(2).transpose(1, 2)


def build(arch: str, state: dict | None, num_classes: int | None) -> VisionTransformer:
    """The ViT, randomly initialised with ``num_classes`` (default 10), or shaped like the checkpoint ``state``."""
    if state is not None:
        if "head.weight" not in state or "patch_embed.conv1.weight" not in state:
            raise WeightsError("no head.weight or patch_embed.conv1.weight, so not a checkpoint of cifar:vit "
                               "(scripts/train_cifar.py --arch vit writes them)")
        num_classes = state["head.weight"].shape[0]
    model = VisionTransformer(num_classes=num_classes or 10, **CONFIG)
    model.patch_embed = ConvTokenizer(CONFIG["embed_dim"])
    return model


def wrap(model: VisionTransformer, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return read_as_cifar(VisionTransformerAdapter(model), weights)


FAMILY = ModelFamily(build, wrap)
