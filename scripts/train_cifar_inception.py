"""Train ``cifar:inceptionv1`` (GoogLeNet's topology for 32x32 inputs) on the CIFAR-10 train split, seeded.

    python scripts/train_cifar_inception.py --data ../shared/data/cifar10 --out inceptionv1-cifar10.th

The loss is GoogLeNet's: cross-entropy of the output plus 0.3 times that of each
auxiliary classifier (``aux1``, ``aux2``), so the auxiliary heads are trained and
can be reported beside the lenses. SGD with Nesterov momentum and a one-cycle
learning rate; random crops (padding 4) and horizontal flips, drawn from a seeded
generator on the decoded images held in memory (decoding the PNGs once instead of
every epoch). ``channels_last`` and, by default, bfloat16 autocast (``--precision``)
with float32 weights: about 0.45 s per step of 128 images on 2 CPU cores with
AVX512-BF16, 20 epochs in about an hour. At the end the
script prints the test accuracy and saves ``{"state_dict", "test_acc", "args"}``
(fp16 with ``--fp16``), which ``vision-lens run --model cifar:inceptionv1
--weights FILE`` loads. ``--max-steps`` stops early (a smoke test of the loop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch import Tensor
from torchvision import transforms
from tqdm.auto import tqdm

from vision_lens.adapters.cifar_inception import RANDOM_INIT_WIDTH, CifarInceptionV1
from vision_lens.adapters.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from vision_lens.data import ImageFolderSource, TransformedSubset
from vision_lens.options import resolve_device

AUX_WEIGHT = 0.3  # GoogLeNet's weight of each auxiliary loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 root with train/ and test/ ImageFolders")
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--width", type=float, default=RANDOM_INIT_WIDTH,
                        help=f"channel multiplier of GoogLeNet's widths (default {RANDOM_INIT_WIDTH})")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (default 2)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="autocast dtype of the forward pass; weights stay float32 (default bf16)")
    parser.add_argument("--fp16", action="store_true", help="save the weights as float16 (half the file size)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a smoke test)")
    return parser.parse_args(argv)


def decoded(source: ImageFolderSource, workers: int) -> tuple[Tensor, Tensor]:
    """Every image of ``source`` as one uint8 tensor (N, 3, 32, 32), with its labels."""
    data = TransformedSubset(source, np.arange(len(source)), transforms.PILToTensor())
    batches = list(tqdm(DataLoader(data, batch_size=1000, num_workers=workers), desc=f"decode {source.root}",
                        unit="batch", dynamic_ncols=True))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def normalised(images: Tensor) -> Tensor:
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in (CIFAR_MEAN, CIFAR_STD))
    return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)


def augmented(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random 32x32 crops of the zero-padded (4 px) images, half of them flipped: torchvision's recipe, batched."""
    n = len(images)
    padded = F.pad(images, (4, 4, 4, 4))
    dy, dx = (torch.randint(0, 9, (n, 1, 1), generator=generator) for _ in range(2))
    rows = (torch.arange(32).view(1, 32, 1) + dy).expand(n, 32, 32)
    cols = (torch.arange(32).view(1, 1, 32) + dx).expand(n, 32, 32)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip.view(n, 1, 1), cols.flip(2), cols)
    batch = torch.arange(n).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


@torch.no_grad()
def accuracy(model: CifarInceptionV1, images: Tensor, labels: Tensor, device: str) -> float:
    """Float32 test accuracy, as ``vision-lens run`` measures the baseline."""
    correct = 0
    for x, y in zip(images.split(1000), labels.split(1000)):
        correct += int((model(normalised(x.to(device))).argmax(-1).cpu() == y).sum())
    return correct / len(images)


def train(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    root = Path(args.data)
    train_source, test_source = ImageFolderSource.scan(root / "train"), ImageFolderSource.scan(root / "test")
    train_images, train_labels = decoded(train_source, args.workers)
    steps_per_epoch = len(train_images) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(train_images)} training images")
    model = CifarInceptionV1(len(train_source.classes), args.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    step = 0
    with tqdm(total=steps, desc="train cifar:inceptionv1", unit="step", dynamic_ncols=True) as bar:
        model.train()
        while step < steps:
            order = torch.randperm(len(train_images), generator=generator)
            for batch in order[: steps_per_epoch * args.batch_size].split(args.batch_size):
                images = normalised(augmented(train_images[batch], generator).to(device, non_blocking=True))
                labels = train_labels[batch].to(device, non_blocking=True)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    logits, aux = model.forward_train(images)
                    loss = F.cross_entropy(logits, labels) + AUX_WEIGHT * sum(F.cross_entropy(a, labels) for a in aux)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if step == steps:
                    break
    model.eval()
    test_acc = accuracy(model, *decoded(test_source, args.workers), device)
    state = {k: (v.half() if args.fp16 and v.is_floating_point() and k != "width" else v).cpu()
             for k, v in model.state_dict().items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "test_acc": test_acc, "args": vars(args)}, args.out)
    return {"test_acc": test_acc, "steps": step, "checkpoint": str(args.out)}


if __name__ == "__main__":
    print(json.dumps(train(parse_args(sys.argv[1:]))))
