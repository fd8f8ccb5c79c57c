"""The readout contract: what a lens reads at each block, shared by adapters, capture and lenses.

Every block exposes two things as modules:

* its **identity path** (:class:`IdentityPath`): the network's own linear map
  that carries the block's output to the head's input, read off on pooled
  vectors, together with the spatial sub-grid it reads (an option-A shortcut
  or a strided 1x1 projection keeps every ``stride``-th pixel);
* its **pooling** (:class:`BlockPooling`): what capture keeps of the block's
  output map. Learned lenses read the *whole* block: the global average over
  every position, plus the ``grid x grid`` adaptive-average cells over the
  full map. The logit lens needs the average over the path's sub-grid, which
  is what the network really forwards, so capture also keeps that vector
  where the sub-grid is not the whole map. A transformer block's output is a
  sequence of tokens instead of a map: its first vector is the class token
  (what the head reads), and its cells average the patch tokens, laid out on
  their grid.

:class:`FeatureLayout` records, per block, which pooled vectors exist and in
which order they are stored; it is written to the feature cache's manifest
and to every lens config, so evaluation reads it back instead of asking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class IdentityPath(nn.Module):
    """A block's linear path into the head's input space, on pooled vectors: ``p -> W p + b``.

    ``stride`` is the sub-grid the path reads: an option-A shortcut or a
    strided 1x1 projection keeps ``x[..., ::stride, ::stride]``, so the path
    commutes exactly with the global average over that sub-grid. Applied to
    the average over the *whole* map, the same channel map carries the full
    block into the head's space (what the tuned lens's translator reads).
    """

    def __init__(self, weight: Tensor, bias: Tensor, stride: int = 1, source: tuple[str, ...] = ()):
        super().__init__()
        self.stride = stride
        self.source = source  # the module names the path was read off, in order
        self.register_buffer("weight", weight, persistent=False)  # (head_dim, channels)
        self.register_buffer("bias", bias, persistent=False)  # (head_dim,)

    @classmethod
    @torch.no_grad()
    def read_off(
        cls, modules: Sequence[nn.Module], channels: int, stride: int = 1, source: tuple[str, ...] = ()
    ) -> "IdentityPath":
        """The affine map that per-pixel ``modules`` apply to a pooled vector.

        The paths we support (option-A shortcuts, 1x1 conv + BN) act on every
        pixel alike once their subsampling is done. Running them on 1x1 maps
        of zero and of the unit vectors reads off their bias and weight exactly.
        """
        ref = next((t for m in modules for t in [*m.parameters(), *m.buffers()]), None)
        kw = dict(dtype=ref.dtype, device=ref.device) if ref is not None else {}
        x = torch.cat([torch.zeros(1, channels, **kw), torch.eye(channels, **kw)])[..., None, None]
        for module in modules:
            x = module(x)
        out = x.flatten(1).double()
        return cls((out[1:] - out[0]).T.float(), out[0].float(), stride, source)

    @classmethod
    def identity(cls, channels: int) -> "IdentityPath":
        """The path of a block whose output already is the head's input."""
        return cls(torch.eye(channels), torch.zeros(channels))

    def forward(self, pooled: Tensor) -> Tensor:
        """``(..., channels) -> (..., head_dim)``."""
        return pooled @ self.weight.T + self.bias


def pooling_slots(grid: int) -> int:
    """Pooled vectors of the whole block: the global average, plus grid*grid cells when grid > 1."""
    if grid < 1:
        raise ValueError(f"--pool-grid must be >= 1, got {grid}")
    return 1 + (grid * grid if grid > 1 else 0)


class BlockPooling(nn.Module):
    """What capture keeps of one block's output map, as one row per image.

    ``(N, C, H, W) -> (N, width)``, slot-major: ``[mean, cell_1 .. cell_{k*k}]``
    over the whole map, then, for a path with ``stride > 1``, the mean over
    the path's sub-grid. With ``tokens = (prefix, h, w)`` the output is a token
    sequence ``(N, prefix + h * w, C)``: ``[class token, cells]``, the cells over
    the ``h x w`` grid of patch tokens that follow the ``prefix`` ones.
    """

    def __init__(self, grid: int, path_stride: int | None, tokens: tuple[int, int, int] | None = None):
        super().__init__()
        self.grid = grid
        self.path_stride = path_stride
        self.tokens = tokens

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # under bf16 autocast the block output is bf16; pooled features stay float32
        if self.tokens is not None:
            prefix, h, w = self.tokens
            if x.ndim != 3 or x.shape[1] != prefix + h * w:
                raise ValueError(f"expected a token sequence of {prefix} + {h}x{w} tokens, got a {tuple(x.shape)} "
                                 f"output")
            if self.grid == 1:
                return x[:, 0].contiguous()
            patches = x[:, prefix:].transpose(1, 2).reshape(len(x), -1, h, w)
            cells = F.adaptive_avg_pool2d(patches, self.grid).flatten(2).transpose(1, 2).flatten(1)
            return torch.cat([x[:, 0], cells], 1)
        parts = [x.mean((2, 3))]
        if self.grid > 1:
            parts.append(F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2).flatten(1))
        if self.path_stride is not None and self.path_stride > 1:
            parts.append(x[:, :, :: self.path_stride, :: self.path_stride].mean((2, 3)))
        return torch.cat(parts, 1)


