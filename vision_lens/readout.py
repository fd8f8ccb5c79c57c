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
  where the sub-grid is not the whole map.

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
    the path's sub-grid.
    """

    def __init__(self, grid: int, path_stride: int | None):
        super().__init__()
        self.grid = grid
        self.path_stride = path_stride

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # under bf16 autocast the block output is bf16; pooled features stay float32
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
    block has no identity path.
    """

    blocks: tuple[str, ...]
    channels: tuple[int, ...]
    path_stride: tuple[int | None, ...]
    grid: int = 1

    def __post_init__(self):
        pooling_slots(self.grid)  # validates the grid

    @classmethod
    def of(cls, blocks: Sequence["Block"], grid: int) -> "FeatureLayout":
        return cls(
            tuple(b.name for b in blocks),
            tuple(b.channels for b in blocks),
            tuple(None if b.path is None else b.path.stride for b in blocks),
            grid,
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
        return BlockPooling(self.grid, self.path_stride[k])

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        return cls(tuple(d["blocks"]), tuple(d["channels"]), tuple(d["path_stride"]), d["grid"])


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
    """

    name: str
    module: str
    channels: int
    path: IdentityPath | None = None
