"""Weights entries: where ``--weights pretrained`` comes from, and how any weights of an architecture are read.

In the spirit of torchvision's weights enums, an entry travels with its
architecture's registration (:mod:`~vision_lens.adapters.registry`) and holds

* its **source**: a URL (downloaded through torch.hub's cache, the file name
  carrying a sha256 prefix), a checkpoint trained here under
  :func:`~vision_lens.resources.results_root` (``results/checkpoints/...``, with
  the training record beside it holding its sha256 and test accuracy), a
  Hugging Face hub id that the family's own loader reads (``hf-hub:...``,
  timm's), or None where nothing is published;
* the **preprocessing** the weights expect (:class:`Preprocessing`), which
  random-init weights and local files of the architecture get too;
* the **class order** of the outputs (a key of :data:`CLASS_ORDERS`);
* metadata: who published the weights and their published top-1 accuracy.

Plain data without torch, so that ``vision-lens models`` answers at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import resources

# ImageNet's channel statistics. The published CIFAR-10 ResNets (akamaster/pytorch_resnet_cifar10) were trained
# on images normalised by them, not by CIFAR-10's own, and every cifar: model here follows those checkpoints.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# How the outputs are ordered: key -> what the listing says. A model whose outputs have a known order matches data
# class folders to them by name (ModelAdapter.class_folders).
CLASS_ORDERS = {
    "cifar10": "CIFAR-10's classes, in the order of its class folders",
    "imagenet": "the ILSVRC-2012 synsets, sorted (ImageFolder's order)",
    "lucid": "Lucid's outputs: a dummy, the ILSVRC-2012 devkit IDs in order, then unused ones",
}
_SPLIT = {"cifar10": "test", "imagenet": "val"}  # where published accuracies are measured


def class_folders(order: str) -> list[str] | None:
    """The dataset folder name of each output under ``order``; None where outputs are not one class folder each."""
    return {"cifar10": CIFAR10_CLASSES, "imagenet": resources.imagenet_synsets()}.get(order)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize`` and centre-crop ``crop`` (either may be None: left as it is), then a
    [0, 1] tensor normalised by ``mean`` and ``std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value

    def transform(self):
        """The torchvision transform of one PIL image."""
        from torchvision import transforms

        steps = []
        if self.resize is not None:
            steps.append(transforms.Resize(self.resize, interpolation=transforms.InterpolationMode(self.interpolation)))
        if self.crop is not None:
            steps.append(transforms.CenterCrop(self.crop))
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def __str__(self) -> str:
        size = (f"resize {self.resize} ({self.interpolation}), crop {self.crop}" if self.resize or self.crop
                else "no resize")
        stats = ("ImageNet mean and std" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD)
                 else f"mean {_short(self.mean)}, std {_short(self.std)}")
        return f"{size}; {stats}"


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class Weights:
    """What ``--weights pretrained`` loads for an architecture, and how every weights of it are read.

    Attributes:
        source: a URL; ``results/checkpoints/<file>`` (a checkpoint trained here, under
            :func:`~vision_lens.resources.results_root`, with its record ``<file>.json``); ``hf-hub:<id>`` (the
            family's own hub loader); or None (nothing published).
        preprocessing: what the weights expect; None where the family reads it from its library for each model
            (timm's pretrained config).
        classes: the output order, a key of :data:`CLASS_ORDERS`.
        origin: who published them, as ``vision-lens models`` names it.
        name: the publisher's name for them (torchvision's weights enum member), if any.
        accuracy: their published top-1 accuracy (a file trained here: its record's).
        train: for a file trained here, the command that makes it.
    """

    source: str | None = None
    preprocessing: Preprocessing | None = None
    classes: str | None = None
    origin: str = ""
    name: str = ""
    accuracy: float | None = None
    train: str | None = None

    def __post_init__(self):
        if self.classes is not None and self.classes not in CLASS_ORDERS:
            raise ValueError(f"Weights(classes={self.classes!r}): not one of {', '.join(CLASS_ORDERS)}")
        if self.kind == "file" and self.train is None:
            raise ValueError(f"Weights({self.source!r}): a checkpoint trained here needs the command that trains it")

    @property
    def kind(self) -> str:
        """``url``, ``file`` (trained here), ``hub`` or ``none``."""
        if self.source is None:
            return "none"
        if self.source.startswith(("http://", "https://")):
            return "url"
        if self.source.startswith("hf-hub:"):
            return "hub"
        if self.source.startswith("results/"):
            return "file"
        raise ValueError(f"Weights source {self.source!r}: not a URL, results/..., hf-hub:... or None")

    def path(self) -> Path:
        """Where a checkpoint trained here is in this installation (the checkout's results/, or the wheel's copy)."""
        return resources.committed(self.source)

    def record(self) -> dict | None:
        """The training record beside a checkpoint trained here (command, sha256, test accuracy), if present."""
        path = self.path().with_suffix(".json")
        return json.loads(path.read_text()) if path.is_file() else None

    def sha256(self) -> str | None:
        """The file's sha256: its record's, for a checkpoint trained here; the prefix in a torch.hub file name."""
        if self.kind == "file":
            return (self.record() or {}).get("sha256")
        named = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", self.source or "") if self.kind == "url" else None
        return named.group(1) if named else None

    def published_accuracy(self) -> float | None:
        if self.kind == "file":
            return (self.record() or {}).get("test_acc")
        return self.accuracy

    @property
    def split(self) -> str:
        """The split its published accuracy is measured on."""
        return _SPLIT.get(self.classes or "", "")

    def identifies(self, weights_id: str) -> bool:
        """Whether weights of id ``weights_id`` (a file's sha256) are these."""
        digest = self.sha256()
        return digest is not None and weights_id.startswith(digest)

    def describe(self) -> str:
        """One line for ``vision-lens models``."""
        if self.kind == "none":
            return "none published: --weights random, or a checkpoint file"
        if self.kind == "file" and not self.path().is_file():
            return f"not trained yet: {self.train}"
        where = {"url": lambda: f"{self.origin} {self.name + ' ' if self.name else ''}({self.source.rsplit('/', 1)[-1]})",
                 "file": lambda: f"trained here: {self.source}",
                 "hub": lambda: f"{self.origin}: {self.source.removeprefix('hf-hub:')}"}[self.kind]()
        accuracy = self.published_accuracy()
        return where + (f", {self.split} acc {accuracy:g}" if accuracy is not None else "")


@dataclass(frozen=True)
class LoadedWeights:
    """The weights an adapter was built with: their id (a file's sha256, ``random-init:<hash>``, a hub id) and the
    architecture's entry (its preprocessing and class order apply to every weights of the architecture)."""

    id: str
    entry: Weights

    @property
    def known(self) -> bool:
        """Random init or the entry's own file: weights whose input size and classes the entry states."""
        return self.id.startswith("random-init:") or self.entry.identifies(self.id)
