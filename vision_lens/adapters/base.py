"""The model adapter interface: what the pipeline needs to know about a network.

An adapter answers the same questions for every architecture (timm-style), so
capture, fitting and evaluation never special-case a model:

* ``blocks``: the lensed blocks in forward order, named by their module path;
* ``head``: the linear classifier that reads the globally pooled last block;
* ``identity_path(i)``: the network's own linear path carrying block ``i`` to
  the head's input space, or ``None`` where the network has none;
* ``transform``: the preprocessing that the weights expect;
* ``logits(x)``: the model's own output logits.
"""

from __future__ import annotations

import abc
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn


class WeightsError(ValueError):
    """A checkpoint cannot be used with the requested architecture."""


@dataclass(frozen=True)
class Block:
    """One lensed block.

    Attributes:
        name: the block's name in the model's own module tree (``layer2.1``).
        module: the module whose output is captured (usually ``name``).
        channels: channels of the block output.
        path: module names of the linear identity path from this block to the
            head input, applied in order; ``()`` when the block output already
            lives in the head's space, ``None`` when the network has no linear
            path from here (e.g. Inception's concatenated branches).
        path_stride: spatial subsampling that ``path`` applies. Capture pools on
            this sub-grid, so that pooling and the path commute exactly.
    """

    name: str
    module: str
    channels: int
    path: tuple[str, ...] | None
    path_stride: int = 1


@dataclass(frozen=True)
class AffineMap:
    """``x -> x @ weight.T + bias``: a block's identity path on pooled vectors."""

    weight: Tensor  # (head_dim, channels)
    bias: Tensor  # (head_dim,)

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias


def pooled_affine(modules: Sequence[nn.Module], channels: int) -> AffineMap:
    """The affine map that per-pixel ``modules`` apply to a pooled vector.

    The identity paths we support (option-A shortcuts, strided 1x1 conv + BN)
    act on every pixel alike once their subsampling is done, so they commute
    with average pooling. Running them on 1x1 maps of the unit vectors and of
    zero reads off their weight and bias exactly.
    """
    ref = next((t for m in modules for t in [*m.parameters(), *m.buffers()]), None)
    kw = dict(dtype=ref.dtype, device=ref.device) if ref is not None else {}
    x = torch.cat([torch.zeros(1, channels, **kw), torch.eye(channels, **kw)])[..., None, None]
    with torch.no_grad():
        for module in modules:
            x = module(x)
    out = x.flatten(1).double()
    return AffineMap(weight=(out[1:] - out[0]).T.float(), bias=out[0].float())


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


def fetch_checkpoint(weights: str) -> tuple[dict[str, Tensor], str]:
    """The state dict at a URL (through torch.hub's cache) or in a local file, and its file's sha256.

    A download and a local copy of the same file get the same id, so they
    share feature caches.
    """
    if not weights.startswith(("http://", "https://")):
        return read_checkpoint(weights), file_sha256(weights)
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

    Subclasses set ``model``, ``blocks``, ``class_names`` and ``weights_id`` and
    implement ``head`` and ``transform``. ``identity_path`` and ``logits``
    have defaults that fit most classifiers.
    """

    name: str
    model: nn.Module
    blocks: list[Block]
    class_names: list[str]
    weights_id: str  # sha256 of the weights file, or of the random-init state dict
    # The (height, width) that ``transform`` requires of raw images, or None where it resizes
    # (and crops) any image to the model's input. Data loading stops on an image of another
    # size, naming the file and both sizes.
    input_size: tuple[int, int] | None = None
    # The model's own intermediate classifiers (e.g. GoogLeNet's aux1/aux2): block name ->
    # module mapping that block's full output map to logits. Reported beside the lenses.
    aux_classifiers: Mapping[str, nn.Module] = MappingProxyType({})

    @property
    @abc.abstractmethod
    def head(self) -> nn.Linear:
        """The linear classifier applied to the globally pooled last block."""

    @property
    @abc.abstractmethod
    def transform(self) -> Callable:
        """Preprocessing of one PIL image into the model's input tensor."""

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def head_dim(self) -> int:
        return self.head.in_features

    def label_map(self, classes: Sequence[str]) -> np.ndarray:
        """The model output index of each dataset class (in the dataset's order); -1: no such output.

        Images of a class mapped to -1 count as unlabelled: label metrics skip
        them, while KL and agreement with the model still use them.
        """
        if len(classes) != self.num_classes:
            raise ValueError(f"the data has {len(classes)} classes but {self.name} has {self.num_classes} outputs")
        return np.arange(len(classes))

    def logits(self, x: Tensor) -> Tensor:
        """The model's own output logits."""
        return self.model(x)

    def identity_path(self, index: int) -> AffineMap | None:
        """Block ``index``'s linear path into the head's input space, if any."""
        block = self.blocks[index]
        if block.path is None:
            return None
        # Blocks of a stage share one path, and reading off a 2048-wide one takes seconds.
        known = vars(self).setdefault("_identity_paths", {})
        key = (block.path, block.channels)
        if key not in known:
            known[key] = pooled_affine([self.model.get_submodule(name) for name in block.path], block.channels)
        return known[key]

    def to(self, device: str | torch.device) -> "ModelAdapter":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


_REGISTRY: dict[str, Callable[..., ModelAdapter]] = {}


def register_adapter(family: str) -> Callable:
    """Register ``build(arch, weights, **kwargs) -> ModelAdapter`` for ``family:arch``."""

    def wrap(build: Callable[..., ModelAdapter]) -> Callable[..., ModelAdapter]:
        _REGISTRY[family] = build
        return build

    return wrap


def create_adapter(name: str, weights: str | None = None, **kwargs) -> ModelAdapter:
    """Build the adapter for ``name`` (``family:arch``, e.g. ``cifar:resnet20``).

    ``weights`` is a local checkpoint path, a URL, ``"pretrained"`` (the
    published weights for the name; the default) or ``"random"`` (a random
    initialisation, the control run).
    """
    match = re.fullmatch(r"([a-z0-9_]+):(.+)", name)
    if match is None or match.group(1) not in _REGISTRY:
        known = ", ".join(f"{f}:…" for f in sorted(_REGISTRY))
        raise ValueError(f"--model {name!r} is not a known model; use family:arch with one of the families {known}")
    adapter = _REGISTRY[match.group(1)](match.group(2), weights, **kwargs)
    adapter.name = name
    adapter.model.eval().requires_grad_(False)
    return adapter
