"""Model adapters, one per architecture family, behind one registry."""

from . import cifar_resnet  # noqa: F401  (registers "cifar:")
from .base import AffineMap, Block, ModelAdapter, WeightsError, create_adapter, pooled_affine, register_adapter

__all__ = ["AffineMap", "Block", "ModelAdapter", "WeightsError", "create_adapter", "pooled_affine", "register_adapter"]
