"""Lens math only: maps from a block's pooled features to class logits.

A lens never sees images or loops; it takes the feature rows of block
``index`` (laid out as :class:`~vision_lens.readout.FeatureLayout` says) and
returns logits. ``LogitLens`` and ``TunedLens`` share the model's frozen
``unembed`` and the network's own identity paths; they differ only in
``transform_hidden``. ``LinearProbe`` is the label-trained baseline of Alain &
Bengio (2016) and does not use the unembedding.

The tuned lens reads the whole block. Where block ``k`` has an identity path
``P_k`` (affine, with channel map ``W_k``), its translator is residual around
what the network itself forwards::

    h_k = P_k(p_path) + A_k (W_k p_whole) + b_k,    logits = unembed(h_k)

``p_path`` is the average over the sub-grid that the path reads (so
``A_k = 0, b_k = 0`` is exactly the logit lens), ``p_whole`` the averages over
the whole map (global mean, plus grid cells), carried slot by slot into the
head's space by the path's channel map. Transfer applies ``A_i, b_i`` to block
``j``'s carried features.

Artifacts follow tuned-lens: a folder with ``config.json`` and ``params.pt``.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .adapters import ModelAdapter
from .adapters.base import file_sha256, state_dict_sha256
from .errors import UserError
from .files import write_bytes_atomic, write_text_atomic
from .readout import FeatureLayout


class LensFolderError(UserError, ValueError):
    """A lens folder cannot be used: damaged, or fitted on something else; the message names the file."""


@dataclass
class LensConfig:
    """What a saved lens was fitted on; written as ``config.json``."""

    model: str
    weights_id: str
    layout: dict  # FeatureLayout.to_dict(): blocks, channels, path strides, grid
    head_dim: int
    num_classes: int
    lens_type: str = "tuned"
    unembed_hash: str = ""
    fit: dict = field(default_factory=dict)  # how it was fitted: loss, images, penalty per block, ...
    params_sha256: str = ""  # of params.pt, set when saved ("" in folders written before it was recorded)
    # The images it was fitted on (data.SelectedImages.record: data, split, count, a sample's content ids), which
    # eval checks it is not evaluated on ({} in folders written before it was recorded)
    fit_images: dict = field(default_factory=dict)

    @classmethod
    def from_adapter(cls, adapter: ModelAdapter, layout: FeatureLayout, lens_type: str) -> "LensConfig":
        return cls(
            model=adapter.name,
            weights_id=adapter.weights_id,
            layout=layout.to_dict(),
            head_dim=adapter.head_dim,
            num_classes=adapter.num_classes,
            lens_type=lens_type,
            unembed_hash=unembed_hash(adapter.unembed),
        )

    @property
    def feature_layout(self) -> FeatureLayout:
        return FeatureLayout.from_dict(self.layout)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LensConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def unembed_hash(unembed: nn.Module) -> str:
    return state_dict_sha256(unembed.state_dict())[:16]


class SavedLens(nn.Module):
    """Save/load in the tuned-lens layout; subclasses keep trainable state in ``params``."""

    config: LensConfig
    params: nn.ModuleList

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        """What fitting optimises: each module with the blocks whose loss it is fitted on."""
        return [(module, [k]) for k, module in enumerate(self.params)]

    def standardization_groups(self) -> list[list[int]]:
        """Blocks whose translator inputs share one standardisation (default: each block its own)."""
        return [[k] for k in range(len(self.params))]

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, Tensor | None]:
        """Block ``index`` as a translator sees it: ``(input, forwarded)``, see :meth:`decode`.

        Both are fixed while a lens is fitted, so fitting computes them once.
        """
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear | None:
        """The fixed linear map from a translator's output to logits (None: the output is the logits).

        The logits are ``translator(input) @ head.weight.T + base_logits(forwarded)``. Only where
        :attr:`decodes_linearly`; otherwise :meth:`decode` gives the logits.
        """
        return None

    @property
    def decodes_linearly(self) -> bool:
        """Whether the logits are affine in the translator's output (the fast convex solver's case)."""
        return True

    def decode(self, hidden: Tensor) -> Tensor:
        """Logits of a translator's output ``(..., out)`` plus what is forwarded (see :meth:`fit_inputs`)."""
        return hidden

    def base_logits(self, forwarded: Tensor | None) -> Tensor | None:
        """What the logits add to the head's map of a translator's output (None: nothing)."""
        return None

    def save(self, path: str | Path) -> None:
        """``params.pt`` and ``config.json`` into the folder ``path``, each written atomically (a failed write, a
        full disk say, raises an OSError naming the file and leaves the file that was there)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.params.state_dict(), buffer)
        params = buffer.getvalue()
        write_bytes_atomic(path / "params.pt", params)
        self.config.params_sha256 = hashlib.sha256(params).hexdigest()  # a damaged or swapped params.pt fails it
        write_text_atomic(path / "config.json", json.dumps(self.config.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, adapter: ModelAdapter) -> "SavedLens":
        """Read a lens folder back for ``adapter``'s model, checked against its config: the model, head and blocks
        it was fitted on, and params.pt's checksum, parameter names, shapes and finiteness (each failure a
        LensFolderError naming the file)."""
        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "params.pt").is_file():
            raise FileNotFoundError(f"lens folder {path} needs config.json and params.pt; fit one with `vision-lens train`")
        refit = "fit the lens again with `vision-lens train`"
        config_path, params_path = path / "config.json", path / "params.pt"
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LensFolderError(f"{config_path} is not readable JSON ({exc}); {refit}") from exc
        if not isinstance(saved, dict) or "layout" not in saved:
            raise LensFolderError(f"{config_path} is no lens config of this vision-lens (an older one wrote configs "
                                  f"before whole-block readout, without 'layout'); {refit}")
        try:
            config = LensConfig.from_dict(saved)
            layout = config.feature_layout
            if not isinstance(config.fit_images, dict) or not isinstance(config.fit_images.get("sample", []), list):
                raise TypeError("fit_images is not an object with a list of sampled content ids")
        except (TypeError, ValueError, KeyError) as exc:
            raise LensFolderError(f"{config_path} is damaged ({exc.__class__.__name__}: {exc}); {refit}") from exc
        if config.lens_type != cls.lens_type:
            raise LensFolderError(f"lens folder {path} holds a {config.lens_type!r} lens, not {cls.lens_type!r}")
        # The weights too: a backbone changed under the same head (fine-tuned, another checkpoint) has other features.
        fitted_on = (config.model, config.weights_id, config.unembed_hash)
        if fitted_on != (adapter.name, adapter.weights_id, unembed_hash(adapter.unembed)):
            raise LensFolderError(
                f"lens folder {path} was fitted on {config.model} with weights {config.weights_id} (head "
                f"{config.unembed_hash}), not on {adapter.name} with weights {adapter.weights_id} (head "
                f"{unembed_hash(adapter.unembed)}); pass the --model and --weights it was fitted on"
            )
        if list(layout.blocks) != [b.name for b in adapter.blocks]:
            raise LensFolderError(f"lens folder {path} was fitted on other blocks than {adapter.name} has")
        if config.params_sha256 and file_sha256(params_path) != config.params_sha256:
            raise LensFolderError(f"{params_path} does not match the checksum in its config.json: damaged, or "
                                  f"replaced by another lens's; {refit}")
        try:
            state = torch.load(params_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged file
            raise LensFolderError(f"{params_path} is not a readable torch file ({exc.__class__.__name__}); {refit}") from exc
        lens = cls(config, adapter)
        expected = lens.params.state_dict()
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise LensFolderError(f"{params_path} holds no state dict of tensors; {refit}")
        wrong = sorted(set(state) ^ set(expected)) + [
            f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if wrong:
            raise LensFolderError(f"{params_path} does not hold the parameters of a {cls.lens_type} lens of "
                                  f"{adapter.name} ({', '.join(wrong[:5])}); {refit}")
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
        if bad:
            raise LensFolderError(f"{params_path} holds NaN or Inf in {', '.join(bad[:5])}; {refit}")
        lens.params.load_state_dict(state)
        return lens.to(adapter.device)


class Lens(SavedLens, abc.ABC):
    """Decodes block features through the model's own frozen ``unembed``."""

    lens_type = ""

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        super().__init__()
        self.config = config
        self.layout = config.feature_layout
        self.unembed = adapter.unembed
        self.paths = nn.ModuleDict({str(k): b.path for k, b in enumerate(adapter.blocks) if b.path is not None})
        self.params = nn.ModuleList()

    def train(self, mode: bool = True) -> "Lens":
        super().train(mode)
        self.unembed.eval()  # frozen: a norm inside it must keep its eval behaviour while lenses fit
        return self

    def forwarded(self, features: Tensor, index: int) -> Tensor | None:
        """``P(p_path)``: what the network forwards from block ``index`` to the head (the logit lens's input,
        ``(N, D)``), or None without an identity path."""
        path = self.paths[str(index)] if str(index) in self.paths else None
        return None if path is None else path(self.layout.path_input(features, index))

    def carried_whole(self, features: Tensor, index: int) -> Tensor:
        """``W p_whole``: the whole-block vectors carried slot by slot into the head's space by the path's channel
        map, ``(N, slots * D)``; block ``index`` must have an identity path."""
        whole = self.layout.whole(features, index).view(len(features), self.layout.slots, -1)
        return (whole @ self.paths[str(index)].weight.T).flatten(1)

    @abc.abstractmethod
    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        """Block ``index``'s features in the head's input space, or None if undefined."""

    def forward(self, features: Tensor, index: int) -> Tensor | None:
        hidden = self.transform_hidden(features, index)
        return None if hidden is None else self.unembed(hidden)


