"""Model adapters, one per architecture family, behind one registry.

The built-in families (``cifar:``, ``torchvision:``, ``timm:``, ``lucent:``) are
imported when ``create_adapter`` first meets their name; others register with
``register_family``.
"""

from .base import (ClassMatchError, ModelAdapter, ModelError, ModelFamily, UnknownModelError, WeightsError,
                   create_adapter, register_family)

__all__ = ["ClassMatchError", "ModelAdapter", "ModelError", "ModelFamily", "UnknownModelError", "WeightsError",
           "create_adapter", "register_family"]
