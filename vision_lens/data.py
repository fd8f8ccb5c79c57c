"""Image sources: ImageFolder trees and torchvision's CIFAR-10, with seeded subsets.

A source is a list of labelled images that can be loaded one by one, plus a
fingerprint that changes whenever the list of image names does (the feature
cache keys on it), and per-image content ids (hashes of the bytes) with which
the cache checks each captured row. Keying on names and checking rows on
content means that fixing one broken file keeps every row captured before it.

Capture hashes each file in the loader worker that reads it, from the bytes it
decodes (``load_with_content_id``), and keeps the hashes in a small SQLite index
beside the feature cache (``ContentHashIndex``), keyed by path, size and
modification time: checking a captured cache later stats each file and reads
only those that changed.

Every file is decoded by :func:`to_rgb`, which reads 16-bit grey and
transparency as the file means them and refuses pixels without an agreed
8-bit meaning (floats), naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(UserError, ValueError):
    """The data cannot be used as given; the message names the path and the fix."""


class UnsupportedImageMode(ValueError):
    """An image whose pixels have no agreed meaning as 8-bit RGB (e.g. floats); the message names the PIL mode."""


# PIL modes whose own conversion to RGB means what the file means: bilevel, grey, palette, RGB, and the colour
# spaces PIL converts colourimetrically (CMYK naively, as every image library does).
CONVERTIBLE_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
WHITE = (255, 255, 255, 255)
# How files become pixels (to_rgb), in the image folders' fingerprint: features captured under another decoding
# (before 16-bit grey was scaled and transparency composited) are never reused.
DECODING = "to_rgb 2\n"


def _integer_bits(image: Image.Image) -> int | None:
    """Bits per sample of a PIL ``I`` (32-bit integer) image, from its file format; None where it does not say."""
    if image.format in ("PNG", "PPM"):  # 16-bit grey: PNG has no 32-bit samples, PGM's are scaled to 16 bits
        return 16
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)  # BitsPerSample
        return int(bits[0] if isinstance(bits, tuple) else bits) if bits else None
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as the 8-bit RGB that every model's preprocessing takes, meaning what the file means.

    * 16-bit grey (``I;16``, or ``I`` from a 16-bit file) is scaled to 8 bits
      (65535 -> 255); PIL's own conversion would clip every value above 255.
    * Transparency (an alpha channel, or a palette's or a colour's
      transparency) is composited over white, as a viewer shows it; PIL's
      conversion would drop the alpha and show what lies under it.
    * Every mode in ``CONVERTIBLE_MODES`` converts by PIL.
    * Anything else (32-bit float ``F`` or integer ``I`` samples, with no
      agreed range) raises UnsupportedImageMode naming the mode.

    A file of several frames (an animated GIF, a multi-page TIFF) gives its first.
    """
    mode = image.mode
    if (mode.startswith("I;16") and mode != "I;16S") or (mode == "I" and _integer_bits(image) == 16):
        values = np.asarray(image).astype(np.uint32)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)  # v / 65535 * 255, rounded
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        kind = "floating-point" if mode == "F" else "32-bit integer" if mode == "I" else "signed or unusual integer"
        raise UnsupportedImageMode(f"its {kind} pixels (PIL mode {mode}) have no agreed range as 8-bit colour; save "
                                   "it with 8 or 16 bits per channel (e.g. as PNG)")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    if mode not in CONVERTIBLE_MODES:
        raise UnsupportedImageMode(f"PIL mode {mode} has no conversion to RGB that vision-lens trusts; save the "
                                   "image as 8-bit RGB or greyscale (e.g. as PNG)")
    return image.convert("RGB")


class ContentHashIndex:
    """SHA-256 of files, remembered by (path, size, mtime) in an SQLite file.

    A file whose size or modification time changed is hashed again. Where the
    index cannot be written (a read-only cache folder) hashes are computed and
    not kept.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60)
            self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INT, mtime_ns INT, sha256 TEXT)")
        except (OSError, sqlite3.Error):
            self.db = sqlite3.connect(":memory:")
            self.db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, size INT, mtime_ns INT, sha256 TEXT)")

    def hashes(self, paths: Sequence[str | Path]) -> list[str]:
        """The SHA-256 of each file, read from the index where the file is unchanged."""
        known = {row[0]: row[1:] for row in self.db.execute("SELECT path, size, mtime_ns, sha256 FROM files")}
        out, fresh = [], []
        for path in paths:
            key = os.path.abspath(path)
            try:
                stat = os.stat(key)
            except OSError as exc:
                raise DataError(f"cannot read image {path} ({exc}); restore the file or remove it and rerun") from exc
            entry = known.get(key)
            if entry is None or entry[:2] != (stat.st_size, stat.st_mtime_ns):
                entry = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(Path(key).read_bytes()).hexdigest())
                fresh.append((key, *entry))
            out.append(entry[2])
        self.remember(fresh)
        return out

    def remember(self, entries: Sequence[tuple[str, int, int, str]]) -> None:
        """Keep ``(path, size, mtime_ns, sha256)`` entries; the stat must be taken before the bytes were read."""
        if not entries:
            return
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                    [(os.path.abspath(path), *rest) for path, *rest in entries])
        except sqlite3.Error:  # e.g. read-only: the hashes are still right, only not kept
            pass


class ImageSource:
    """Labelled images addressed by integer index."""

    classes: list[str]
    labels: np.ndarray  # (n,) int64, index into ``classes``
    fingerprint: str  # changes whenever the list of image names does, or the decoding (DECODING)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def load_with_content_id(self, index: int) -> tuple[Image.Image, str, tuple[int, int] | None]:
        """:meth:`load`, with the content id (as :meth:`content_ids` gives it) of the bytes decoded, and where the
        image is a file, its (size, mtime_ns) from before they were read (for :meth:`remember_content_ids`)."""
        raise NotImplementedError

    def content_ids(self, indices: Sequence[int], index_dir: str | Path) -> list[str]:
        """A hash of each selected image's content; ``index_dir`` may hold a persistent hash index."""
        raise NotImplementedError

    def remember_content_ids(self, indices: Sequence[int], ids: Sequence[str], stamps: Sequence, index_dir: str | Path
                             ) -> None:
        """Keep ids and stamps from :meth:`load_with_content_id` in the index under ``index_dir``, if the source
        has one, so that :meth:`content_ids` need not read those images again."""

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        raise NotImplementedError