class Translator(nn.Module):
    """An affine map on standardised inputs: ``x -> A (x - mean) / scale + b``, zero-initialised.

    Zero: a tuned lens starts as the logit lens, and weight decay pulls
    towards it. Standardising (``mean`` and ``scale`` are set once from the
    fit images, see :meth:`SavedLens.standardization_groups`) conditions
    L-BFGS well and makes the L2 penalty treat input channels alike. It is
    still one affine map. Translators that are applied to other blocks
    (transfer, sharing) all use one standardisation, so that a translator
    meets another block's features in the coordinates it was fitted in.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        self.varying = torch.ones(n_in, dtype=torch.bool)  # inputs that vary on the fit images
        self.linear = nn.Linear(n_in, n_out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def standardize(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs by ``mean`` and ``std``; a constant input channel (std ~ 0) keeps scale 1."""
        self.varying = std > 1e-6 * std.max().clamp(min=1e-12)
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(self.varying, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.scale)


class LogitLens(Lens):
    """The frozen unembedding applied to what the identity path carries from the block."""

    lens_type = "logit"

    def transform_hidden(self, features: Tensor, index: int) -> Tensor | None:
        return self.forwarded(features, index)


class TunedLens(Lens):
    """An affine translator per block that reads the whole block, then the frozen unembedding.

    With an identity path: ``P(p_path) + A (W p_whole) + b`` (see the module
    docstring), ``A`` and ``b`` zero-initialised, so every tuned lens starts
    as the logit lens and weight decay pulls towards it. Without a path the
    translator is a plain affine map ``A p_whole + b`` into the head's space.
    """

    lens_type = "tuned"

    def __init__(self, config: LensConfig, adapter: ModelAdapter):
        super().__init__(config, adapter)
        d, layout = config.head_dim, self.layout
        for k, channels in enumerate(layout.channels):
            self.params.append(Translator(layout.slots * (d if layout.has_path(k) else channels), d))

    def standardization_groups(self) -> list[list[int]]:
        """All blocks with an identity path together (they meet each other's translators in transfer), the rest alone."""
        with_path = [k for k in range(len(self.layout.blocks)) if self.layout.has_path(k)]
        return [with_path] * bool(with_path) + [[k] for k in range(len(self.layout.blocks)) if k not in with_path]

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, Tensor | None]:
        """``(W p_whole, P p_path)`` with an identity path; ``(p_whole, None)`` without one."""
        forwarded = self.forwarded(features, index)
        if forwarded is None:
            return self.layout.whole(features, index), None
        return self.carried_whole(features, index), forwarded

    @staticmethod
    def hidden(translator: nn.Module, inputs: Tensor, forwarded: Tensor | None) -> Tensor:
        return translator(inputs) if forwarded is None else forwarded + translator(inputs)

    @property
    def head(self) -> nn.Linear | None:
        return self.unembed if self.decodes_linearly else None

    @property
    def decodes_linearly(self) -> bool:
        """Whether the unembedding is one linear layer; else (a final norm, e.g.) fitting goes through autograd."""
        return isinstance(self.unembed, nn.Linear)

    def decode(self, hidden: Tensor) -> Tensor:
        return self.unembed(hidden)

    def base_logits(self, forwarded: Tensor | None) -> Tensor:
        """``unembed(forwarded)``, or the head's bias where nothing is forwarded."""
        if forwarded is not None:
            return self.unembed(forwarded)
        bias = self.head.bias
        return torch.zeros(self.head.out_features, device=self.head.weight.device) if bias is None else bias.detach()

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        """Apply translator ``translator`` to block ``index``'s features (transfer when they differ).

        Two blocks share a space only through their identity paths; where
        either block lacks one, a cross-block transfer is undefined (None).
        """
        inputs, forwarded = self.fit_inputs(features, index)
        if translator != index and (forwarded is None or not self.layout.has_path(translator)):
            return None
        return self.hidden(self.params[translator], inputs, forwarded)

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
        self.params.append(Translator(self.layout.slots * config.head_dim, config.head_dim))

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        return [(self.params[0], [k for k in range(len(self.layout.blocks)) if self.layout.has_path(k)])]

    def translate(self, features: Tensor, index: int, translator: int) -> Tensor | None:
        inputs, forwarded = self.fit_inputs(features, index)
        return None if forwarded is None else self.hidden(self.params[0], inputs, forwarded)


class LinearProbe(SavedLens):
    """Softmax regression on each block's whole-block pooled features, trained on the labels."""

    lens_type = "linear_probe"

    def __init__(self, config: LensConfig, adapter: ModelAdapter | None = None):
        super().__init__()
        self.config = config
        self.layout = config.feature_layout
        self.params = nn.ModuleList(
            Translator(self.layout.slots * c, config.num_classes) for c in self.layout.channels
        )

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, None]:
        return self.layout.whole(features, index), None

    def forward(self, features: Tensor, index: int) -> Tensor:
        return self.params[index](self.layout.whole(features, index))


LENS_TYPES: dict[str, type[SavedLens]] = {c.lens_type: c for c in (LogitLens, TunedLens, SharedTunedLens, LinearProbe)}


def build_lenses(adapter: ModelAdapter, layout: FeatureLayout, lens_types: Sequence[str]) -> dict[str, SavedLens]:
    """Fresh lenses of the given types for ``adapter`` on features laid out as ``layout``."""
    return {
        t: LENS_TYPES[t](LensConfig.from_adapter(adapter, layout, t), adapter).to(adapter.device) for t in lens_types
    }
