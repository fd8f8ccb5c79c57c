"""The architecture registry: one registration per architecture, every listing derived from it.

An :class:`Architecture` names a model as ``--model`` takes it (``cifar:resnet20``),
the family that builds and wraps it (a :class:`~vision_lens.adapters.base.ModelFamily`,
imported on first use), what a lens reads there, how many blocks it has and its
:class:`~vision_lens.adapters.weights.Weights` entry. An *open-ended* registration
(``takes``) builds every name of its namespace that it accepts, e.g. any CIFAR
ResNet depth 6n+2 or any timm model of a module in one layout.

``vision-lens models``, the near matches of an unknown ``--model``, the README's
model table (:mod:`~vision_lens.adapters.listing`) and the contract tests
(``tests/test_architecture_contract.py``) read the registry; the built-in
registrations are :mod:`~vision_lens.adapters.zoo`. Like torchvision's
``register_model``, a name is registered once. Torch-free.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from typing import Iterable, Protocol

from .errors import ModelError, UnknownModelError
from .weights import Weights


class Takes(Protocol):
    """Which architectures of its namespace an open-ended registration builds."""

    def __call__(self, arch: str) -> bool: ...

    def names(self) -> Iterable[str]:
        """The names it takes, where they can be listed (for near matches); may be empty."""


@dataclass(frozen=True)
class Pattern:
    """Takes the architectures that match ``regex`` in full (``resnet\\d+``); lists none."""

    regex: str

    def __call__(self, arch: str) -> bool:
        return re.fullmatch(self.regex, arch) is not None

    def names(self) -> Iterable[str]:
        return ()


@dataclass(frozen=True)
class Architecture:
    """One registration.

    Attributes:
        name: ``namespace:arch`` as ``--model`` takes it; for an open-ended registration, the form of the names it
            takes (``cifar:resnet<6n+2>``).
        family: ``"module:attribute"`` of the :class:`~vision_lens.adapters.base.ModelFamily` that builds and wraps
            it, imported when first built (``vision-lens models`` imports no torch); or the family itself.
        readout: one line: the blocks, what a lens reads there and through what unembedding.
        weights: the weights entry: what ``--weights pretrained`` loads, and the preprocessing and class order of
            every weights of the architecture.
        blocks: the number of lensed blocks, as stated; the contract tests build the architecture and check it.
        takes: for an open-ended registration, which other names of the namespace it builds.
        example: for an open-ended registration, one name it takes, which the contract tests build.
    """

    name: str
    family: str | object
    readout: str
    weights: Weights = Weights()
    blocks: int | None = None
    takes: Takes | None = None
    example: str | None = None

    def __post_init__(self):
        if re.fullmatch(r"[a-z0-9_]+:.+", self.name) is None:
            raise ValueError(f"Architecture {self.name!r}: the name must be namespace:arch")
        if (self.takes is None) != (self.example is None):
            raise ValueError(f"Architecture {self.name!r}: an open-ended registration has both takes and example")

    @property
    def namespace(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def open_ended(self) -> bool:
        return self.takes is not None

    def load_family(self):
        """The :class:`~vision_lens.adapters.base.ModelFamily` (the registry itself imports no torch)."""
        if not isinstance(self.family, str):
            return self.family
        module, attribute = self.family.split(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Architecture] = {}
_BUILT_IN_LOADED = False


def register(architecture: Architecture) -> Architecture:
    """Make ``architecture`` available to :func:`~vision_lens.adapters.create_adapter` and every listing; a name
    is registered once."""
    _load_built_in()
    if architecture.name in _REGISTRY:
        raise ValueError(f"{architecture.name} is already registered ({_REGISTRY[architecture.name].family})")
    _REGISTRY[architecture.name] = architecture
    return architecture


def register_family(namespace: str, family: object, example: str, readout: str = "",
                    weights: Weights = Weights()) -> Architecture:
    """Make every ``namespace:<arch>`` a model that ``family`` builds (its ``build`` refuses the archs it does not
    know with :class:`~vision_lens.adapters.errors.UnknownModelError`): one open-ended registration, whose
    ``example`` (``namespace:arch``) the contract tests build."""
    return register(Architecture(f"{namespace}:<arch>", family, readout or f"the {namespace}: family's", weights,
                                 takes=Pattern(".+"), example=example))


def _load_built_in() -> None:
    global _BUILT_IN_LOADED
    if not _BUILT_IN_LOADED:
        _BUILT_IN_LOADED = True
        importlib.import_module(f"{__package__}.zoo")  # registers the built-in architectures


def architectures() -> list[Architecture]:
    """Every registration, in the order registered."""
    _load_built_in()
    return list(_REGISTRY.values())


def resolve(name: str) -> tuple[Architecture, str]:
    """The registration that builds ``name`` and the architecture's name within its namespace.

    An exact registration first, then the open-ended ones of the namespace in the order registered. Raises
    :class:`~vision_lens.adapters.errors.UnknownModelError` with the near matches where none takes it.
    """
    _load_built_in()
    match = re.fullmatch(r"([a-z0-9_]+):(.+)", name)
    namespaces = sorted({a.namespace for a in _REGISTRY.values()})
    if match is None or match.group(1) not in namespaces:
        known = ", ".join(f"{n}:…" for n in namespaces)
        raise ModelError(f"--model {name!r} is not a known model; use family:arch with one of the families {known}")
    namespace, arch = match.groups()
    if name in _REGISTRY:
        return _REGISTRY[name], arch
    same = [a for a in _REGISTRY.values() if a.namespace == namespace]
    for architecture in same:
        if architecture.open_ended and architecture.takes(arch):
            return architecture, arch
    forms = ", ".join(a.name for a in same if a.open_ended)
    near = near_matches(name, namespace)
    raise UnknownModelError(
        f"--model {name} is not supported yet: no registered architecture takes it"
        + (f" (the {namespace}: family also takes {forms})" if forms else "")
        + (f"; near matches: {', '.join(near)}" if near else "") + " (`vision-lens models` lists every model)"
    )


def near_matches(name: str, namespace: str | None = None) -> list[str]:
    """Registered names (and, for open-ended registrations, the names they list) close to ``name``, best first."""
    candidates = []
    for architecture in architectures():
        if namespace is None or architecture.namespace == namespace:
            if architecture.open_ended:
                candidates += [f"{architecture.namespace}:{n}" for n in architecture.takes.names()]
            else:
                candidates.append(architecture.name)
    return difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
