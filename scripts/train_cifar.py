"""Train a CIFAR-10 model of the ``cifar:`` family here, seeded and resumable: one loop for every architecture.

    python scripts/train_cifar.py --arch preact_resnet20 --data ../shared/data/cifar10 \\
        --out results/checkpoints/cifar10-preact-resnet20.th --fp16

Architectures and their recipes (``RECIPES``; ``--epochs`` and ``--lr`` override):

* ``inceptionv1`` (``cifar:inceptionv1``, width ``--width``): GoogLeNet's loss, the
  output's cross-entropy plus 0.3 times that of each auxiliary classifier, so the
  auxiliary heads are trained and can be reported beside the lenses. SGD with
  Nesterov momentum 0.9, weight decay 5e-4, one-cycle learning rate peaking at 0.1.
* ``preact_resnet20`` (any ``preact_resnet<6n+2>``) and ``plain20`` (any ``plain<6n+2>``, ResNet-20 without
  shortcuts): the same SGD recipe, 80 epochs, one recipe for both so that they differ only in the network.
* ``vit`` (``cifar:vit``): AdamW (weight decay 0.05), one-cycle learning rate
  peaking at 1e-3, label smoothing 0.1: the usual recipe for ViTs trained from
  scratch on small data sets.

Every recipe draws random crops (padding 4) and horizontal flips from a seeded
generator, on the decoded images held in memory (the PNGs are decoded once, not
every epoch), with ``channels_last`` and, with ``--precision bf16``, bfloat16
autocast (float32 weights; fast only on CPUs with AVX512-BF16 or AMX, and on GPUs).

**Resumable.** After every epoch the model, the optimiser, the schedule, the
generators and the seconds spent so far are written (atomically) to
``--checkpoint-dir``; ``--resume`` continues from the last one, and reaches the
same weights as an uninterrupted run. Without ``--resume`` an existing
checkpoint is an error, so that no run silently restarts another.

At the end the script measures the float32 test accuracy of the weights as it stores
them (as ``vision-lens run`` measures the baseline), saves ``{"state_dict", "test_acc", "args"}`` (fp16 with
``--fp16``) at ``--out``, which ``vision-lens run --model cifar:ARCH --weights
FILE`` loads, and writes the record ``--out`` with ``.json``: the command, test
accuracy, steps, epochs, seconds, machine and the file's size and sha256.
``--max-steps`` stops early (a smoke test of the loop).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm.auto import tqdm

from vision_lens.adapters.cifar_inception import RANDOM_INIT_WIDTH
from vision_lens.adapters.base import create_adapter
from vision_lens.adapters.zoo import CIFAR
from vision_lens.data import ImageFolderSource, TransformedSubset
from vision_lens.options import resolve_device

AUX_WEIGHT = 0.3  # GoogLeNet's weight of each auxiliary loss


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd" (Nesterov, momentum 0.9) or "adamw"
    lr: float  # peak of the one-cycle schedule
    weight_decay: float
    epochs: int
    label_smoothing: float = 0.0


CIFAR_RESNET_RECIPE = Recipe("sgd", 0.1, 5e-4, 80)
RECIPES = {
    "inceptionv1": Recipe("sgd", 0.1, 5e-4, 20),
    "preact_resnet": CIFAR_RESNET_RECIPE,
    "plain": CIFAR_RESNET_RECIPE,
    "vit": Recipe("adamw", 1e-3, 0.05, 15, label_smoothing=0.1),  # 15 epochs: 2.6 h on 2 CPU cores
}


def recipe_of(arch: str) -> Recipe:
    key = next((k for k in ("preact_resnet", "plain") if arch.startswith(k)), arch)
    if key not in RECIPES:
        raise SystemExit(f"--arch {arch}: choose inceptionv1, vit, preact_resnet<6n+2> (e.g. preact_resnet20) or "
                         "plain<6n+2> (e.g. plain20)")
    return RECIPES[key]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help="inceptionv1, vit, preact_resnet<6n+2> or plain<6n+2>")
    parser.add_argument("--data", required=True, help="CIFAR-10 root with train/ and test/ ImageFolders")
    parser.add_argument("--out", required=True, help="checkpoint file to write (its record: the same name, .json)")
    parser.add_argument("--width", type=float, default=RANDOM_INIT_WIDTH,
                        help=f"inceptionv1 only: channel multiplier of GoogLeNet's widths (default {RANDOM_INIT_WIDTH})")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers for decoding (default 2)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32",
                        help="autocast dtype of the forward pass; weights stay float32 (default fp32)")
    parser.add_argument("--fp16", action="store_true", help="save the weights as float16 (half the file size)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where the per-epoch checkpoint lives (default: <cache>/training/<arch>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a smoke test)")
    args = parser.parse_args(argv)
    recipe = recipe_of(args.arch)
    args.epochs = recipe.epochs if args.epochs is None else args.epochs
    args.lr = recipe.lr if args.lr is None else args.lr
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.checkpoint_dir is None:
        from vision_lens.options import default_cache_dir

        args.checkpoint_dir = str(Path(default_cache_dir()) / "training" / f"{args.arch}-seed{args.seed}")
    return args


def decoded(source: ImageFolderSource, workers: int) -> tuple[Tensor, Tensor]:
    """Every image of ``source`` as one uint8 tensor (N, 3, 32, 32), with its labels."""
    data = TransformedSubset(source, np.arange(len(source)), transforms.PILToTensor())
    batches = list(tqdm(DataLoader(data, batch_size=1000, num_workers=workers), desc=f"decode {source.root}",
                        unit="batch", dynamic_ncols=True))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def normalised(images: Tensor) -> Tensor:
    """As the cifar: models' registered preprocessing (ImageNet's mean and std) normalises them."""
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in (CIFAR.mean, CIFAR.std))
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
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: str) -> float:
    """Float32 test accuracy, as ``vision-lens run`` measures the baseline."""
    correct = 0
    for x, y in zip(images.split(1000), labels.split(1000)):
        correct += int((model(normalised(x.to(device))).argmax(-1).cpu() == y).sum())
    return correct / len(images)


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The random-init network of ``cifar:ARCH`` (the inceptionv1 at ``--width``)."""
    if args.arch == "inceptionv1":
        from vision_lens.adapters.cifar_inception import CifarInceptionV1

        return CifarInceptionV1(num_classes, args.width)
    return create_adapter(f"cifar:{args.arch}", weights="random", seed=args.seed, num_classes=num_classes).model


