"""The on-disk feature cache: pooled block features, final logits and labels of one split.

Layout of a cache folder::

    manifest.json      key (what was captured), shapes, and ``done``: rows written
    block_<k>.npy      (n, dim_k) float32 memmap, pooled features of block k
    logits.npy         (n, num_classes) float32, the model's own logits
    aux_<k>.npy        (n, num_classes) float32, the model's own classifier at block k, if any
    labels.npy         (n,) int64

The folder name is a hash of the key, so changing the model, weights, data,
subset or pooling never reuses a stale cache. Rows are written in order and
``done`` is advanced (atomically) only after they are flushed, so a run killed
at any point resumes from the last committed batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """A cache folder is damaged or does not match its manifest."""


def cache_key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class FeatureCache:
    """Memory-mapped arrays of one captured split; see the module docstring."""

    path: Path
    manifest: dict
    features: list[np.ndarray]
    logits: np.ndarray
    labels: np.ndarray
    aux_logits: dict[int, np.ndarray]

    @property
    def done(self) -> int:
        return self.manifest["done"]

    @property
    def complete(self) -> bool:
        return self.done == len(self.labels)

    @classmethod
    def open(
        cls, root: str | Path, key: dict, n: int, dims: list[int], num_classes: int, aux_blocks: tuple[int, ...] = ()
    ) -> "FeatureCache":
        """Open the cache for ``key`` under ``root``, creating it if needed.

        ``aux_blocks`` are the blocks that carry one of the model's own classifiers.
        """
        path = Path(root) / cache_key_hash(key)
        manifest_path = path / "manifest.json"
        shapes = {f"block_{k}": [n, d] for k, d in enumerate(dims)} | {"logits": [n, num_classes], "labels": [n]}
        shapes |= {f"aux_{k}": [n, num_classes] for k in aux_blocks}
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError as exc:
                raise CacheError(f"feature cache {path} has a damaged manifest.json; delete {path} and rerun") from exc
            if manifest.get("key") != key or manifest.get("shapes") != shapes:
                raise CacheError(
                    f"feature cache {path} was written for other settings than this run; delete {path} and rerun"
                )
            mode = "r+"
        else:
            path.mkdir(parents=True, exist_ok=True)
            manifest = {"version": FORMAT_VERSION, "key": key, "shapes": shapes, "done": 0}
            mode = "w+"
        arrays = {}
        for name, shape in shapes.items():
            dtype = np.int64 if name == "labels" else np.float32
            try:
                arrays[name] = np.lib.format.open_memmap(path / f"{name}.npy", mode=mode, dtype=dtype, shape=tuple(shape))
            except (OSError, ValueError) as exc:
                raise CacheError(f"feature cache {path} is damaged ({name}.npy: {exc}); delete {path} and rerun") from exc
            if arrays[name].shape != tuple(shape) or arrays[name].dtype != dtype:
                raise CacheError(f"feature cache {path}: {name}.npy has the wrong shape; delete {path} and rerun")
        if mode == "w+":
            _write_json_atomic(manifest_path, manifest)
        feats = [arrays[f"block_{k}"] for k in range(len(dims))]
        aux = {k: arrays[f"aux_{k}"] for k in aux_blocks}
        return cls(path, manifest, feats, arrays["logits"], arrays["labels"], aux)

    def write(
        self, start: int, features: list[np.ndarray], logits: np.ndarray, labels: np.ndarray,
        aux_logits: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Write rows ``start:start+len(labels)`` (not yet committed)."""
        stop = start + len(labels)
        for dst, src in zip(self.features, features):
            dst[start:stop] = src
        self.logits[start:stop] = logits
        self.labels[start:stop] = labels
        for k, src in (aux_logits or {}).items():
            self.aux_logits[k][start:stop] = src

    def commit(self, done: int) -> None:
        """Flush the arrays, then record that the first ``done`` rows are final."""
        for array in (*self.features, self.logits, self.labels, *self.aux_logits.values()):
            array.flush()
        self.manifest["done"] = done
        _write_json_atomic(self.path / "manifest.json", self.manifest)