@dataclass
class ImageFolderSource(ImageSource):
    """``root/<class>/<image>``, classes in sorted folder order (as torchvision); hidden folders and files (names
    starting with ".") are skipped, the files counted in the log."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    fingerprint: str

    @classmethod
    def scan(cls, root: str | Path) -> "ImageFolderSource":
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; pass a folder laid out as <root>/<class>/<image>")
        # os.scandir and plain names: the file type comes with the listing (no stat per image), and names sort
        # far faster than Path objects, which are built for none of them.
        with os.scandir(root) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"data folder {root} has no class subfolders; expected <root>/<class>/<image>")
        paths, labels, hidden = [], [], 0
        digest = hashlib.sha256(DECODING.encode())
        for label, name in enumerate(classes):
            with os.scandir(root / name) as entries:
                listed = [e.name for e in entries if e.is_file()]
            # Hidden files are no images of the class: macOS's AppleDouble "._x.png" beside each copied image,
            # .DS_Store, an editor's swap file. Skipped, as the hidden class folders are, and counted below.
            files = sorted(f for f in listed
                           if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            hidden += sum(f.startswith(".") for f in listed)
            if not files:
                raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            # Names only: contents are checked per row (content_ids).
            digest.update("".join(f"{name}/{file}\n" for file in files).encode())
            folder = os.path.join(root, name)
            paths += [os.path.join(folder, file) for file in files]
            labels += [label] * len(files)
        if hidden:
            print(f"[vision-lens] skipped {hidden} hidden file{'s' * (hidden != 1)} in {root}", file=sys.stderr)
        return cls(root, classes, paths, np.asarray(labels, dtype=np.int64), digest.hexdigest())

    def load(self, index: int) -> Image.Image:
        return self._decode(index, self.paths[index])

    def load_with_content_id(self, index: int) -> tuple[Image.Image, str, tuple[int, int]]:
        path = self.paths[index]
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())  # before reading: a later change gets a new stamp, so is read again
                data = f.read()
        except OSError as exc:
            raise self._unreadable(path, exc) from exc
        image = self._decode(index, io.BytesIO(data))
        return image, hashlib.sha256(data).hexdigest(), (stat.st_size, stat.st_mtime_ns)

    def _decode(self, index: int, file) -> Image.Image:
        """Image ``index`` decoded from ``file`` (its path, or its bytes), as 8-bit RGB (:func:`to_rgb`)."""
        try:
            with Image.open(file) as image:
                return to_rgb(image)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise self._unreadable(self.paths[index], exc) from exc

    @staticmethod
    def _unreadable(path: str, exc: Exception) -> DataError:
        return DataError(
            f"cannot read image {path} ({exc.__class__.__name__}: {exc}). Replace the file (same name) and "
            f"rerun the same command: features captured so far are kept in the cache (removing the file "
            f"changes the image list, which starts a new capture)."
        )

    def describe(self, index: int) -> str:
        return self.paths[index]

    def content_ids(self, indices: Sequence[int], index_dir: str | Path) -> list[str]:
        return self._index(index_dir).hashes([self.paths[i] for i in indices])

    def remember_content_ids(self, indices: Sequence[int], ids: Sequence[str], stamps: Sequence, index_dir: str | Path
                             ) -> None:
        self._index(index_dir).remember([(self.paths[i], *stamp, id_) for i, id_, stamp in zip(indices, ids, stamps)])

    @staticmethod
    def _index(index_dir: str | Path) -> ContentHashIndex:
        return ContentHashIndex(Path(index_dir) / "content-hashes.sqlite")


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

    def load_with_content_id(self, index: int) -> tuple[Image.Image, str, None]:
        return self.load(index), hashlib.sha256(self.images[index].tobytes()).hexdigest(), None

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def content_ids(self, indices: Sequence[int], index_dir: str | Path) -> list[str]:
        return [hashlib.sha256(self.images[i].tobytes()).hexdigest() for i in indices]


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


def data_id(data: str) -> str:
    """``--data`` as lens folders record it: a folder's absolute path, or the dataset's name (torchvision:cifar10)."""
    return data if data == "torchvision:cifar10" else str(Path(data).resolve())


SAMPLE_IMAGES = 256  # fit images whose content ids a lens records, to recognise them among the eval images
SAMPLE_ID_CHARS = 16  # of each SHA-256: 64 bits, so that two different images never pass for one


@dataclass
class SelectedImages:
    """The images of one split that a command reads: the data, the split, and which of its images."""

    data: str  # data_id(--data)
    split: str
    source: ImageSource
    indices: np.ndarray
    index_dir: Path  # the folder of the source's content hash index (the feature cache's)

    def content_ids(self) -> list[str]:
        """Each selected image's content id, in order (after capture, read from the hash index)."""
        return self.source.content_ids(self.indices, self.index_dir)

    def record(self, seed: int) -> dict:
        """What a lens fitted on these images keeps of them (``LensConfig.fit_images``): the data, the split, their
        number and the content ids of a seeded sample of up to SAMPLE_IMAGES of them."""
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.permutation(len(self.indices))[:SAMPLE_IMAGES])
        ids = self.source.content_ids(self.indices[sample], self.index_dir)
        return {"data": self.data, "split": self.split, "images": len(self.indices),
                "sample": [i[:SAMPLE_ID_CHARS] for i in ids]}

    def fit_images_among(self, fit_images: dict) -> list[str]:
        """The selected images (as ``describe`` names them) whose content is among ``fit_images``'s sample."""
        sample = set(fit_images.get("sample", ()))
        return [self.source.describe(int(index)) for index, id_ in zip(self.indices, self.content_ids())
                if id_[:SAMPLE_ID_CHARS] in sample]


