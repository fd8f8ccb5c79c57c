"""Image sources: ImageFolder trees and torchvision's CIFAR-10, with seeded subsets.

A source is a list of labelled images that can be loaded one by one, plus a
fingerprint that changes whenever the list does (the feature cache keys on it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(ValueError):
    """The data cannot be used as given; the message names the path and the fix."""


class ImageSource:
    """Labelled images addressed by integer index."""

    classes: list[str]
    labels: np.ndarray  # (n,) int64, index into ``classes``
    fingerprint: str  # changes whenever the list of images does

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        raise NotImplementedError


@dataclass
class ImageFolderSource(ImageSource):
    """``root/<class>/<image>``, classes in sorted folder order (as torchvision)."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    fingerprint: str

    @classmethod
    def scan(cls, root: str | Path) -> "ImageFolderSource":
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; pass a folder laid out as <root>/<class>/<image>")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"data folder {root} has no class subfolders; expected <root>/<class>/<image>")
        paths, labels = [], []
        digest = hashlib.sha256()
        for label, name in enumerate(classes):
            files = sorted(
                p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            for path in files:
                digest.update(f"{name}/{path.name}:{path.stat().st_size}\n".encode())
            paths += files
            labels += [label] * len(files)
        return cls(root, classes, paths, np.asarray(labels, dtype=np.int64), digest.hexdigest())

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(
                f"cannot read image {path} ({exc.__class__.__name__}: {exc}). Replace or remove the file and "
                f"rerun the same command: features captured so far are kept in the cache."
            ) from exc

    def describe(self, index: int) -> str:
        return str(self.paths[index])


@dataclass
class ArraySource(ImageSource):
    """Images held in memory as a uint8 array (N, H, W, 3), e.g. torchvision's CIFAR-10."""

    name: str
    images: np.ndarray
    classes: list[str]
    labels: np.ndarray
    fingerprint: str

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


def torchvision_cifar10(root: str | Path, split: str) -> ArraySource:
    """CIFAR-10 through torchvision's downloader (needs the internet once)."""
    from torchvision.datasets import CIFAR10

    if split not in ("train", "test"):
        raise DataError(f"torchvision:cifar10 has the splits 'train' and 'test', not {split!r}")
    try:
        ds = CIFAR10(str(root), train=split == "train", download=True)
    except Exception as exc:  # urllib raises several types when offline
        raise DataError(
            f"could not download CIFAR-10 into {root} ({exc}). Offline, pass --data a folder laid out as "
            f"<root>/{{train,test}}/<class>/<image>."
        ) from exc
    labels = np.asarray(ds.targets, dtype=np.int64)
    digest = hashlib.sha256(json.dumps([split, len(labels)]).encode() + ds.data[:64].tobytes()).hexdigest()
    return ArraySource(f"torchvision:cifar10/{split}", ds.data, list(ds.classes), labels, digest)


def open_split(data: str, split: str, download_root: str | Path) -> ImageSource:
    """The ``split`` of ``data``: ``<data>/<split>/`` as an ImageFolder, or ``torchvision:cifar10``."""
    if data == "torchvision:cifar10":
        return torchvision_cifar10(download_root, split)
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {root} does not exist; pass a folder with one ImageFolder per split, e.g. {root}/train")
    if not (root / split).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"--data {root} has no split folder {split!r} (found: {', '.join(found) or 'none'})")
    return ImageFolderSource.scan(root / split)


def select(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A seeded subset of ``limit`` of ``range(n)`` in increasing order (all if ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit <= 0:
        raise DataError(f"a limit must be positive, got {limit}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


class TransformedSubset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for the selected indices of a source."""

    def __init__(self, source: ImageSource, indices: Sequence[int], transform: Callable):
        self.source, self.indices, self.transform = source, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        return self.transform(self.source.load(index)), int(self.source.labels[index])
