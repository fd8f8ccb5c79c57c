"""Capture: one forward pass per batch, every block pooled inside its hook.

Full feature maps are never kept: each block's hook runs the block's
:class:`~vision_lens.readout.BlockPooling` (the whole-block averages, and the
sub-grid average that its identity path reads) and keeps only that row. A
language model's hooks keep the vectors at the sampled token positions instead
(:func:`capture_text`), one row per position.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from .adapters import ModelAdapter
from .cache import FeatureCache
from .checks import check_activations
from .data import DataError, ImageSource, TransformedSubset, phased_batches
from .readout import Block, BlockPooling, FeatureLayout
from .text import TextSource, TokenRows
from .threads import usable_cores


REMEMBER_EVERY = 4096  # captured images' content ids held before they are written to the hash index
# Rows written between commits. Each commit rewrites the manifest, whose chunk list grows with the commits:
# once per 64-image batch, 50k CIFAR images spent 2.5 s of a 58 s capture there, and it grows as n².
COMMIT_BYTES = 8 * 2**20
TRIM_EVERY = 16  # batches between returns of the free heap to the OS


def _heap_trimmer():
    """glibc's ``malloc_trim``, or None under another C library."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


# Under glibc the heap behind torch's per-batch activations fragments: over 350k CIFAR images at 256 per
# batch one capture's resident memory rose 550 MiB above its start, and plateaued there after 200k.
# Returning the free pages every TRIM_EVERY batches held a 350k capture to 360 MiB, for about 2 % of
# capture time (after every batch: 20 %). Smaller batches, the CPU default now, fragment it less.
_malloc_trim = _heap_trimmer()


