"""Any network in memory: a ``torch.nn.Module`` with its blocks, unembedding and preprocessing named in a few
arguments (``create_adapter(model, blocks=..., unembed=..., preprocessing=...)``, ``run_pipeline(model=model,
...)``).

The arguments say what a family file would (:mod:`~vision_lens.adapters.vit`):

* ``blocks``: the module names whose outputs are lensed, in forward order (``model.named_modules()``'s names).
  A block's output is a map ``(N, C, H, W)``, averaged over its positions, or a token sequence ``(N, T, C)``,
  read at its first token (the class token);
* ``unembed``: the module names (applied in order) or the module that map the last block's pooled output to the
  model's logits: the head plus any final norm;
* ``preprocessing``: a :class:`~vision_lens.adapters.weights.Preprocessing` (its repr keys the feature cache, so
  a rerun reuses it) or any callable from a PIL image to the model's input tensor.

Only the last block is known to reach the head as it is (its identity path is the identity). Where every block
writes one residual stream that the unembedding reads as it is (a transformer's blocks), ``residual_stream=True``
gives every block that path, as :mod:`~vision_lens.adapters.vit` does, so the logit lens, the shared lens and
transfer are defined at every block. Otherwise the learned lenses still read every block; the logit lens only
the last.

A probe forward pass at build checks what the arguments claim: every block runs once, in the order given, with
an output of a supported shape, and the unembedding of the last block's pooled output is the model's output
(an exact logit lens there). A wrong name or claim stops with what to pass instead.

A network that needs more than this (several heads, an identity path of its own) is a small
:class:`~vision_lens.adapters.base.ModelAdapter` subclass instead, which ``create_adapter`` and ``run_pipeline``
take as it is.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..readout import Block, IdentityPath
from .base import ModelAdapter
from .errors import ModelError
from .loading import state_dict_sha256
from .weights import Preprocessing

# What module_adapter takes besides the model (run_pipeline passes these on where the model is a torch.nn.Module).
MODULE_ARGUMENTS = frozenset({"blocks", "unembed", "preprocessing", "classes", "residual_stream", "prefix_tokens",
                              "input_size", "model_name"})
PROBE_SIZE = (224, 224)  # the probe image's (height, width) where neither the preprocessing nor input_size says


class ModuleAdapter(ModelAdapter):
    """A user's network as the arguments of :func:`module_adapter` describe it."""

    def __init__(self, model: nn.Module, blocks: list[Block], unembed: nn.Module, transform: Callable,
                 class_names: list[str], class_folders: list[str] | None, input_size: tuple[int, int] | None):
        self.model, self.blocks, self._unembed, self._transform = model, blocks, unembed, transform
        self.class_names, self.class_folders, self.input_size = class_names, class_folders, input_size

    @property
    def unembed(self) -> nn.Module:
        return self._unembed

    @property
    def transform(self) -> Callable:
        return self._transform

    def logits(self, x: Tensor) -> Tensor:
        return _output_logits(self.model(x))

    def to(self, device) -> "ModuleAdapter":
        self._unembed.to(device)  # may be a module of its own, outside the model
        return super().to(device)


