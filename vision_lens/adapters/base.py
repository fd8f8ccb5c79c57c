"""The model adapter interface: what the pipeline needs to know about a network.

An adapter answers the same questions for every architecture (timm-style), so
capture, fitting and evaluation never special-case a model:

* ``blocks``: the lensed blocks in forward order, named by their module path,
  each with its identity path as a module (:class:`~vision_lens.readout.Block`);
* ``unembed``: the module that maps the pooled last block to logits (the head
  plus any final norm), as tuned-lens's ``Unembed``;
* ``transform``: the preprocessing that the weights expect;
* ``logits(x)``: the model's own output logits.

Weights are resolved once, in :func:`create_adapter`: ``random``, the
published checkpoint of the architecture, a URL or a local file. A family
registers only how to build its network and wrap it (:class:`ModelFamily`).
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..readout import Block, IdentityPath


class WeightsError(UserError, ValueError):
    """A checkpoint cannot be used with the requested architecture."""


class ModelError(UserError, ValueError):
    """``--model`` names no model, or one that vision-lens cannot read; the message says which ones it can."""


class ClassMatchError(UserError, ValueError):
    """A dataset's classes cannot be matched to the model's outputs; the message lists what differs."""


def _listed(names: Sequence[str], most: int = 10) -> str:
    """``names`` for a message: the first ``most``, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return (", ".join(names[:most]) or "none") + more


class UnknownModelError(ModelError):
    """A family has no architecture of the requested name; :func:`create_adapter` adds the near matches."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict, for weights that have no file."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint file, without DataParallel's ``module.`` prefix.

    Accepts a bare state dict or a dict with a ``state_dict`` entry (the
    akamaster CIFAR layout).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; pass the path of a .th/.pt/.pth checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise WeightsError(f"--weights {path}: not a readable torch checkpoint ({exc.__class__.__name__}: {exc})") from exc
    return _state_dict_in(obj, str(path))


def _state_dict_in(obj: object, source: str) -> dict[str, Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"--weights {source}: expected a state dict or a dict with a 'state_dict' entry")
    return {k.removeprefix("module."): v for k, v in state.items()}


def download_checkpoint(weights: str) -> tuple[dict[str, Tensor], str]:
    """The state dict at a URL (through torch.hub's cache) and its file's sha256.

    A download and a local copy of the same file get the same id, so they
    share feature caches.
    """
    try:
        obj = torch.hub.load_state_dict_from_url(weights, map_location="cpu", check_hash=True, weights_only=True)
    except OSError as exc:  # URLError, HTTPError, socket errors
        raise WeightsError(
            f"could not download {weights} ({exc.__class__.__name__}: {exc}). Offline, download that file on a "
            "machine with internet access and pass --weights PATH."
        ) from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights).path).name
    return _state_dict_in(obj, weights), file_sha256(cached)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the keys."""
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError:
        pass
    # BatchNorm fills in num_batches_tracked for old checkpoints, so it is never "missing".
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state_dict) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    lines = [f"checkpoint {source} does not match the architecture {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes[:10])}")
    lines.append("Pass --weights a checkpoint saved from this --model, or choose the --model it was saved from.")
    raise WeightsError("\n".join(lines))


