"""What every ``cifar:`` family (ResNets, InceptionV1, ViT) shares: how its adapters read CIFAR-10.

* Ten outputs are CIFAR-10's classes, in the order of its class folders (a data
  set laid out otherwise, like the demo's digits, is matched by position only
  when asked to); other counts are known by index only.
* The preprocessing is the weights entry's (no resize; ImageNet's mean and std,
  as the published checkpoints were trained with).
* Weights known to take 32x32 images (the registered files, and random init,
  which is built for CIFAR-10) make the data loader check every image's size. A
  checkpoint of unknown origin may have been trained at another size (the
  demo's 16x16 digits), so then no size is imposed: the networks are fully
  convolutional, or take any grid their tokenizer makes.
"""

from __future__ import annotations

from .base import ModelAdapter
from .weights import CIFAR10_CLASSES, LoadedWeights, class_folders

INPUT_SIZE = (32, 32)


def read_as_cifar(adapter: ModelAdapter, weights: LoadedWeights) -> ModelAdapter:
    """``adapter`` with CIFAR-10's class names and folders (for ten outputs), the weights entry's preprocessing and,
    for weights known to take 32x32 images, that input size."""
    n = adapter.num_classes
    folders = class_folders(weights.entry.classes)
    adapter.class_folders = folders if folders is not None and len(folders) == n else None
    adapter.class_names = list(CIFAR10_CLASSES) if adapter.class_folders is not None else [str(i) for i in range(n)]
    adapter._transform = weights.entry.preprocessing.transform()
    adapter.input_size = INPUT_SIZE if weights.known else None
    return adapter
