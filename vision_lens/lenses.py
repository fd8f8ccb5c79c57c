"""Lens math only: maps from a block's pooled features to class logits.

A lens never sees images or loops; it takes the pooled features of block
``index`` (``(N, slots * channels)``, see :mod:`vision_lens.capture`) and
returns logits. ``LogitLens`` and ``TunedLens`` share the model's frozen head
and the network's own identity paths; they differ only in
``transform_hidden``. ``LinearProbe`` is the label-trained baseline of Alain &
Bengio (2016) and does not use the head.

Artifacts follow tuned-lens: a folder with ``config.json`` and ``params.pt``.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .adapters import ModelAdapter
from .capture import pooling_slots


@dataclass
class LensConfig:
    """What a saved lens was fitted on; written as ``config.json``."""

    model: str
    weights_id: str
    blocks: list[str]
    channels: list[int]
    has_path: list[bool]
    head_dim: int
    num_classes: int
    grid: int = 1
    lens_type: str = "tuned"
    head_hash: str = ""
    fit: dict = field(default_factory=dict)  # how it was fitted: loss, epochs, images, ...

    @classmethod
    def from_adapter(cls, adapter: ModelAdapter, grid: int, lens_type: str) -> "LensConfig":
        return cls(
            model=adapter.name,
            weights_id=adapter.weights_id,
            blocks=[b.name for b in adapter.blocks],
            channels=[b.channels for b in adapter.blocks],
            has_path=[b.path is not None for b in adapter.blocks],
            head_dim=adapter.head_dim,
            num_classes=adapter.num_classes,
            grid=grid,
            lens_type=lens_type,
            head_hash=head_hash(adapter.head),
        )

    @property
    def slots(self) -> int:
        return pooling_slots(self.grid)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LensConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def head_hash(head: nn.Linear) -> str:
    digest = hashlib.sha256(head.weight.detach().cpu().numpy().tobytes())
    digest.update(head.bias.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class SavedLens(nn.Module):
    """Save/load in the tuned-lens layout; subclasses keep trainable state in ``params``."""

    config: LensConfig
    params: nn.ModuleList

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        """What fitting optimises: each module with the blocks whose loss it is fitted on."""
        return [(module, [k]) for k, module in enumerate(self.params)]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.params.state_dict(), path / "params.pt")
        (path / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, adapter: ModelAdapter) -> "SavedLens":
        """Read a lens folder back for ``adapter``'s model (checked against the config)."""
        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "params.pt").is_file():
            raise FileNotFoundError(f"lens folder {path} needs config.json and params.pt; fit one with `vision-lens train`")
        config = LensConfig.from_dict(json.loads((path / "config.json").read_text()))
        if config.lens_type != cls.lens_type:
            raise ValueError(f"lens folder {path} holds a {config.lens_type!r} lens, not {cls.lens_type!r}")
        if config.model != adapter.name or config.head_hash != head_hash(adapter.head):
            raise ValueError(
                f"lens folder {path} was fitted on {config.model} (head {config.head_hash}), not on "
                f"{adapter.name} (head {head_hash(adapter.head)}); pass the --model and --weights it was fitted on"
            )
        lens = cls(config, adapter)
        lens.params.load_state_dict(torch.load(path / "params.pt", map_location="cpu", weights_only=True))
        return lens.to(adapter.device)


class Lens(SavedLens, abc.ABC):
    """Decodes block features through the model's own frozen head."""

    lens_type = ""

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        super().__init__()
        self.config = config
        head = adapter.head
        self.register_buffer("head_weight", head.weight.detach().clone(), persistent=False)
        self.register_buffer("head_bias", head.bias.detach().clone(), persistent=False)
        for k in range(len(config.blocks)):
            path = adapter.identity_path(k)
            if path is not None:
                self.register_buffer(f"path_weight_{k}", path.weight.clone(), persistent=False)
                self.register_buffer(f"path_bias_{k}", path.bias.clone(), persistent=False)
        self.params = nn.ModuleList()

    def carry(self, features: Tensor, index: int) -> Tensor | None:
        """Block features carried into the head's space by the identity path, slot by slot.

        ``(N, slots * C)`` -> ``(N, slots * D)``; the first D columns are the
        carried global average, which is what the head reads. ``None`` if the
        block has no linear path to the head.
        """
        if not self.config.has_path[index]:
            return None
        weight, bias = getattr(self, f"path_weight_{index}"), getattr(self, f"path_bias_{index}")
        slots = features.view(len(features), self.config.slots, -1)
        return (slots @ weight.T + bias).flatten(1)

    def unembed(self, hidden: Tensor) -> Tensor:
        return hidden @ self.head_weight.T + self.head_bias

    @abc.abstractmethod
    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        """Block ``index``'s features in the head's input space, or None if undefined."""

    def forward(self, features: Tensor, index: int) -> Tensor | None:
        hidden = self.transform_hidden(features, index)
        return None if hidden is None else self.unembed(hidden)