class ModelAdapter(abc.ABC):
    """A frozen, eval-mode network plus the facts the lens pipeline needs.

    Subclasses set ``model``, ``blocks`` and ``class_names`` and implement
    ``unembed`` and ``transform``; ``logits`` and ``label_map`` have defaults
    that fit most classifiers. Where the model knows the dataset folder name
    of each output (the CIFAR-10 names, ImageNet synsets) they set
    ``class_folders``, and data classes are matched to outputs by name.
    :func:`create_adapter` sets ``name`` and ``weights_id``.
    """

    name: str = ""
    model: nn.Module
    blocks: list[Block]
    class_names: list[str]
    # The dataset folder name of each output, or None where the outputs are known only by index (a checkpoint
    # of unknown classes), which are then matched by position.
    class_folders: list[str] | None = None
    weights_id: str = ""  # sha256 of the weights file, or of the random-init state dict
    # The (height, width) that ``transform`` requires of raw images, or None where it resizes
    # (and crops) any image to the model's input. Data loading stops on an image of another
    # size, naming the file and both sizes.
    input_size: tuple[int, int] | None = None
    # The model's own intermediate classifiers (e.g. GoogLeNet's aux1/aux2): block name ->
    # module mapping that block's full output map to logits. Reported beside the lenses.
    aux_classifiers: Mapping[str, nn.Module] = MappingProxyType({})

    @property
    @abc.abstractmethod
    def unembed(self) -> nn.Module:
        """Pooled last block ``(N, head_dim)`` -> logits ``(N, num_classes)``: the head plus any final norm."""

    @property
    @abc.abstractmethod
    def transform(self) -> Callable:
        """Preprocessing of one PIL image into the model's input tensor."""

    @property
    def num_classes(self) -> int:
        return [m for m in self.unembed.modules() if isinstance(m, nn.Linear)][-1].out_features

    @property
    def head_dim(self) -> int:
        return [m for m in self.unembed.modules() if isinstance(m, nn.Linear)][0].in_features

    def label_map(self, classes: Sequence[str], by_position: bool = False) -> np.ndarray:
        """The model output index of each dataset class (in the dataset's order); -1: no such output.

        Classes match the outputs by name where the model knows ``class_folders``, and by their sorted position
        otherwise, or where ``by_position`` asks for it. Images of a class mapped to -1 count as unlabelled:
        label metrics skip them, while KL and agreement with the model still use them.
        """
        output = {name: k for k, name in enumerate(self.class_folders or ())}
        unknown = [c for c in classes if c not in output]
        missing = [name for name in output if name not in set(classes)]
        if self.class_folders is None or by_position:
            if len(classes) != self.num_classes:  # which folders are extra or gone: by name where the model knows them
                named = (f"unknown to the model: {_listed(unknown)}; missing: {_listed(missing)}" if output
                         else f"the class folders: {_listed(list(classes))}")
                raise ClassMatchError(f"the data has {len(classes)} classes but {self.name} has {self.num_classes} "
                                      f"outputs, matched by position ({named})")
            return np.arange(len(classes))
        if unknown or missing:
            raise ClassMatchError(
                f"its class folders do not match {self.name}'s classes (unknown to the model: {_listed(unknown)}; "
                f"missing: {_listed(missing)}); name the class folders after the model's classes "
                f"({_listed(self.class_folders, 3)}), or pass --match-classes-by-position to match them by sorted "
                "position"
            )
        return np.array([output[c] for c in classes], dtype=np.int64)

    def logits(self, x: Tensor) -> Tensor:
        """The model's own output logits."""
        return self.model(x)

    def to(self, device: str | torch.device) -> "ModelAdapter":
        self.model.to(device)
        for block in self.blocks:
            if block.path is not None:
                block.path.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def path_reader(model: nn.Module) -> Callable[[Sequence[str], int, int], IdentityPath]:
    """``read(module_names, channels, stride)``: identity paths read off ``model``'s modules, each chain once.

    Blocks of a stage share one path, and reading off a 2048-wide one takes a while.
    """
    known: dict[tuple, IdentityPath] = {}

    def read(names: Sequence[str], channels: int, stride: int = 1) -> IdentityPath:
        key = (tuple(names), channels, stride)
        if key not in known:
            modules = [model.get_submodule(n) for n in names]
            # In eval mode, whatever the model's: a BatchNorm in training mode would normalise by the probe's
            # batch statistics and fold them into its running ones (a family's build reads paths to check layouts).
            training = [m.training for m in modules]
            for m in modules:
                m.eval()
            try:
                known[key] = (IdentityPath.read_off(modules, channels, stride, tuple(names)) if names
                              else IdentityPath.identity(channels))
            finally:
                for m, mode in zip(modules, training):
                    m.train(mode)
        return known[key]

    return read