def select(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A seeded subset of ``limit`` of ``range(n)`` in increasing order (all if ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit <= 0:
        raise DataError(f"a limit must be positive, got {limit}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


class TransformedSubset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for the selected indices of a source; with ``content_ids``,
    ``(transform(image), label, (content id, stamp))`` (see ``ImageSource.load_with_content_id``).

    ``input_size`` is the (height, width) the transform requires of raw images
    (``ModelAdapter.input_size``); an image of another size stops the run with
    its path and both sizes instead of crashing inside the model or giving
    numbers for a wrong input.
    """

    def __init__(
        self, source: ImageSource, indices: Sequence[int], transform: Callable, input_size: tuple[int, int] | None = None,
        content_ids: bool = False,
    ):
        self.source, self.indices, self.transform = source, np.asarray(indices), transform
        self.input_size = input_size
        self.content_ids = content_ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        if self.content_ids:
            image, *content = self.source.load_with_content_id(index)
        else:
            image = self.source.load(index)
        if self.input_size is not None and (image.height, image.width) != tuple(self.input_size):
            height, width = self.input_size
            raise DataError(
                f"image {self.source.describe(index)} is {image.width}x{image.height} pixels but the model takes "
                f"{width}x{height} images and its preprocessing does not resize; resize the image or pass data "
                f"of the model's size"
            )
        item = self.transform(image), int(self.source.labels[index])
        return (*item, tuple(content)) if self.content_ids else item


PHASE_BYTES = 64 * 2**20  # about this much of decoded images is held per phase of phased_batches


class _PhaseSampler(torch.utils.data.Sampler):
    """The batches of one phase: rows ``rows`` of the dataset, ``batch_size`` at a time (set before each pass)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.rows = batch_size, range(0)

    def __iter__(self):
        for start in range(self.rows.start, self.rows.stop, self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.rows.stop)))

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)


def phased_batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, collate_fn: Callable | None = None,
                   pin_memory: bool = False, phase_bytes: int = PHASE_BYTES) -> Iterator:
    """The batches of ``dataset`` in order, decoded by ``workers`` loader processes a phase at a time: while they
    decode a phase the caller waits, and while the caller works through it they wait.

    Where the model runs on the same cores as the loader (a CPU, whose forward pass already uses every core),
    decoding inside the loader while the model runs makes the two compete for the cores; in phases, decoding
    still uses every worker and the forward pass every core. A phase holds about ``phase_bytes`` of decoded
    images (the first, one batch per worker, measures them), so memory stays flat in the number of images.
    """
    sampler = _PhaseSampler(batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                                         pin_memory=pin_memory, persistent_workers=True)
    step = batch_size * workers  # rows per round of the workers
    start, phase = 0, step
    try:
        while start < len(dataset):
            sampler.rows = range(start, min(start + phase, len(dataset)))
            batches = list(loader)
            start = sampler.rows.stop
            images = next((b[0] for b in batches if isinstance(b, (tuple, list)) and isinstance(b[0], torch.Tensor)),
                          None)
            if images is not None and len(images):
                per_image = images[0].numel() * images.element_size()
                phase = step * max(1, phase_bytes // (per_image * step))
            yield from batches
            del batches
    finally:
        del loader  # its persistent workers end with it
