"""Capture: one forward pass per batch, every block pooled inside its hook.

Full feature maps are never kept. Each block's output is subsampled onto the
grid its identity path carries to the head (``Block.path_stride``), so that
pooling commutes exactly with that path, and reduced to its global average
(plus, with ``grid=k > 1``, the k x k adaptive-average cells).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from .adapters import ModelAdapter
from .cache import FeatureCache
from .checks import check_activations
from .data import DataError, ImageSource, TransformedSubset


def pooling_slots(grid: int) -> int:
    """Pooled vectors per block: the global average, plus grid*grid cells when grid > 1."""
    if grid < 1:
        raise ValueError(f"--pool-grid must be >= 1, got {grid}")
    return 1 + (grid * grid if grid > 1 else 0)


def pool(x: Tensor, stride: int, grid: int = 1) -> Tensor:
    """(N, C, H, W) -> (N, slots * C), slot-major: ``[mean, cell_1, ..., cell_{k*k}]``."""
    x = x[:, :, ::stride, ::stride]
    parts = [x.mean((2, 3))]
    if grid > 1:
        parts.append(F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2).flatten(1))
    return torch.cat(parts, 1)


class BlockRecorder:
    """Forward hooks that pool every block's output as the model runs."""

    def __init__(self, adapter: ModelAdapter, grid: int = 1):
        self.pooled: list[Tensor | None] = [None] * len(adapter.blocks)
        self.aux_logits: dict[int, Tensor] = {}
        self.handles = []
        for k, block in enumerate(adapter.blocks):
            module = adapter.model.get_submodule(block.module)
            aux = adapter.aux_classifiers.get(block.name)
            self.handles.append(module.register_forward_hook(self._hook(k, block.path_stride, grid, aux)))

    def _hook(self, k: int, stride: int, grid: int, aux):
        def hook(module, inputs, output):
            self.pooled[k] = pool(output, stride, grid)
            if aux is not None:  # needs the full map, so it runs here too
                self.aux_logits[k] = aux(output)

        return hook

    def __enter__(self) -> "BlockRecorder":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _collate(items):
    errors = [item for item in items if isinstance(item, DataError)]
    return errors[0] if errors else default_collate(items)


class _SafeSubset(TransformedSubset):
    # Loader workers hand errors back as values, so the message reaches the user intact.
    def __getitem__(self, i: int):
        try:
            return super().__getitem__(i)
        except DataError as exc:
            return exc


def capture_key(adapter: ModelAdapter, source: ImageSource, indices: np.ndarray, grid: int) -> dict:
    """What a cache depends on: model, weights, images, subset, pooling and preprocessing."""
    return {
        "model": adapter.name,
        "weights": adapter.weights_id,
        "data": source.fingerprint,
        "indices": hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest(),
        "grid": grid,
        "blocks": [[b.name, b.path_stride] for b in adapter.blocks],
        "transform": repr(adapter.transform),
    }


@torch.no_grad()
def capture(
    adapter: ModelAdapter,
    source: ImageSource,
    indices: np.ndarray,
    cache_root: str | Path,
    label_map: np.ndarray,
    grid: int = 1,
    batch_size: int = 256,
    workers: int = 2,
    desc: str = "capture",
) -> FeatureCache:
    """Capture ``source[indices]`` into the cache under ``cache_root``, resuming if possible.

    ``label_map[c]`` is the model output index of the source's class ``c``.
    """
    slots = pooling_slots(grid)
    dims = [slots * b.channels for b in adapter.blocks]
    aux_blocks = tuple(k for k, b in enumerate(adapter.blocks) if b.name in adapter.aux_classifiers)
    cache = FeatureCache.open(
        cache_root, capture_key(adapter, source, indices, grid), len(indices), dims, adapter.num_classes, aux_blocks,
        row_ids=source.content_ids(indices, cache_root),
    )
    if cache.complete:
        return cache
    loader = DataLoader(
        _SafeSubset(source, indices[cache.done :], adapter.transform, adapter.input_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=adapter.device.type == "cuda",
    )
    start = cache.done
    with BlockRecorder(adapter, grid) as recorder, tqdm(
        total=len(indices), initial=start, desc=desc, unit="img", dynamic_ncols=True
    ) as bar:
        for batch in loader:
            if isinstance(batch, DataError):
                raise batch
            images, labels = batch
            logits = adapter.logits(images.to(adapter.device, non_blocking=True))
            feats = [p.float().cpu().numpy() for p in recorder.pooled]
            aux = {k: a.float().cpu().numpy() for k, a in recorder.aux_logits.items()}
            logits = logits.float().cpu().numpy()
            check_activations([b.name for b in adapter.blocks], feats, logits, start)
            cache.write(start, feats, logits, label_map[labels.numpy()], aux)
            start += len(labels)
            cache.commit(start)
            bar.update(len(labels))
    return cache