@dataclass(frozen=True)
class ModelFamily:
    """How one family (``cifar:``, ``torchvision:``, ...) builds and wraps its networks.

    Attributes:
        build: ``build(arch, state_dict, num_classes)`` -> the network, shaped
            like ``state_dict`` (a checkpoint) or randomly initialised (None).
            Raises ValueError for an unknown ``arch``.
        wrap: ``wrap(model, arch, weights_id)`` -> the adapter.
        published: ``published(arch)`` -> the URL that ``--weights pretrained``
            loads; raises WeightsError where nothing is published.
        load_published: for families whose published weights come through
            their own hub loader (timm): ``load_published(model, arch)`` loads
            them into ``model`` and returns their id.
        read: reads a local checkpoint file (default: :func:`read_checkpoint`).
        names: ``names()`` -> every architecture name the family knows, for near matches of an unknown one
            (default: the catalogue's, :mod:`~vision_lens.catalogue`).
    """

    build: Callable[..., nn.Module]
    wrap: Callable[[nn.Module, str, str], ModelAdapter]
    published: Callable[[str], str]
    load_published: Callable[[nn.Module, str], str] | None = None
    read: Callable[[str], dict[str, Tensor]] = read_checkpoint
    names: Callable[[], list[str]] | None = None


_REGISTRY: dict[str, ModelFamily] = {}
# The built-in families, imported on first use: timm, lucent and torchvision's model zoo
# take seconds to import, and a run needs one of them.
BUILT_IN = {
    "cifar": "cifar_resnet", "torchvision": "torchvision_models", "timm": "timm_models", "lucent": "lucent_inception",
}


def register_family(name: str, family: ModelFamily) -> ModelFamily:
    """Make ``name:arch`` models available to :func:`create_adapter`."""
    _REGISTRY[name] = family
    return family


def create_adapter(
    name: str, weights: str | None = "pretrained", seed: int = 0, num_classes: int | None = None
) -> ModelAdapter:
    """Build the adapter for ``name`` (``family:arch``, e.g. ``cifar:resnet20``).

    ``weights`` is ``"pretrained"`` (the published weights for the name; also
    None), ``"random"`` (a random initialisation seeded by ``seed``, the
    control run), a URL or a local checkpoint. ``num_classes`` applies to
    random initialisation; a checkpoint brings its own class count.
    """
    match = re.fullmatch(r"([a-z0-9_]+):(.+)", name)
    if match is not None and match.group(1) in BUILT_IN and match.group(1) not in _REGISTRY:
        importlib.import_module(f"{__package__}.{BUILT_IN[match.group(1)]}")  # registers the family
    if match is None or match.group(1) not in _REGISTRY:
        known = ", ".join(f"{f}:…" for f in sorted(set(_REGISTRY) | set(BUILT_IN)))
        raise ModelError(f"--model {name!r} is not a known model; use family:arch with one of the families {known}")
    family, arch = _REGISTRY[match.group(1)], match.group(2)
    try:
        return _create(family, name, arch, weights, seed, num_classes)
    except UnknownModelError as exc:
        from ..catalogue import near_matches

        candidates = family.names() if family.names is not None else None
        near = near_matches(name, [f"{match.group(1)}:{n}" for n in candidates] if candidates else None)
        hint = f"; near matches: {', '.join(near)}" if near else ""
        raise UnknownModelError(f"{exc}{hint} (`vision-lens models` lists every model)") from exc


def _create(family: ModelFamily, name: str, arch: str, weights: str | None, seed: int,
            num_classes: int | None) -> ModelAdapter:
    # The random init is seeded by ``seed`` on a forked generator: the caller's global torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights == "random":
            model = family.build(arch, None, num_classes)
            weights_id = "random-init:" + state_dict_sha256(model.state_dict())
        elif weights in (None, "pretrained") and family.load_published is not None:
            model = family.build(arch, None, None)
            weights_id = family.load_published(model, arch)
        else:
            if weights in (None, "pretrained"):
                weights = family.published(arch)
            if weights.startswith(("http://", "https://")):
                state, weights_id = download_checkpoint(weights)
            else:
                state, weights_id = family.read(weights), file_sha256(weights)
            try:
                model = family.build(arch, state, None)
            except WeightsError as exc:
                raise WeightsError(f"--weights {weights}: {exc}") from exc
            load_state_dict_strict(model, state, weights)
    # Frozen before wrapping: identity paths are read off in eval mode (BatchNorm on running statistics).
    model.eval().requires_grad_(False)
    adapter = family.wrap(model, arch, weights_id)
    adapter.name, adapter.weights_id = name, weights_id
    return adapter