def hook_block(model: torch.nn.Module, block: Block, read: Callable[[Tensor], None]):
    """Call ``read(x)`` with block ``block``'s tensor each time ``model`` runs it: its module's output, or its input
    where the block reads the input (``Block.reads``); the first element where the module hands on a tuple (a
    ``transformers`` layer's). Returns the hook's handle. The hook returns None: the model's values stay as they are."""
    module = model.get_submodule(block.module)

    def first(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    if block.reads == "input":
        return module.register_forward_pre_hook(lambda module, inputs: read(first(inputs)) and None)
    return module.register_forward_hook(lambda module, inputs, output: read(first(output)) and None)


class _Hooks:
    """Hooks on a model (``self.handles``), removed on leaving the ``with`` block, whatever happens inside it."""

    handles: list

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


class BlockRecorder(_Hooks):
    """Forward hooks that pool every block's output as the model runs."""

    def __init__(self, adapter: ModelAdapter, layout: FeatureLayout):
        self.pooled: list[Tensor | None] = [None] * len(adapter.blocks)
        self.aux_logits: dict[int, Tensor] = {}
        self.handles = [hook_block(adapter.model, block, self._reader(k, layout.pooling(k),
                                                                       adapter.aux_classifiers.get(block.name)))
                        for k, block in enumerate(adapter.blocks)]

    def _reader(self, k: int, pooling: BlockPooling, aux):
        def read(output: Tensor) -> None:
            self.pooled[k] = pooling(output)
            if aux is not None:  # needs the full map, so it runs here too
                self.aux_logits[k] = aux(output)

        return read


def _remember(source: ImageSource, pending: list[tuple], index_dir: str | Path) -> None:
    """Put the ``(index, content id, stamp)`` entries of ``pending`` into the source's hash index, and empty it."""
    if pending:
        source.remember_content_ids(*zip(*pending), index_dir)
    pending.clear()


def _collate(items):
    """``(images, labels, [(content id, stamp), ...])``, or the first DataError of the batch."""
    errors = [item for item in items if isinstance(item, DataError)]
    if errors:
        return errors[0]
    return *default_collate([item[:2] for item in items]), [item[2] for item in items]


class _SafeSubset(TransformedSubset):
    # Loader workers hand errors back as values, so the message reaches the user intact.
    def __getitem__(self, i: int):
        try:
            return super().__getitem__(i)
        except DataError as exc:
            return exc


def capture_key(
    adapter: ModelAdapter, source: ImageSource, indices: np.ndarray, layout: FeatureLayout, bf16: bool = False
) -> dict:
    """What a cache depends on: model, weights, images, subset, feature layout, preprocessing and precision."""
    return ({"precision": "bf16"} if bf16 else {}) | {
        "model": adapter.name,
        "weights": adapter.weights_id,
        "data": source.fingerprint,
        "indices": hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest(),
        "layout": layout.to_dict(),
        "transform": repr(adapter.transform),
    }


# Capture's batch size and loader workers when none are given, and how the loader runs, per kind of device.
# * CPU, a worker per usable core, decoding in phases (data.phased_batches): the forward pass runs on every
#   core (torch's threads), so a loader that decodes while it runs takes cores from it, and decoding in the
#   main process between batches leaves all but one core idle while it decodes. Of one 20k-image CIFAR-10
#   pass of ResNet-20 on 2 cores, 2 workers decoding inside the loader at 64 images per batch took 12.7 s,
#   decoding every image first and then the forward pass 9.7 to 11.4 s (issue 22): phases do that a chunk at a
#   time, with the decoding spread over the workers. With the loader in the main process capture cost 1.07 to
#   1.11 times the plain pass of the same configuration (CPU time, 2,000 images, cProfile: the hooks' pooling
#   2 %, hashing and the cache's writes and checks under 1 % each). The floor search of
#   scripts/benchmark_pipeline.py (results/benchmark/cifar10-resnet20-cpu.json, `floor_search`; rendered in
#   docs/performance.md) times these defaults, as the pipeline's line, against every other configuration;
#   tests/test_benchmark.py checks that the committed search ran with them and found them the fastest way to
#   stream the images (or within a tenth of it). One core: no worker, nothing to spread the decoding over.
# * CPU, 64 images: a batch's activations live in the process heap; a larger batch raised capture's peak
#   memory by 185 to 207 MiB at 256 per batch and made the heap fragment more as images passed, for 22.9 s
#   against 23.1 s of capture (results/benchmark/cifar10-resnet20-cpu-batch256.json).
# * GPU, 256 images and a worker per usable core, decoding while the model runs: the forward pass is on the
#   device and the cores are free to decode. Not measured yet (no GPU was available to the sessions that wrote
#   this); the GPU benchmark (scripts/benchmark_gpu.sh) runs the same floor search there.
CAPTURE_DEFAULTS = {"cpu": {"batch_size": 64, "workers": None, "phased": True},
                    "accelerator": {"batch_size": 256, "workers": None, "phased": False}}


def _on_cpu(device: str) -> bool:
    return str(device).split(":")[0] == "cpu"


def _device_defaults(device: str) -> dict:
    return CAPTURE_DEFAULTS["cpu" if _on_cpu(device) else "accelerator"]


# Text windows per forward pass of a language model: 8 windows of tuned-lens's 2,048 tokens hold 16k tokens'
# activations and the eager attention's 8 x heads x 2048^2 scores per layer at once.
TEXT_BATCH_SIZE = {"cpu": 8, "accelerator": 32}


def default_batch_size(device: str, data_kind: str = "images") -> int:
    """Images per capture forward pass when none is given (see ``CAPTURE_DEFAULTS``): 64 on the CPU, 256 on an
    accelerator; for text, windows per pass (``TEXT_BATCH_SIZE``)."""
    if data_kind == "text":
        return TEXT_BATCH_SIZE["cpu" if _on_cpu(device) else "accelerator"]
    return _device_defaults(device)["batch_size"]


def default_workers(device: str) -> int:
    """Data-loading workers of capture when none are given (see ``CAPTURE_DEFAULTS``): one per usable core (none
    where there is one core only on the CPU)."""
    workers = _device_defaults(device)["workers"]
    if workers is not None:
        return workers
    cores = usable_cores()
    return 0 if cores == 1 and _on_cpu(device) else cores


def loads_in_phases(device: str) -> bool:
    """Whether capture's loader workers decode in phases on ``device`` (see ``data.phased_batches``): on the CPU,
    where the forward pass runs on the same cores; not with a GPU, where decoding overlaps it."""
    return _device_defaults(device)["phased"]


def input_memory_format(device: torch.device, channels_last: bool | None = None) -> torch.memory_format:
    """The layout of the backbone's input: ``channels_last`` if asked, or by default on CUDA.

    GPU convolution kernels prefer it, and convolutions keep their input's layout,
    so every block's output (and what its hook pools) is in it too.
    """
    if channels_last is None:
        channels_last = device.type == "cuda"
    return torch.channels_last if channels_last else torch.preserve_format


def backbone_logits(adapter: ModelAdapter, images: Tensor, memory_format: torch.memory_format, bf16: bool) -> Tensor:
    """The model's logits for a loader batch, sent to the device as capture sends it (non-blocking, in
    ``memory_format``; under bfloat16 autocast with ``bf16``)."""
    images = images.to(adapter.device, non_blocking=True, memory_format=memory_format)
    with torch.autocast(adapter.device.type, dtype=torch.bfloat16, enabled=bf16):
        return adapter.logits(images)


@torch.no_grad()
def capture(
    adapter: ModelAdapter,
    source: ImageSource,
    indices: np.ndarray,
    cache_root: str | Path,
    label_map: np.ndarray,
    layout: FeatureLayout,
    batch_size: int | None = None,
    workers: int | None = None,
    desc: str = "capture",
    bf16: bool = False,
    channels_last: bool | None = None,
    key: dict | None = None,
) -> FeatureCache:
    """Capture ``source[indices]`` into the cache under ``cache_root``, resuming if possible.

    Rows are committed every ``COMMIT_BYTES`` of them, and when capture stops,
    by an error too: a rerun resumes from there.

    ``label_map[c]`` is the model output index of the source's class ``c``;
    ``layout`` says what is kept of each block (it is part of the cache key).
    ``bf16`` runs the backbone under bfloat16 autocast (for GPUs; it is part of
    the cache key too); pooling and the cache stay float32. ``channels_last``
    (default: on CUDA devices) hands the backbone its input in that memory
    layout; it changes no value, so it is not part of the key. ``batch_size``
    and ``workers`` default to :func:`default_batch_size` and :func:`default_workers` of the device; on the CPU
    the workers decode in phases (:func:`loads_in_phases`). ``key`` is :func:`capture_key` of these images where
    the caller has it already (preflight's plan).
    """
    dims = [layout.width(k) for k in range(len(layout.blocks))]
    aux_blocks = tuple(k for k, b in enumerate(adapter.blocks) if b.name in adapter.aux_classifiers)
    key = key or capture_key(adapter, source, indices, layout, bf16)
    cache = FeatureCache.open(
        cache_root, key, len(indices), dims, adapter.num_classes, aux_blocks,
        content_ids=lambda n: source.content_ids(indices[:n], cache_root),
    )
    if cache.complete:
        return cache
    dataset = _SafeSubset(source, indices[cache.done :], adapter.transform, adapter.input_size, content_ids=True)
    batch_size = batch_size or default_batch_size(adapter.device.type)
    workers = default_workers(adapter.device.type) if workers is None else workers
    pin = adapter.device.type == "cuda"
    if workers and loads_in_phases(adapter.device.type):
        loader = phased_batches(dataset, batch_size, workers, _collate, pin)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate, pin_memory=pin)
    start = cache.done
    commit_rows = max(1, COMMIT_BYTES // cache.row_bytes)
    uncommitted: list[str] = []  # content ids of the rows written since the last commit
    pending: list[tuple] = []  # (index, content id, stamp) of captured images not yet in the source's hash index
    memory_format = input_memory_format(adapter.device, channels_last)
    with BlockRecorder(adapter, layout) as recorder, tqdm(
        total=len(indices), initial=start, desc=desc, unit="img", dynamic_ncols=True
    ) as bar:
        try:
            for batches, batch in enumerate(loader, 1):
                if isinstance(batch, DataError):
                    raise batch
                images, labels, content = batch
                logits = backbone_logits(adapter, images, memory_format, bf16)
                feats = [p.float().cpu().numpy() for p in recorder.pooled]
                aux = {k: a.float().cpu().numpy() for k, a in recorder.aux_logits.items()}
                logits = logits.float().cpu().numpy()
                check_activations([b.name for b in adapter.blocks], feats, logits, start)
                cache.write(start, feats, logits, label_map[labels.numpy()], aux)
                ids, stamps = zip(*content)
                uncommitted += ids
                pending += zip(indices[start : start + len(labels)], ids, stamps)
                start += len(labels)
                if start - cache.done >= commit_rows:
                    cache.commit(start, uncommitted)
                    uncommitted.clear()
                if len(pending) >= REMEMBER_EVERY:
                    _remember(source, pending, cache_root)
                bar.update(len(labels))
                if _malloc_trim is not None and batches % TRIM_EVERY == 0:
                    _malloc_trim(0)
        finally:
            if start > cache.done:  # the rows written before the end, or before an error, are kept
                cache.commit(start, uncommitted)
            _remember(source, pending, cache_root)
    return cache


class TokenRecorder(_Hooks):
    """Hooks that keep, of every block's ``(windows, positions, width)`` output, the rows of this batch: the vectors
    at ``(window[r], position[r])``, set with :meth:`select` before each forward pass."""

    def __init__(self, adapter: ModelAdapter):
        self.rows: list[Tensor | None] = [None] * len(adapter.blocks)
        self.window = self.position = None
        self.handles = [hook_block(adapter.model, block, self._reader(k)) for k, block in enumerate(adapter.blocks)]

    def select(self, window: Tensor, position: Tensor) -> None:
        self.window, self.position = window, position

    def _reader(self, k: int):
        def read(output: Tensor) -> None:
            self.rows[k] = output[self.window, self.position].float()

        return read


def text_capture_key(adapter: ModelAdapter, source: TextSource, rows: TokenRows, layout: FeatureLayout,
                     bf16: bool = False) -> dict:
    """What a text cache depends on: model, weights, the split's tokens, the rows (windows and positions), the
    feature layout and the precision."""
    picked = np.ascontiguousarray(np.stack([rows.window, rows.position]), dtype=np.int64)
    return ({"precision": "bf16"} if bf16 else {}) | {
        "model": adapter.name,
        "weights": adapter.weights_id,
        "data": "text:" + source.fingerprint,
        "rows": hashlib.sha256(picked.tobytes()).hexdigest(),
        "layout": layout.to_dict(),
    }


@torch.no_grad()
def capture_text(adapter: ModelAdapter, source: TextSource, rows: TokenRows, cache_root: str | Path,
                 layout: FeatureLayout, batch_size: int, desc: str = "capture", bf16: bool = False,
                 key: dict | None = None) -> FeatureCache:
    """Capture the token rows ``rows`` (window by window, in increasing window order) of ``source`` into the cache
    under ``cache_root``, resuming if possible: ``batch_size`` windows per forward pass, each block's vectors at
    the rows' positions kept, the next token as each row's label. The model's logits are not stored (the last
    block's unembedding gives them). Commits fall on window boundaries, so a rerun resumes at a window."""
    dims = [layout.width(k) for k in range(len(layout.blocks))]
    key = key or text_capture_key(adapter, source, rows, layout, bf16)
    cache = FeatureCache.open(cache_root, key, len(rows), dims, None)
    if cache.complete:
        return cache
    windows, first_row = np.unique(rows.window, return_index=True)
    ends = np.append(first_row[1:], len(rows))
    start_window = int(np.searchsorted(ends, cache.done, side="right"))  # windows wholly committed before it
    start = cache.done
    commit_rows = max(1, COMMIT_BYTES // cache.row_bytes)
    with TokenRecorder(adapter) as recorder, tqdm(total=len(rows), initial=start, desc=desc, unit="token",
                                                    dynamic_ncols=True) as bar:
        try:
            for first in range(start_window, len(windows), batch_size):
                batch = slice(first, min(first + batch_size, len(windows)))
                stop = int(ends[batch.stop - 1])
                local = torch.from_numpy(np.searchsorted(windows[batch], rows.window[start:stop])).to(adapter.device)
                recorder.select(local, torch.from_numpy(rows.position[start:stop]).to(adapter.device))
                ids = torch.from_numpy(source.windows.ids[windows[batch]]).to(adapter.device)
                with torch.autocast(adapter.device.type, dtype=torch.bfloat16, enabled=bf16):
                    adapter.run_blocks(ids)
                feats = [r.cpu().numpy() for r in recorder.rows]
                check_activations([b.name for b in adapter.blocks], feats, None, start)
                cache.write(start, feats, None, rows.target[start:stop])
                bar.update(stop - start)
                start = stop
                if start - cache.done >= commit_rows:
                    cache.commit(start)
        finally:
            if start > cache.done:
                cache.commit(start)
    return cache
