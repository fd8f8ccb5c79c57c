"""Model adapters, one per architecture family, behind one registry.

The built-in families (``cifar:``, ``torchvision:``, ``timm:``, ``lucent:``) are
imported when ``create_adapter`` first meets their name; others register with
``register_family``.
"""

from .base import ModelAdapter, ModelFamily, UnknownModelError, WeightsError, create_adapter, register_family

__all__ = ["ModelAdapter", "ModelFamily", "UnknownModelError", "WeightsError", "create_adapter", "register_family"]