def loss_of(model: nn.Module, images: Tensor, labels: Tensor, recipe: Recipe) -> Tensor:
    if hasattr(model, "forward_train"):  # GoogLeNet's auxiliary classifiers
        logits, aux = model.forward_train(images)
        return F.cross_entropy(logits, labels) + AUX_WEIGHT * sum(F.cross_entropy(a, labels) for a in aux)
    return F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)


def optimizer_of(model: nn.Module, args: argparse.Namespace, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=recipe.weight_decay,
                               nesterov=True)
    # AdamW's decay spares biases, norms and embeddings (1-d parameters, and the class/position tokens).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(("_token", "pos_embed"))]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(("_token", "pos_embed")))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=args.lr)


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Arguments that change what is trained: a checkpoint only resumes under the same ones.
TRAINING_ARGS = ("arch", "width", "epochs", "batch_size", "lr", "seed", "precision")


def train(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    recipe = recipe_of(args.arch)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    root = Path(args.data)
    train_source, test_source = ImageFolderSource.scan(root / "train"), ImageFolderSource.scan(root / "test")
    train_images, train_labels = decoded(train_source, args.workers)
    steps_per_epoch = len(train_images) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(train_images)} training images")
    model = build_model(args, len(train_source.classes)).to(device, memory_format=torch.channels_last).train()
    model.requires_grad_(True)
    optimizer = optimizer_of(model, args, recipe)
    steps = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    checkpoint = Path(args.checkpoint_dir) / "last.pt"
    settings = {k: getattr(args, k) for k in TRAINING_ARGS} | {"max_steps": args.max_steps}
    step, seconds, history = 0, 0.0, []
    if checkpoint.exists() and not args.resume:
        raise SystemExit(f"{checkpoint} holds a run of this training already: pass --resume to continue it, or "
                         f"delete it (or pass another --checkpoint-dir) to start again")
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["settings"] != settings:
            raise SystemExit(f"{checkpoint} was trained with {state['settings']}, not {settings}: pass the same "
                             f"arguments to --resume it, or another --checkpoint-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
    with tqdm(total=steps, initial=step, desc=f"train cifar:{args.arch}", unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            start, losses = time.perf_counter(), []
            order = torch.randperm(len(train_images), generator=generator)
            for batch in order[: steps_per_epoch * args.batch_size].split(args.batch_size):
                images = normalised(augmented(train_images[batch], generator).to(device, non_blocking=True))
                labels = train_labels[batch].to(device, non_blocking=True)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    loss = loss_of(model, images, labels, recipe)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.detach())
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if step == steps:
                    break
            seconds += time.perf_counter() - start
            history.append({"epoch": len(history) + 1, "step": step, "train_loss": float(torch.stack(losses).mean()),
                            "seconds": round(seconds, 1)})
            _save_atomic({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "schedule": schedule.state_dict(), "generator": generator.get_state(),
                          "torch_rng": torch.get_rng_state(), "step": step, "seconds": seconds,
                          "history": history}, checkpoint)
    model.eval()
    state = {k: (v.half() if args.fp16 and v.is_floating_point() and k != "width" else v).cpu()
             for k, v in model.state_dict().items()}
    # The accuracy of the weights as stored (float16 with --fp16), which `vision-lens run` measures as the baseline:
    # scored before the rounding, the records differed from the run folders in the fourth decimal.
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    test_acc = accuracy(model, *decoded(test_source, args.workers), device)
    out = Path(args.out)
    _save_atomic({"state_dict": state, "test_acc": test_acc, "args": vars(args)}, out)
    record = {
        "command": "python scripts/train_cifar.py " + shlex.join(sys.argv[1:]) if __name__ == "__main__" else None,
        "arch": f"cifar:{args.arch}", "recipe": vars(recipe) | {"lr": args.lr, "epochs": args.epochs},
        "test_acc": test_acc, "steps": step, "epochs": len(history), "seconds": round(seconds),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {device}",
        "history": history, "bytes": out.stat().st_size, "sha256": _sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return {"test_acc": test_acc, "steps": step, "checkpoint": str(out)}


if __name__ == "__main__":
    print(json.dumps(train(parse_args(sys.argv[1:]))))
