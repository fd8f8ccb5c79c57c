"""Fact lists shipped with the package, and where the committed results are.

The committed runs' result files and the checkpoints trained here live in the
checkout's ``results/`` folder; a built wheel carries them as the package data
``vision_lens/references/`` (``setup.cfg`` maps that package onto ``results/``).
:func:`results_root` finds whichever this installation has.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def results_root() -> Path:
    """The committed results: ``vision_lens/references`` in an installed wheel, else the checkout's ``results/``
    (an editable install, or the source tree on ``sys.path``)."""
    package = Path(str(resources.files("vision_lens")))
    installed = package / "references"
    return installed if installed.is_dir() else package.parent / "results"


def committed(path: str) -> Path:
    """``results/...`` in this installation's committed results (:func:`results_root`)."""
    return results_root() / path.removeprefix("results/")


def located(path: str) -> str:
    """``path`` as given, or, where it names ``results/...`` and nothing is there, :func:`committed` ``(path)``: how
    a run folder's recorded ``hf:results/...`` model loads from any working folder of a checkout (and from an
    installed wheel, for what the wheel ships)."""
    if path.startswith("results/") and not Path(path).exists():
        return str(committed(path))
    return path


def package_folder(name: str) -> Path:
    """A folder of files shipped in this package (``vision_lens/resources/<name>``)."""
    return Path(str(resources.files(__name__).joinpath(name)))


def devkit_synsets() -> list[tuple[str, str]]:
    """The 1,000 ILSVRC-2012 classes in devkit order (ID 1 first), as ``(synset, first WordNet name)``."""
    text = resources.files(__name__).joinpath("ilsvrc2012_devkit_synsets.txt").read_text()
    return [(line[:9], line[10:].split(",")[0]) for line in text.splitlines() if line.strip()]


def imagenet_synsets() -> list[str]:
    """The 1,000 ILSVRC-2012 synsets sorted: the class order of ImageNet laid out by synset, and of torchvision's
    and timm's ImageNet outputs."""
    return sorted(synset for synset, _ in devkit_synsets())
