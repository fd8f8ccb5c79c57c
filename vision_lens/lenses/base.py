"""What every lens shares: its config, saving and loading, and decoding through the model's unembedding.

A lens maps the feature rows of block ``index`` (laid out as
:class:`~vision_lens.readout.FeatureLayout` says) to logits, never seeing images
or loops. Fitting sees a lens only through :meth:`SavedLens.fit_groups` (each
translator with the blocks it is fitted on), :meth:`SavedLens.fit_inputs` and
:meth:`SavedLens.decode`: the logits of a translator's output ``h`` are
``decode(forwarded + h)`` (no ``forwarded`` where nothing is carried), so a new
kind that keeps to this shape needs no change to any fitter.

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

import torch
from torch import Tensor, nn

from ..adapters import ModelAdapter
from ..adapters.base import file_sha256, state_dict_sha256
from ..errors import UserError
from ..files import write_bytes_atomic, write_text_atomic
from ..lens_kinds import LensKind, lens_kind
from ..readout import FeatureLayout
from ..schema import LENS_CONFIG, SCHEMA_KEY, UNVERSIONED, schema_version, upgrade_fit_v1


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
    fit: dict = field(default_factory=dict)  # how it was fitted: loss, images, settings, a FitRecord per block
    params_sha256: str = ""  # of params.pt, set when saved
    # The images it was fitted on (data.SelectedImages.record: data, split, count, a sample's content ids), which
    # eval checks it is not evaluated on
    fit_images: dict = field(default_factory=dict)
    schema: int = LENS_CONFIG  # the version it was written in (lenses read from older folders: that version)

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
        record = dataclasses.asdict(self)
        return {SCHEMA_KEY: record.pop("schema")} | record

    @classmethod
    def read(cls, saved: dict, path: Path) -> "LensConfig":
        """A ``config.json``'s contents (read from ``path``), in the current form: a version-1 config (written before
        versions were recorded) may lack ``params_sha256`` and ``fit_images``, and its fit records are upgraded;
        a newer one must hold every field (a missing one is a TypeError, as damage is)."""
        version = schema_version(saved, LENS_CONFIG, path)
        names = {f.name for f in dataclasses.fields(cls)} - {"schema"}
        values = {k: v for k, v in saved.items() if k in names}
        if version == UNVERSIONED:
            values["fit"] = upgrade_fit_v1(values.get("fit", {}))
        else:
            missing = sorted(names - set(values))
            if missing:
                raise TypeError(f"missing {', '.join(missing)}")
        return cls(**values, schema=version)


def unembed_hash(unembed: nn.Module) -> str:
    return state_dict_sha256(unembed.state_dict())[:16]


class SavedLens(nn.Module):
    """Save/load in the tuned-lens layout; subclasses keep trainable state in ``params``."""

    lens_type = ""
    config: LensConfig
    params: nn.ModuleList

    @property
    def kind(self) -> LensKind:
        """The kind's declaration in the registry (what it is fitted to, its solvers, label, style)."""
        return lens_kind(self.lens_type)

    def fit_groups(self) -> list[tuple[nn.Module, list[int]]]:
        """What fitting optimises: each translator with the blocks whose loss it is fitted on."""
        return [(module, [k]) for k, module in enumerate(self.params)]

    def standardization_groups(self) -> list[list[int]]:
        """Blocks whose translator inputs share one standardisation (default: each block its own)."""
        return [[k] for k in range(len(self.params))]

    def fit_inputs(self, features: Tensor, index: int) -> tuple[Tensor, Tensor | None]:
        """Block ``index`` as a translator sees it: ``(input, forwarded)``; the logits are
        ``decode(hidden(translator, input, forwarded))``. Both are fixed while a lens is fitted."""
        raise NotImplementedError

    @staticmethod
    def hidden(translator: nn.Module, inputs: Tensor, forwarded: Tensor | None) -> Tensor:
        """A translator's output, plus what is forwarded (the identity path's) where something is."""
        return translator(inputs) if forwarded is None else forwarded + translator(inputs)

    @property
    def head(self) -> nn.Linear | None:
        """The fixed linear map from a translator's output to logits (None: the output is the logits).

        The logits are ``translator(input) @ head.weight.T + base_logits(forwarded)``. Only where
        :attr:`decodes_linearly`; otherwise :meth:`decode` gives the logits.
        """
        return None

    @property
    def decodes_linearly(self) -> bool:
        """Whether the logits are affine in the translator's output (where the convex solver may apply)."""
        return True

    def decode(self, hidden: Tensor) -> Tensor:
        """Logits of :meth:`hidden`'s output ``(..., out)``."""
        return hidden

    def base_logits(self, forwarded: Tensor | None) -> Tensor | None:
        """What the logits add to the head's map of a translator's output (None: nothing)."""
        return None

    @torch.no_grad()
    def reset(self, seed: int = 0) -> None:
        """Every translator at its start (see ``Translator.reset``), seeded per translator."""
        for k, (module, _) in enumerate(self.fit_groups()):
            module.reset(torch.Generator().manual_seed(seed + k))

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
            config = LensConfig.read(saved, config_path)
            layout = config.feature_layout
            if not isinstance(config.fit_images, dict) or not isinstance(config.fit_images.get("sample", []), list):
                raise TypeError("fit_images is not an object with a list of sampled content ids")
        except (TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, UserError):
                raise
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
    """Decodes block features through the model's own frozen ``unembed``, reading a block's identity path.

    Where block ``k`` has an identity path ``P_k`` (affine, with channel map ``W_k``), what the network itself
    forwards to the head is ``P_k(p_path)``, ``p_path`` the average over the sub-grid that the path reads; the
    whole block (``p_whole``: the global mean, plus grid cells) reaches the head's space slot by slot through
    ``W_k``.
    """

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
