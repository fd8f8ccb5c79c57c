"""Model adapters, one per architecture family, behind one registry."""

from . import cifar_resnet  # noqa: F401  (registers "cifar:")
from . import lucent_inception, timm_models, torchvision_models  # noqa: F401  (register "lucent:", "timm:", "torchvision:")
from .base import ModelAdapter, ModelFamily, WeightsError, create_adapter, register_family

__all__ = ["ModelAdapter", "ModelFamily", "WeightsError", "create_adapter", "register_family"]
