"""Train ``cifar:inceptionv1`` (GoogLeNet's topology for 32x32 inputs) on the CIFAR-10 train split, seeded.

    python scripts/train_cifar_inception.py --data ../shared/data/cifar10 --out inceptionv1-cifar10.th

The loss is GoogLeNet's: cross-entropy of the output plus 0.3 times that of each
auxiliary classifier (``aux1``, ``aux2``), so the auxiliary heads are trained and
can be reported beside the lenses. SGD with Nesterov momentum and a one-cycle
learning rate; random crops (padding 4) and horizontal flips. At the end the
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
from torchvision import transforms
from tqdm.auto import tqdm

from vision_lens.adapters.cifar_inception import CifarInceptionV1
from vision_lens.adapters.cifar_resnet import CIFAR_MEAN, CIFAR_STD, cifar_transform
from vision_lens.data import ImageFolderSource, TransformedSubset
from vision_lens.options import resolve_device

AUX_WEIGHT = 0.3  # GoogLeNet's weight of each auxiliary loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 root with train/ and test/ ImageFolders")
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--width", type=float, default=0.5, help="channel multiplier of GoogLeNet's widths (default 0.5)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (default 2)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    parser.add_argument("--fp16", action="store_true", help="save the weights as float16 (half the file size)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a smoke test)")
    return parser.parse_args(argv)


@torch.no_grad()
def accuracy(model: CifarInceptionV1, source: ImageFolderSource, device: str, batch_size: int, workers: int) -> float:
    data = TransformedSubset(source, np.arange(len(source)), cifar_transform())
    correct = 0
    for images, labels in DataLoader(data, batch_size=4 * batch_size, num_workers=workers):
        correct += int((model(images.to(device)).argmax(-1).cpu() == labels).sum())
    return correct / len(source)


def train(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    root = Path(args.data)
    train_source, test_source = ImageFolderSource.scan(root / "train"), ImageFolderSource.scan(root / "test")
    augment = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    loader = DataLoader(
        TransformedSubset(train_source, np.arange(len(train_source)), augment), batch_size=args.batch_size,
        shuffle=True, drop_last=True, num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
        pin_memory=device.startswith("cuda"),
    )
    model = CifarInceptionV1(len(train_source.classes), args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * len(loader) if args.max_steps is None else min(args.max_steps, args.epochs * len(loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    step = 0
    with tqdm(total=steps, desc="train cifar:inceptionv1", unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            model.train()
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                logits, aux = model.forward_train(images)
                loss = F.cross_entropy(logits, labels) + AUX_WEIGHT * sum(F.cross_entropy(a, labels) for a in aux)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step == steps:
                    break
    model.eval()
    test_acc = accuracy(model, test_source, device, args.batch_size, args.workers)
    state = {k: (v.half() if args.fp16 and v.is_floating_point() and k != "width" else v).cpu()
             for k, v in model.state_dict().items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "test_acc": test_acc, "args": vars(args)}, args.out)
    return {"test_acc": test_acc, "steps": step, "checkpoint": str(args.out)}


if __name__ == "__main__":
    print(json.dumps(train(parse_args(sys.argv[1:]))))
