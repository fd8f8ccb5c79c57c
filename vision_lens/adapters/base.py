"""The model adapter interface: what the pipeline needs to know about a network.

An adapter answers the same questions for every architecture (timm-style), so
capture, fitting and evaluation never special-case a model:

* ``blocks``: the lensed blocks in forward order, named by their module path,
  each with its identity path as a module (:class:`~vision_lens.readout.Block`);
* ``unembed``: the module that maps the pooled last block to logits (the head
  plus any final norm), as tuned-lens's ``Unembed``;
* ``transform``: the preprocessing that the weights expect;
* ``logits(x)``: the model's own output logits.

Weights are resolved once, in :func:`create_adapter`: ``random``, what the
architecture's registration names for ``pretrained`` (:mod:`~vision_lens.adapters.registry`),
a URL or a local file. A family says only how to build its network and wrap it
(:class:`ModelFamily`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..readout import Block, IdentityPath
from . import registry
from .errors import ClassMatchError, WeightsError
from .loading import (download_checkpoint, file_sha256, load_state_dict_strict, read_checkpoint, state_dict_sha256,
                      trained_here)
from .weights import LoadedWeights


def _listed(names: Sequence[str], most: int = 10) -> str:
    """``names`` for a message: the first ``most``, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return (", ".join(names[:most]) or "none") + more


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
    # What the model reads, which chooses how data is planned and captured: "images" (an ImageFolder, through
    # ``transform``) or "text" (documents cut into token windows by the adapter's tokenizer; a row per position).
    data_kind: str = "images"
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

    def run_blocks(self, x: Tensor) -> None:
        """Run every block on the input batch ``x`` (capture's forward pass; its hooks read the blocks). Default:
        the whole model; a family whose head is costly and unneeded there (a language model's vocabulary) skips it."""
        self.logits(x)

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




def on_pooled_vector(*modules: nn.Module) -> nn.Module:
    """``modules``, made for ``(N, C, 1, 1)`` maps (a head's 1x1 convolution, a LayerNorm2d), as one module on
    pooled ``(..., C)`` vectors: what a head that pools first and then works on the 1x1 map computes. Any leading
    dimensions, as every unembedding takes (the fitters run several translators' outputs at once)."""
    return _OnPooledVector(nn.Sequential(*modules))


class _OnPooledVector(nn.Module):
    def __init__(self, modules: nn.Sequential):
        super().__init__()
        self.on_map = modules

    def forward(self, x: Tensor) -> Tensor:
        y = self.on_map(x.reshape(-1, x.shape[-1], 1, 1)).flatten(1)
        return y.reshape(*x.shape[:-1], y.shape[-1])


@dataclass(frozen=True)
class ModelFamily:
    """How one family builds and wraps its networks; an :class:`~vision_lens.adapters.registry.Architecture`
    registration names it.

    Attributes:
        build: ``build(arch, state_dict, num_classes)`` -> the network, shaped
            like ``state_dict`` (a checkpoint) or randomly initialised (None).
            Raises UnknownModelError for an ``arch`` it does not know.
        wrap: ``wrap(model, arch, weights)`` -> the adapter; ``weights`` is a
            :class:`~vision_lens.adapters.weights.LoadedWeights` (their id, and
            the registration's entry with its preprocessing and class order).
        load_published: for families whose published weights come through
            their own hub loader (timm): ``load_published(model, arch)`` loads
            them into ``model`` and returns their id.
        read: reads a local checkpoint file (default: :func:`read_checkpoint`).
    """

    build: Callable[..., nn.Module]
    wrap: Callable[[nn.Module, str, LoadedWeights], ModelAdapter]
    load_published: Callable[[nn.Module, str], str] | None = None
    read: Callable[[str], dict[str, Tensor]] = read_checkpoint


