"""Model adapters, one per architecture family, behind one registry."""

from . import cifar_resnet  # noqa: F401  (registers "cifar:")
from . import lucent_inception, timm_models, torchvision_models  # noqa: F401  (register "lucent:", "timm:", "torchvision:")
from .base import AffineMap, Block, ModelAdapter, WeightsError, create_adapter, pooled_affine, register_adapter

__all__ = ["AffineMap", "Block", "ModelAdapter", "WeightsError", "create_adapter", "pooled_affine", "register_adapter"]