def module_adapter(model: nn.Module, blocks: Sequence[str] | None = None,
                   unembed: Sequence[str] | nn.Module | None = None,
                   preprocessing: Preprocessing | Callable | None = None, classes: Sequence[str] | None = None,
                   residual_stream: bool = False, prefix_tokens: int = 1, input_size: tuple[int, int] | None = None,
                   model_name: str | None = None) -> ModuleAdapter:
    """The adapter of a network in memory, frozen in eval mode (see the module's docstring).

    Args:
        model: the network; ``model(x)`` gives the logits (or an output with ``.logits``, as transformers').
        blocks: the lensed modules' names, in forward order.
        unembed: the names of the modules from the last block's pooled output to the logits, in order, or that
            module itself.
        preprocessing: a :class:`~vision_lens.adapters.weights.Preprocessing`, or a callable from a PIL image to
            the input tensor.
        classes: the data's class folder name of each output, in output order: data classes match outputs by
            name; by default they match by sorted position.
        residual_stream: every block's output is in the unembedding's input space (one residual stream).
        prefix_tokens: for token blocks, the tokens before the patch tokens (the class token first).
        input_size: the ``(height, width)`` the preprocessing needs of raw images, where it does not resize them.
        model_name: how run folders and messages name the model (default ``module:<class name>``).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module or a model name, got {type(model).__name__}")
    missing = [arg for arg, value in (("blocks", blocks), ("unembed", unembed), ("preprocessing", preprocessing))
               if value is None]
    if missing:
        raise ModelError(f"a torch.nn.Module as the model needs {', '.join(missing)}: blocks=[module names, in forward "
                         "order], unembed=[module names from the last block to the logits], preprocessing="
                         "Preprocessing(mean, std, resize, crop) or a callable (see vision_lens.adapters.module)")
    if isinstance(blocks, str) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise ModelError(f"blocks={blocks!r}: give a list of module names of the model, in forward order, e.g. "
                         f"{_some_names(model)}")
    if len(set(blocks)) != len(blocks):
        raise ModelError(f"blocks={list(blocks)!r}: a block is named twice; name each module once")
    name = model_name or f"module:{type(model).__name__}"
    model.eval().requires_grad_(False)
    for block in blocks:
        _submodule(model, block, "blocks")
    head = unembed if isinstance(unembed, nn.Module) else _unembedding(model, unembed)
    transform = preprocessing.transform() if isinstance(preprocessing, Preprocessing) else preprocessing
    if not callable(transform):
        raise ModelError(f"preprocessing={preprocessing!r}: give a vision_lens Preprocessing(mean, std, resize, crop) "
                         "or a callable from a PIL image to the model's input tensor")
    if input_size is None and isinstance(preprocessing, Preprocessing) and preprocessing.crop is None:
        raise ModelError("preprocessing does not crop to a fixed size: pass input_size=(height, width), the size "
                         "of the images the model takes, or a Preprocessing with crop")
    outputs, logits = _probe(model, blocks, transform, input_size)
    built = [_block(b, outputs[b], prefix_tokens, residual_stream or b == blocks[-1], residual_stream)
             for b in blocks]
    _check_exact_at_last_block(head, built[-1], outputs[blocks[-1]], logits, unembed)
    if classes is not None and len(classes) != logits.shape[-1]:
        raise ModelError(f"classes: {len(classes)} names, but the model has {logits.shape[-1]} outputs; give one "
                         "class folder name per output, in output order, or leave classes out")
    class_names = list(classes) if classes is not None else [str(i) for i in range(logits.shape[-1])]
    adapter = ModuleAdapter(model, built, head, transform, class_names, None if classes is None else list(classes),
                            input_size)
    adapter.name, adapter.weights_id = name, "module:" + state_dict_sha256(model.state_dict())
    return adapter


def _some_names(model: nn.Module, most: int = 6) -> str:
    names = [n for n, _ in model.named_modules() if n]
    return ", ".join(names[:most]) + (f" ... ({len(names)} modules)" if len(names) > most else "") or "(no modules)"


def _submodule(model: nn.Module, path: str, argument: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ModelError(f"{argument}: {type(model).__name__} has no module {path!r}; name modules as "
                         f"model.named_modules() does, e.g. {_some_names(model)}") from None


def _unembedding(model: nn.Module, names: Sequence[str]) -> nn.Module:
    if isinstance(names, str) or not names:
        raise ModelError(f"unembed={names!r}: give the module names from the last block's pooled output to the "
                         "logits, in order (e.g. ['norm', 'head']), or that module itself")
    return nn.Sequential(*[_submodule(model, n, "unembed") for n in names])


def _output_logits(output) -> Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ModelError(f"model(x) gave {type(output).__name__}, not logits (N, classes) or an output with .logits; "
                         "wrap the model in a module whose forward returns the logits")
    return logits


@torch.no_grad()
def _probe(model: nn.Module, blocks: Sequence[str], transform: Callable, input_size: tuple[int, int] | None
           ) -> tuple[dict[str, Tensor], Tensor]:
    """Each block's output and the logits on two random images, checking that each block runs once, in order."""
    height, width = input_size or PROBE_SIZE
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(2)]
    try:
        x = torch.stack([transform(image) for image in images])
    except Exception as exc:  # whatever the user's callable raises
        raise ModelError(f"preprocessing failed on a {height}x{width} RGB image ({exc.__class__.__name__}: {exc}); "
                         "pass input_size=(height, width) of the images the model takes") from exc
    ran: list[str] = []
    outputs: dict[str, Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            ran.append(name)
            outputs[name] = output

        return record

    handles = [model.get_submodule(b).register_forward_hook(hook(b)) for b in blocks]
    try:
        logits = _output_logits(model(x.to(next((p.device for p in model.parameters()), torch.device("cpu")))))
    finally:
        for handle in handles:
            handle.remove()
    if ran != list(blocks):
        missing = [b for b in blocks if b not in ran]
        repeated = sorted({b for b in ran if ran.count(b) > 1})
        raise ModelError(
            "blocks: " + (f"{', '.join(missing)} did not run in the forward pass" if missing else
                          f"{', '.join(repeated)} ran more than once per forward pass (a shared module)" if repeated
                          else f"they ran in the order {', '.join(ran)}, not as given")
            + "; name modules that each run once, in forward order")
    return outputs, logits


def _block(name: str, output, prefix: int, path: bool, stream: bool) -> Block:
    if not isinstance(output, Tensor) or output.dim() not in (3, 4):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ModelError(f"blocks: {name} gives {shape}, not a map (N, C, H, W) or a token sequence (N, T, C); "
                         "name a module whose output is one")
    channels = output.shape[1] if output.dim() == 4 else output.shape[2]
    tokens = None
    if output.dim() == 3:
        patches = output.shape[1] - prefix
        if prefix < 1 or patches < 1:
            raise ModelError(f"prefix_tokens={prefix}: block {name} has {output.shape[1]} tokens; give the number of "
                             "tokens before the patch tokens (at least the class token, 1)")
        side = math.isqrt(patches)
        tokens = (prefix, side, side) if side * side == patches else (prefix, patches, 1)
    return Block(name, name, channels, IdentityPath.identity(channels) if path else None,
                 stage="stream" if stream else "", tokens=tokens)


@torch.no_grad()
def _check_exact_at_last_block(head: nn.Module, last: Block, output: Tensor, logits: Tensor, unembed) -> None:
    pooled = output[:, 0] if last.tokens is not None else output.mean((2, 3))
    try:
        decoded = head(pooled)
    except RuntimeError as exc:  # shapes that do not chain
        raise ModelError(f"unembed={unembed!r} does not take the last block {last.name}'s pooled output "
                         f"{tuple(pooled.shape)} ({exc}); name the modules from that output to the logits") from exc
    if decoded.shape != logits.shape or not torch.allclose(decoded, logits, rtol=1e-4,
                                                           atol=1e-4 * max(1.0, float(logits.abs().max()))):
        gap = (decoded - logits).abs().max().item() if decoded.shape == logits.shape else tuple(decoded.shape)
        raise ModelError(
            f"unembed={unembed!r} applied to the last block {last.name}'s "
            f"{'class token' if last.tokens is not None else 'averaged map'} does not give the model's logits "
            f"({'largest difference ' + format(gap, '.3g') if isinstance(gap, float) else 'shape ' + str(gap)}); "
            "name every module between the last block and the output, in order, and as the last block the one "
            "whose output the head reads")