def create_adapter(
    name: "str | nn.Module | ModelAdapter", weights: str | None = "pretrained", seed: int = 0,
    num_classes: int | None = None, **module,
) -> ModelAdapter:
    """Build the adapter for ``name`` (``family:arch``, e.g. ``cifar:resnet20``; `vision-lens models` lists them).

    ``weights`` is ``"pretrained"`` (what the architecture's weights entry
    names: a published file, a checkpoint trained here, a hub id; also None),
    ``"random"`` (a random initialisation seeded by ``seed``, the control run),
    a URL or a local checkpoint. ``num_classes`` applies to random
    initialisation; a checkpoint brings its own class count.

    ``name`` may also be a network in memory, a ``torch.nn.Module`` whose
    blocks, unembedding and preprocessing the keyword arguments ``module``
    name (:func:`~vision_lens.adapters.module.module_adapter`: ``blocks``,
    ``unembed``, ``preprocessing``, ...), with its own weights; or an adapter
    (a :class:`ModelAdapter` subclass of one's own), returned as it is.
    """
    if not isinstance(name, str):
        return _in_memory(name, weights, num_classes, module)
    if module:
        raise TypeError(f"create_adapter({name!r}): {', '.join(module)} describe a torch.nn.Module passed as the "
                        "model, not a registered model name")
    architecture, arch = registry.resolve(name)
    family = architecture.load_family()
    # The random init is seeded by ``seed`` on a forked generator: the caller's global torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights == "random":
            model = family.build(arch, None, num_classes)
            weights_id = "random-init:" + state_dict_sha256(model.state_dict())
        elif weights in (None, "pretrained"):
            model, weights_id = _pretrained(family, architecture, name, arch)
        else:
            model, weights_id = _from_file_or_url(family, arch, weights)
    # Frozen before wrapping: identity paths are read off in eval mode (BatchNorm on running statistics).
    model.eval().requires_grad_(False)
    adapter = family.wrap(model, arch, LoadedWeights(weights_id, architecture.weights))
    adapter.name, adapter.weights_id = name, weights_id
    return adapter


def _in_memory(model: "nn.Module | ModelAdapter", weights: str | None, num_classes: int | None, module: dict
               ) -> ModelAdapter:
    if weights not in (None, "pretrained") or num_classes is not None:
        raise TypeError("create_adapter(model): a model in memory brings its own weights and classes; leave weights "
                        "and num_classes out")
    if isinstance(model, ModelAdapter):
        if module:
            raise TypeError(f"create_adapter(adapter): {', '.join(module)} describe a torch.nn.Module, not an adapter")
        model.model.eval().requires_grad_(False)
        model.name = model.name or f"module:{type(model.model).__name__}"
        model.weights_id = model.weights_id or "module:" + state_dict_sha256(model.model.state_dict())
        return model
    from .module import module_adapter

    return module_adapter(model, **module)


def _pretrained(family: ModelFamily, architecture: registry.Architecture, name: str, arch: str
                ) -> tuple[nn.Module, str]:
    entry = architecture.weights
    if entry.kind == "none":
        raise WeightsError(f"--model {name} has no published weights; pass --weights PATH (a checkpoint of it) or "
                           "--weights random")
    if entry.kind == "hub":
        if family.load_published is None:
            raise WeightsError(f"--model {name}: its weights entry names a hub ({entry.source}) but its family has no "
                               "hub loader; pass --weights PATH or --weights random")
        model = family.build(arch, None, None)
        return model, family.load_published(model, arch)
    if entry.kind == "url":
        return _from_file_or_url(family, arch, entry.source)
    path, sha256 = trained_here(entry, name)
    return _loaded(family, arch, family.read(str(path)), str(path)), sha256


def _from_file_or_url(family: ModelFamily, arch: str, weights: str) -> tuple[nn.Module, str]:
    if weights.startswith(("http://", "https://")):
        state, weights_id = download_checkpoint(weights)
    else:
        state, weights_id = family.read(weights), file_sha256(weights)
    return _loaded(family, arch, state, weights), weights_id


def _loaded(family: ModelFamily, arch: str, state: dict[str, Tensor], source: str) -> nn.Module:
    try:
        model = family.build(arch, state, None)
    except WeightsError as exc:
        raise WeightsError(f"--weights {source}: {exc}") from exc
    load_state_dict_strict(model, state, source)
    return model
