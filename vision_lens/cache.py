"""The on-disk feature cache: pooled block features, final logits and labels of one split.

Layout of a cache folder::

    manifest.json      key (what was captured), shapes, and ``chunks``: the committed rows
    block_<k>.npy      (n, dim_k) float32, pooled features of block k
    logits.npy         (n, num_classes) float32, the model's own logits (none for a language model: its
                       vocabulary is too wide to store per row, and the logits are the last block's unembedding)
    aux_<k>.npy        (n, num_classes) float32, the model's own classifier at block k, if any
    labels.npy         (n,) int64
    lock               held (fcntl.flock) by the one run that writes this folder

The folder name is a hash of the key, so changing the model, weights, list of
images, subset or pooling never reuses a stale cache. Rows are written in
order; each commit records a chunk ``{"stop", "images", "arrays"}``: the rows
it ends at, a hash of the content ids of the images they were computed from
(hashes of the bytes the loader decoded), and a SHA-256 of its rows
in every array. ``done`` (the rows committed) is advanced atomically only
after the rows are written to the files, so a run killed at any point
resumes from the last commit: the kernel's page cache keeps the rows
of a process that dies. They are not forced to disk (msync cost 0.17 s per
10k-image CIFAR split); should a machine crash lose rows the manifest lists,
their chunk's checksum no longer matches and they are captured again.

The arrays are memory-mapped read-only; rows are written with ``pwrite``. A
store into a mapped page that the disk has no room for kills the process
with SIGBUS, which no handler can turn into a message, while ``pwrite`` fails
with ENOSPC. So, before a file is created or grown, the free space on its
disk is checked and the whole file is allocated (``posix_fallocate``, where
the file system has it): a disk too small for the cache stops the run before
the first forward pass, with a message that gives both sizes. A disk that
fills up anyway (another process, a file system without allocation) stops
capture with a message naming the cache; the rows committed before it are
kept, and the same command resumes from them once there is room.

Opening checks every file's size and every committed chunk against the
manifest and the current images. The rows from the first chunk that fails
(damaged bytes, or images whose content changed) are captured again when the
folder is writable; a read-only folder with such rows stops with a message.
A truncated array file, or a manifest that cannot be read, cannot be trusted
at all. Complete caches are opened read-only, so reading never changes them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .files import FolderLock, write_text_atomic

FORMAT_VERSION = 2


class CacheError(UserError, RuntimeError):
    """A cache folder is damaged, does not match its manifest, or cannot be written."""


def cache_key_hash(key: dict) -> str:
    """The folder name of ``key``'s cache; a new format version never opens an old folder."""
    return hashlib.sha256(json.dumps([FORMAT_VERSION, key], sort_keys=True).encode()).hexdigest()[:20]


def images_digest(content_ids: Sequence[str] | None) -> str:
    """A hash of the content ids of a chunk's rows ("" when the source gives none)."""
    if content_ids is None:
        return ""
    return hashlib.sha256("\n".join(content_ids).encode()).hexdigest()


def free_bytes(path: Path) -> int | None:
    """Bytes that can still be written on the file system holding ``path``; None where the OS does not say."""
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    return stat.f_bavail * stat.f_frsize


def unallocated_bytes(path: Path, size: int) -> int:
    """Bytes of a file of ``size`` bytes at ``path`` that no disk block holds yet (all of them if it is missing):
    what the file system must still find room for."""
    try:
        return max(0, size - os.stat(path).st_blocks * 512)
    except (OSError, AttributeError):  # AttributeError: no st_blocks (Windows)
        return size


