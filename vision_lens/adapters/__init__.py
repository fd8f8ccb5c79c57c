"""Model adapters, one file per architecture family, behind one registry.

:mod:`.registry` holds one :class:`Architecture` per model (``cifar:resnet20``)
with its :class:`Weights` entry; :mod:`.zoo` registers the built-in ones, and a
family outside the package registers with :func:`register` (or
:func:`register_family` for every name of a namespace). :func:`create_adapter`
builds any of them. Names load on first use, so that the registry and
``vision-lens models`` need no torch.
"""

from __future__ import annotations

import importlib

# name -> module that defines it
_EXPORTS = {
    "ClassMatchError": "errors", "ModelError": "errors", "UnknownModelError": "errors", "WeightsError": "errors",
    "Architecture": "registry", "Pattern": "registry", "architectures": "registry", "register": "registry",
    "register_family": "registry", "Preprocessing": "weights", "Weights": "weights",
    "ModelAdapter": "base", "ModelFamily": "base", "create_adapter": "base",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