@dataclass(frozen=True)
class FeatureLayout:
    """Which pooled vectors exist for each block, and where they sit in its feature row.

    Block ``k``'s row holds ``slots`` whole-block vectors of ``channels[k]``
    (see :func:`pooling_slots`), then, if ``path_stride[k] > 1``, the sub-grid
    average that the identity path reads. ``path_stride[k]`` is None where the
    block has no identity path. ``tokens[k]`` is ``(prefix tokens, grid
    height, grid width)`` for a block whose output is a token sequence, None
    for a map.
    """

    blocks: tuple[str, ...]
    channels: tuple[int, ...]
    path_stride: tuple[int | None, ...]
    grid: int = 1
    tokens: tuple[tuple[int, int, int] | None, ...] = ()

    def __post_init__(self):
        pooling_slots(self.grid)  # validates the grid
        if not self.tokens:  # maps only (and layouts written before token blocks existed)
            object.__setattr__(self, "tokens", (None,) * len(self.blocks))

    @classmethod
    def of(cls, blocks: Sequence["Block"], grid: int) -> "FeatureLayout":
        return cls(
            tuple(b.name for b in blocks),
            tuple(b.channels for b in blocks),
            tuple(None if b.path is None else b.path.stride for b in blocks),
            grid,
            tuple(b.tokens for b in blocks),
        )

    @property
    def slots(self) -> int:
        return pooling_slots(self.grid)

    def has_path(self, k: int) -> bool:
        return self.path_stride[k] is not None

    def has_path_vector(self, k: int) -> bool:
        """Whether block ``k`` stores a separate sub-grid average (its path reads a sub-grid)."""
        return self.path_stride[k] is not None and self.path_stride[k] > 1

    def width(self, k: int) -> int:
        return (self.slots + self.has_path_vector(k)) * self.channels[k]

    def whole(self, features: Tensor, k: int) -> Tensor:
        """``(N, slots * C)``: the whole-block vectors of block ``k``'s rows."""
        return features[:, : self.slots * self.channels[k]]

    def path_input(self, features: Tensor, k: int) -> Tensor:
        """``(N, C)``: the average that block ``k``'s identity path reads (the global mean at stride 1)."""
        c = self.channels[k]
        return features[:, -c:] if self.has_path_vector(k) else features[:, :c]

    def pooling(self, k: int) -> BlockPooling:
        return BlockPooling(self.grid, self.path_stride[k], self.tokens[k])

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        d["tokens"] = [None if t is None else list(t) for t in self.tokens]
        if all(t is None for t in self.tokens):  # maps only: the layout (and every cache key) of before
            del d["tokens"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        tokens = tuple(None if t is None else tuple(t) for t in d.get("tokens", ()))
        return cls(tuple(d["blocks"]), tuple(d["channels"]), tuple(d["path_stride"]), d["grid"], tokens)


@dataclass(frozen=True, eq=False)
class Block:
    """One lensed block.

    Attributes:
        name: the block's name in the model's own module tree (``layer2.1``).
        module: the module whose output is captured (usually ``name``).
        channels: channels of the block output.
        path: the network's linear identity path from this block to the head
            input, or ``None`` where it has none (e.g. Inception's
            concatenated branches).
        stage: the block's stage, as its adapter knows it: blocks of one stage
            share width and resolution and are joined by plain identity
            shortcuts (a ResNet's ``layer2``; a ViT is one stage). Default: a
            stage of its own.
        tokens: for a block whose output is a token sequence (a ViT's), its
            prefix tokens (the class token first) and the grid of the patch
            tokens after them; None for a feature map.
        reads: ``output`` (the module's output) or ``input`` (its first input,
            through a forward pre-hook: a language model's embedding output is
            the input of its first decoder layer, not any module's output).
    """

    name: str
    module: str
    channels: int
    path: IdentityPath | None = None
    stage: str = ""
    tokens: tuple[int, int, int] | None = None  # (prefix, h, w) where the output is a token sequence
    reads: str = "output"

    def __post_init__(self):
        if self.reads not in ("output", "input"):
            raise ValueError(f"Block {self.name}: reads is 'output' or 'input', not {self.reads!r}")
        if not self.stage:
            object.__setattr__(self, "stage", self.name)