class LogitLens(Lens):
    """The frozen head applied to the block's features carried by the identity path."""

    lens_type = "logit"

    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        carried = self.carry(features, index)
        return None if carried is None else carried[:, : self.config.head_dim]


class TunedLens(Lens):
    """An affine translator per block, then the frozen head.

    With an identity path the translator is residual around it, ``S p + A p + b``
    in the head's space, with ``A`` and ``b`` initialised to zero: every tuned
    lens starts as the logit lens, and weight decay pulls towards it. Without a
    path the translator is a plain affine map ``A p + b`` into the head's space.
    """

    lens_type = "tuned"

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        super().__init__(config, adapter)
        d = config.head_dim
        for k, channels in enumerate(config.channels):
            width = config.slots * (d if config.has_path[k] else channels)
            translator = nn.Linear(width, d)
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
            self.params.append(translator)

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        """Apply translator ``translator`` to block ``index``'s features (transfer when they differ).

        Two blocks share a space only through their identity paths; where
        either block lacks one, a cross-block transfer is undefined (None).
        """
        carried = self.carry(features, index)
        if translator == index and carried is None:
            return self.params[index](features)
        if carried is None or not self.config.has_path[translator]:
            return None
        return carried[:, : self.config.head_dim] + self.params[translator](carried)

    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        return self.translate(features, index, index)

    def transfer(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        """Logits of translator ``translator`` applied to block ``index``'s features."""
        hidden = self.translate(features, index, translator)
        return None if hidden is None else self.unembed(hidden)


class SharedTunedLens(TunedLens):
    """One translator for every block with an identity path, fitted on all of them at once.

    The sceptic's test of iterative refinement: if blocks refine one prediction
    in a shared space, one translator decodes them all nearly as well as a
    translator per block; the gap to ``TunedLens`` at each block is the price
    of sharing. Blocks without a path share no space with the others, so the
    shared lens is undefined (None) there.
    """

    lens_type = "shared"

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        Lens.__init__(self, config, adapter)
        d = config.head_dim
        translator = nn.Linear(config.slots * d, d)
        nn.init.zeros_(translator.weight)
        nn.init.zeros_(translator.bias)
        self.params.append(translator)

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        return [(self.params[0], [k for k, has_path in enumerate(self.config.has_path) if has_path])]

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        carried = self.carry(features, index)
        if carried is None:
            return None
        return carried[:, : self.config.head_dim] + self.params[0](carried)


class LinearProbe(SavedLens):
    """Softmax regression on each block's pooled features, trained on the labels."""

    lens_type = "linear_probe"

    def __init__(self, config: LensConfig, adapter: ModelAdapter | None = None):
        super().__init__()
        self.config = config
        self.params = nn.ModuleList(
            nn.Linear(config.slots * c, config.num_classes) for c in config.channels
        )
        for probe in self.params:
            nn.init.zeros_(probe.weight)
            nn.init.zeros_(probe.bias)

    def forward(self, features: Tensor, index: int) -> Tensor:
        return self.params[index](features)


LENS_TYPES: dict[str, type[SavedLens]] = {c.lens_type: c for c in (LogitLens, TunedLens, SharedTunedLens, LinearProbe)}


def build_lenses(adapter: ModelAdapter, grid: int, lens_types: Sequence[str]) -> dict[str, SavedLens]:
    """Fresh lenses of the given types for ``adapter`` (logit lens included where asked)."""
    return {
        t: LENS_TYPES[t](LensConfig.from_adapter(adapter, grid, t), adapter).to(adapter.device) for t in lens_types
    }
