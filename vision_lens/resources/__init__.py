"""Fact lists shipped with the package."""

from __future__ import annotations

from importlib import resources


def devkit_synsets() -> list[tuple[str, str]]:
    """The 1,000 ILSVRC-2012 classes in devkit order (ID 1 first), as ``(synset, first WordNet name)``."""
    text = resources.files(__name__).joinpath("ilsvrc2012_devkit_synsets.txt").read_text()
    return [(line[:9], line[10:].split(",")[0]) for line in text.splitlines() if line.strip()]


def imagenet_synsets() -> list[str]:
    """The 1,000 ILSVRC-2012 synsets sorted: the class order of ImageNet laid out by synset, and of torchvision's
    and timm's ImageNet outputs."""
    return sorted(synset for synset, _ in devkit_synsets())
