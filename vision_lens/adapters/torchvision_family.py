"""What torchvision's ImageNet classifiers share: the weights enum's preprocessing and category names.

Class indices follow torchvision's ImageNet order, the sorted synsets (n01440764,
...), which are the ``class_folders`` that data classes are matched to by name.
Random-init weights and local checkpoints are read as the published ones are.
"""

from __future__ import annotations

from torch import nn
from torchvision import models

from ..resources import imagenet_synsets
from .base import ModelAdapter
from .errors import WeightsError


def read_as_torchvision(adapter: ModelAdapter, arch: str) -> ModelAdapter:
    """``adapter`` with the preprocessing of ``arch``'s DEFAULT weights and, for their number of outputs, their
    category names and the synsets as class folders (else the outputs are known by index)."""
    published = models.get_model_weights(arch).DEFAULT
    categories = published.meta["categories"]
    n = adapter.num_classes
    adapter.class_names = list(categories) if n == len(categories) else [str(i) for i in range(n)]
    adapter.class_folders = imagenet_synsets() if n == len(categories) else None
    adapter.published = published
    return adapter


def classes_of(state: dict | None, arch: str, num_classes: int | None) -> int:
    """The class count of the checkpoint ``state`` (its ``fc``), else ``num_classes`` (default: ImageNet's)."""
    if state is None:
        return num_classes or 1000
    if "fc.weight" not in state:
        raise WeightsError(f"checkpoint has no fc.weight, so it is not a torchvision {arch} checkpoint")
    return state["fc.weight"].shape[0]


class TorchvisionAdapter(ModelAdapter):
    """A torchvision classifier whose head is ``fc``; preprocessing and classes from :func:`read_as_torchvision`."""

    input_size = None  # the transform resizes and centre-crops any image to the model's input

    @property
    def unembed(self) -> nn.Linear:
        return self.model.fc

    @property
    def transform(self):
        # Random-init and local checkpoints get the published weights' preprocessing too.
        return self.published.transforms()
