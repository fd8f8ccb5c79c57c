"""The offline demo: scikit-learn's handwritten digits, a small ResNet trained on the spot, the whole pipeline.

Nothing is downloaded. The digits are written as an ImageFolder of PNGs and the
model as a checkpoint file, so the demo runs the same code paths as a real run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .adapters import create_adapter
from .data import ImageFolderSource, TransformedSubset
from .errors import MissingExtraError
from .threads import torch_threads


def write_digits(root: Path, test_fraction: float = 0.3, seed: int = 0) -> Path:
    """sklearn's 1,797 8x8 digits as 16x16 RGB PNGs in ``root/{train,test}/<digit>/``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    for rank, i in enumerate(order):
        split = "test" if rank < n_test else "train"
        folder = root / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((16, 16), Image.BILINEAR).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def train_small_resnet(data_root: Path, checkpoint: Path, arch: str = "resnet14", epochs: int = 5, seed: int = 0) -> Path:
    """Train ``cifar:<arch>`` from scratch on ``data_root/train``; save it in the akamaster checkpoint layout."""
    adapter = create_adapter(f"cifar:{arch}", weights="random", seed=seed)
    model = adapter.model.train().requires_grad_(True)
    source = ImageFolderSource.scan(data_root / "train")
    data = TransformedSubset(source, np.arange(len(source)), adapter.transform)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.as_tensor(source.labels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * -(-len(labels) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    for _ in tqdm(range(epochs), desc=f"train {arch} on digits", unit="epoch"):
        for idx in DataLoader(range(len(labels)), batch_size=64, shuffle=True, generator=generator):
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    return checkpoint


def demo(out: str, overwrite: bool = False, epochs: int = 5, seed: int = 0, device: str = "auto") -> Path:
    """Write digits, train a ResNet-14 on them, then ``vision-lens run`` into ``out``.

    Runs on one torch thread: its 16x16 images give a second thread nothing to do
    but contend, which on a busy machine made the demo several times slower.
    """
    from .artifacts import prepare_output
    from .options import RunOptions, check_count, check_device, check_seed
    from .pipeline import run

    # Before --out is created: a bad value leaves no folder behind.
    if importlib.util.find_spec("sklearn") is None:
        raise MissingExtraError("the demo", "scikit-learn (its handwritten digits)", "demo")
    check_count("--epochs", epochs, "a number of training epochs")
    check_seed(seed)
    check_device(device)
    out_path = prepare_output(out, overwrite)
    inputs = out_path / "demo-inputs"
    print(f"[vision-lens demo] writing sklearn digits to {inputs / 'digits'}", file=sys.stderr)
    data = write_digits(inputs / "digits", seed=seed)
    with torch_threads(1):
        checkpoint = train_small_resnet(data, inputs / "resnet14-digits.th", epochs=epochs, seed=seed)
        # The digits model's ten outputs are the digit folders in sorted order, not the CIFAR-10 classes that a
        # cifar: model's outputs are named after: matched by position.
        opts = RunOptions(
            model="cifar:resnet14", data=str(data), out=str(out_path), weights=str(checkpoint), seed=seed, device=device,
            match_classes_by_position=True,
        )
        # The report says what this is: a smoke test on digits, not a result.
        return run(opts, out_path, report_note=f"vision-lens demo: sklearn digits and a ResNet-14 trained here for "
                                               f"{epochs} epochs, a smoke test of the pipeline, not a result")