def _megabytes(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NPY_HEADER_BYTES = 128  # what numpy writes before the data of our arrays' shapes (for the free-space check)


FULL_DISK_ADVICE = "Free some space there, or pass --cache-dir a folder on a disk with room (which captures afresh)"


def _kept(done: int, when: str = "") -> str:
    """What a failed write keeps, after ``done`` committed rows; ``when``: when the rerun resumes from them."""
    if not done:
        return "nothing had been captured yet"
    return f"the {done} rows captured before it are kept, and the same command resumes from them{when}"


def write_error(path: Path, name: str, exc: OSError, done: int) -> CacheError:
    """The message for a write into the cache at ``path`` (its file ``name``) that failed with ``exc`` after ``done``
    rows were committed: what happened, what is kept and what to do."""
    if exc.errno in NO_SPACE:
        return CacheError(f"the disk under the feature cache {path} is full ({name}: {exc.strerror}); "
                          f"{_kept(done, ' once there is room')}. {FULL_DISK_ADVICE}")
    return CacheError(f"cannot write the feature cache {path} ({name}: {exc.strerror or exc}); "
                      f"{_kept(done, ' once it can be written')}. Make it writable, or pass --cache-dir another folder")


def npy_file_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """What is wrong with the ``.npy`` file at ``path`` for an array of ``shape`` and ``dtype``; None if nothing.

    Checked before memory-mapping: numpy would silently grow a truncated file with zeros.
    """
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header_shape, _, header_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        return f"{path.name} has no readable .npy header ({exc})"
    if tuple(header_shape) != shape or header_dtype != dtype:
        return f"{path.name} holds {tuple(header_shape)} {header_dtype}, expected {shape} {dtype}"
    expected, actual = offset + int(np.prod(shape)) * dtype.itemsize, path.stat().st_size
    return None if actual == expected else f"{path.name} is {actual} bytes, expected {expected}"


@dataclass
class FeatureCache:
    """Memory-mapped arrays of one captured split; see the module docstring."""

    path: Path
    manifest: dict
    features: list[np.ndarray]
    logits: np.ndarray | None  # None: not stored (recomputed from the last block)
    labels: np.ndarray
    aux_logits: dict[int, np.ndarray]
    content_ids: Callable[[int], Sequence[str]] | None = None
    lock: FolderLock | None = field(default=None, repr=False)

    @property
    def done(self) -> int:
        return self.manifest["done"]

    @property
    def complete(self) -> bool:
        return self.done == len(self.labels)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row in all the arrays together."""
        return sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in self._arrays.values())

    @property
    def _arrays(self) -> dict[str, np.ndarray]:
        """Every array by file name stem, in a fixed order (the order of the chunk checksums)."""
        arrays = {f"block_{k}": a for k, a in enumerate(self.features)}
        arrays |= ({"logits": self.logits} if self.logits is not None else {}) | {"labels": self.labels}
        return arrays | {f"aux_{k}": a for k, a in sorted(self.aux_logits.items())}

    @classmethod
    def open(
        cls, root: str | Path, key: dict, n: int, dims: list[int], num_classes: int | None,
        aux_blocks: tuple[int, ...] = (),
        content_ids: Callable[[int], Sequence[str]] | None = None,
    ) -> "FeatureCache":
        """Open the cache for ``key`` under ``root``, creating it if needed; see the module docstring.

        ``num_classes`` None stores no logits. ``aux_blocks`` are the blocks that carry one of the model's own
        classifiers. ``content_ids(n)`` gives the content ids of the first n rows'
        images now (called only to check committed rows): rows whose image changed
        since they were captured are captured again.
        """
        path = Path(root) / cache_key_hash(key)
        shapes = {f"block_{k}": [n, d] for k, d in enumerate(dims)}
        shapes |= ({"logits": [n, num_classes]} if num_classes is not None else {}) | {"labels": [n]}
        shapes |= {f"aux_{k}": [n, num_classes] for k in aux_blocks}
        lock = FolderLock(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # held while this run may write; released once the cache is complete
        except OSError as exc:
            lock = None  # read-only: usable only if complete and intact
            if not (path / "manifest.json").is_file():
                raise CacheError(
                    f"cannot create the feature cache {path} ({exc.strerror or exc}); make {Path(root)} writable "
                    f"or pass --cache-dir a writable folder"
                ) from exc
        manifest = cls._read_manifest(path, key, shapes)
        cache = cls._map(path, manifest or {"version": FORMAT_VERSION, "key": key, "shapes": shapes}, shapes,
                         content_ids, lock)
        if manifest is None:
            cache._start_over(None)
        else:
            cache._verify()
        if cache.complete:
            cache._release()
        elif cache.lock is None:
            raise CacheError(f"feature cache {path} holds {cache.done} of {n} rows and is read-only; make it writable "
                             f"so that the rest can be captured, or pass --cache-dir a writable folder")
        return cache

    @staticmethod
    def _read_manifest(path: Path, key: dict, shapes: dict) -> dict | None:
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            chunks = manifest["chunks"]
            if not all(isinstance(c, dict) and {"stop", "images", "arrays"} <= set(c) for c in chunks):
                raise ValueError("malformed chunk records")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"feature cache {path} has a damaged manifest.json; delete {path} and rerun ({exc})") from exc
        if manifest.get("key") != key or manifest.get("shapes") != shapes:
            raise CacheError(f"feature cache {path} was written for other settings than this run; delete {path} and rerun")
        return manifest

    @classmethod
    def _map(cls, path: Path, manifest: dict, shapes: dict, content_ids, lock) -> "FeatureCache":
        """Memory-map the arrays (read-only: rows are written with ``pwrite``), created when missing or truncated and
        allocated when rows remain to be written."""
        manifest.setdefault("chunks", [])
        manifest["done"] = manifest["chunks"][-1]["stop"] if manifest["chunks"] else 0
        n = shapes["labels"][0]
        dtypes = {name: np.dtype(np.int64 if name == "labels" else np.float32) for name in shapes}
        fresh = not manifest["chunks"]  # nothing committed: the files are (re)created
        problems = [] if fresh else [
            problem for name, shape in shapes.items()
            if (problem := npy_file_problem(path / f"{name}.npy", tuple(shape), dtypes[name]))
        ]
        if problems and lock is None:
            raise CacheError(f"feature cache {path} is damaged ({'; '.join(problems)}) and read-only; "
                             f"delete {path} or make it writable, then rerun")
        if problems:
            print(f"[vision-lens] feature cache {path} is damaged ({'; '.join(problems)}); capturing again",
                  file=sys.stderr)
            manifest["chunks"], manifest["done"], fresh = [], 0, True
        complete = manifest["done"] == n
        files = {name: path / f"{name}.npy" for name in shapes}
        if not complete and lock is not None:
            cls._make_room(path, files, shapes, dtypes, fresh, manifest["done"])
        arrays = {}
        for name, shape in shapes.items():
            try:
                arrays[name] = np.lib.format.open_memmap(files[name], mode="r", dtype=dtypes[name], shape=tuple(shape))
            except (OSError, ValueError) as exc:
                raise CacheError(f"feature cache {path} is damaged ({name}.npy: {exc}); delete {path} and rerun") from exc
        feats = [arrays[f"block_{k}"] for k in range(sum(s.startswith("block_") for s in shapes))]
        aux = {int(s[4:]): arrays[s] for s in shapes if s.startswith("aux_")}
        cache = cls(path, manifest, feats, arrays.get("logits"), arrays["labels"], aux, content_ids, lock)
        if problems:
            cache._write_manifest()
        return cache

    @staticmethod
    def _make_room(path: Path, files: dict[str, Path], shapes: dict, dtypes: dict, fresh: bool, done: int) -> None:
        """Create the array files (when ``fresh``) and allocate every one at its full size, after checking that
        their disk has room for what is not allocated yet; CacheError giving both sizes where it has not."""
        sizes = {name: NPY_HEADER_BYTES + int(np.prod(shapes[name])) * dtypes[name].itemsize for name in shapes}
        needed = sum(unallocated_bytes(files[name], size) for name, size in sizes.items())
        free = free_bytes(path)
        if free is not None and needed > free:
            raise CacheError(f"not enough free disk space for the feature cache {path}: it needs {_megabytes(needed)} "
                             f"more and its disk has {_megabytes(free)} free; {_kept(done)}. {FULL_DISK_ADVICE}")
        for name, file in files.items():
            try:
                if fresh:
                    np.lib.format.open_memmap(file, mode="w+", dtype=dtypes[name], shape=tuple(shapes[name]))
                with open(file, "r+b") as f:
                    if hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # this file system cannot allocate
                    continue
                raise write_error(path, file.name, exc, done) from exc

    def _chunk_checksum(self, start: int, stop: int) -> str:
        digest = hashlib.sha256()
        for array in self._arrays.values():
            digest.update(np.ascontiguousarray(array[start:stop]))  # rows of a C-ordered array: no copy
        return digest.hexdigest()

    def _verify(self) -> None:
        """Keep the committed chunks up to the first one that is damaged or whose images changed."""
        start = 0
        chunks = self.manifest["chunks"]
        checked = any(chunk["images"] for chunk in chunks) and self.content_ids is not None
        content_ids = self.content_ids(chunks[-1]["stop"]) if checked else None
        for i, chunk in enumerate(chunks):
            stop = chunk["stop"]
            problem = None
            if checked and chunk["images"] and chunk["images"] != images_digest(content_ids[start:stop]):
                problem = f"images of rows {start}-{stop - 1} changed since they were captured"
            elif chunk["arrays"] != self._chunk_checksum(start, stop):
                problem = f"rows {start}-{stop - 1} do not match their checksum (damaged)"
            if problem:
                self._start_over(i, problem)
                return
            start = stop
        if start:
            print(f"[vision-lens] feature cache {self.path}: reusing {start} of {len(self.labels)} captured rows",
                  file=sys.stderr)

    def _start_over(self, chunk: int | None, problem: str = "") -> None:
        """Drop the chunks from ``chunk`` on (all when None) so that capture writes them again."""
        if self.lock is None and chunk is not None:
            raise CacheError(f"feature cache {self.path}: {problem}, and the folder is read-only; make it writable "
                             f"so that they are captured again, or delete it")
        if chunk is not None:
            print(f"[vision-lens] feature cache {self.path}: {problem}; capturing them again", file=sys.stderr)
        self.manifest["chunks"] = self.manifest["chunks"][:chunk] if chunk is not None else []
        self.manifest["done"] = self.manifest["chunks"][-1]["stop"] if self.manifest["chunks"] else 0
        self._write_manifest()

    def _write_manifest(self, manifest: dict | None = None) -> None:
        """Write ``manifest`` (default: this cache's) atomically; CacheError saying what is kept if it fails."""
        try:
            write_text_atomic(self.path / "manifest.json", json.dumps(manifest or self.manifest, indent=1))
        except OSError as exc:
            raise write_error(self.path, "manifest.json", exc, self.done) from exc

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write(
        self, start: int, features: list[np.ndarray], logits: np.ndarray | None, labels: np.ndarray,
        aux_logits: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Write rows ``start:start+len(labels)`` (not yet committed), with ``pwrite``: a full disk raises
        CacheError (see the module docstring)."""
        rows = {f"block_{k}": values for k, values in enumerate(features)}
        rows |= ({"logits": logits} if logits is not None else {}) | {"labels": labels}
        rows |= {f"aux_{k}": values for k, values in (aux_logits or {}).items()}
        arrays = self._arrays
        for name, values in rows.items():
            array = arrays[name]
            data = memoryview(np.ascontiguousarray(values, dtype=array.dtype)).cast("B")
            if data.nbytes != len(labels) * array[:1].nbytes:
                raise ValueError(f"{name}: rows of {tuple(np.shape(values))}, expected "
                                 f"{(len(labels), *array.shape[1:])}")
            offset = array.offset + start * array[:1].nbytes
            try:
                fd = os.open(self.path / f"{name}.npy", os.O_WRONLY)
                try:
                    while data:  # pwrite may write less than asked
                        written = os.pwrite(fd, data, offset)
                        data, offset = data[written:], offset + written
                finally:
                    os.close(fd)
            except OSError as exc:
                raise write_error(self.path, f"{name}.npy", exc, self.done) from exc

    def commit(self, done: int, content_ids: Sequence[str] | None = None) -> None:
        """Record that the first ``done`` rows are final, with their checksums and those of ``content_ids``, the
        content ids of the images of the rows since the last commit."""
        chunk = {"stop": done, "images": images_digest(content_ids), "arrays": self._chunk_checksum(self.done, done)}
        manifest = self.manifest | {"chunks": [*self.manifest["chunks"], chunk], "done": done}
        self._write_manifest(manifest)  # a failure leaves this cache as on disk: at the last commit
        self.manifest = manifest
        for array in self._arrays.values():  # the checksum mapped the rows' pages: unmap them, so memory stays flat
            if isinstance(getattr(array, "_mmap", None), mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
                array._mmap.madvise(mmap.MADV_DONTNEED)
        if self.complete:
            self._release()
