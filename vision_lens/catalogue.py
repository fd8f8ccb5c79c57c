"""The models ``vision-lens models`` lists: every family's architectures, with blocks, readout and weights.

Kept as plain data (no torch import), so that listing answers at once;
``tests/test_catalogue.py`` builds every entry and checks its block count.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str  # family:arch, as --model takes it
    blocks: int  # lensed blocks
    readout: str  # what a lens reads, through what unembedding
    weights: str  # where --weights pretrained comes from, or how to get weights


_CIFAR_RESNET = "each block's map averaged (option-A shortcut paths); linear head"
_PUBLISHED_CIFAR = "published (akamaster/pytorch_resnet_cifar10), by name"
_TRAINED_HERE = "trained here: results/checkpoints/{} (scripts/train_cifar.py --arch {}); or --weights random"
_TV_RESNET = "stem + every layerS.B, map averaged (downsample shortcut paths); linear head"
_VIT = "embed + every blocks.N, the class token; final LayerNorm + head"

CATALOGUE: tuple[ModelEntry, ...] = (
    *(ModelEntry(f"cifar:resnet{d}", 1 + 3 * ((d - 2) // 6), _CIFAR_RESNET, _PUBLISHED_CIFAR)
      for d in (20, 32, 44, 56, 110)),
    ModelEntry("cifar:preact_resnet20", 10, "the pre-activation stream averaged (option-A paths); LayerNorm + linear",
               _TRAINED_HERE.format("cifar10-preact-resnet20.th", "preact_resnet20")),
    ModelEntry("cifar:plain20", 10, "ResNet-20 without shortcuts, each block's map averaged (option-A channel "
               "embedding, not the network's own path); linear head",
               "not yet trained here: scripts/train_cifar.py --arch plain20; or --weights random"),
    ModelEntry("cifar:inceptionv1", 12, "each block's map averaged; only inception5b has a path; aux heads reported",
               _TRAINED_HERE.format("cifar10-inceptionv1.th", "inceptionv1")),
    ModelEntry("cifar:vit", 7, _VIT, _TRAINED_HERE.format("cifar10-vit.th", "vit")),
    *(ModelEntry(f"torchvision:resnet{d}", b, _TV_RESNET, "torchvision DEFAULT weights, by name")
      for d, b in ((18, 9), (34, 17), (50, 17), (101, 34), (152, 51))),
    ModelEntry("torchvision:googlenet", 12, "each block's map averaged; only inception5b has a path; aux heads",
               "torchvision GoogLeNet_Weights.IMAGENET1K_V1, by name"),
    ModelEntry("timm:resnet50", 17, _TV_RESNET + " (any timm model in this layout: timm:<name>)",
               "timm's hub, by name (timm.create_model(name, pretrained=True))"),
    ModelEntry("timm:vit_small_patch16_224", 13, _VIT + " (any class-token timm ViT: timm:vit_*, timm:deit_*)",
               "timm's hub, by name"),
    ModelEntry("lucent:inceptionv1", 12, "Lucid's blocks conv2d0 .. mixed5b, map averaged; only mixed5b has a path",
               "lucent's published inception5h.pth, by name"),
)
FAMILIES = ("cifar", "torchvision", "timm", "lucent")


def table() -> str:
    """The catalogue as aligned text, one model a line."""
    rows = [("--model", "blocks", "readout", "weights")] + [(e.name, str(e.blocks), e.readout, e.weights)
                                                            for e in CATALOGUE]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}\n{'':<{widths[0] + widths[1] + 4}}{r[3]}"
                     if i else f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]} / {r[3]}"
                     for i, r in enumerate(rows))


def markdown() -> str:
    """The catalogue as a markdown table, consecutive models that differ only in depth on one row (the README's)."""
    rows: list[list[ModelEntry]] = []
    for entry in CATALOGUE:
        last = rows[-1][-1] if rows else None
        if last and (last.readout, last.weights) == (entry.readout, entry.weights):
            rows[-1].append(entry)
        else:
            rows.append([entry])
    lines = ["| `--model` | blocks | what a lens reads; unembedding | weights |", "|---|---|---|---|"]
    for group in rows:
        names = ", ".join(f"`{e.name}`" for e in group)
        blocks = ", ".join(str(e.blocks) for e in group)
        lines.append(f"| {names} | {blocks} | {_escaped(group[0].readout)} | {_escaped(group[0].weights)} |")
    return "\n".join(lines)


def _escaped(text: str) -> str:
    """``text`` as markdown shows it literally: ``timm:vit_*`` is no emphasis, ``<name>`` no HTML tag."""
    return text.replace("*", "\\*").replace("<", "&lt;")


def near_matches(name: str, candidates: list[str] | None = None) -> list[str]:
    """Catalogued names (or ``candidates``) close to ``name``, best first."""
    return difflib.get_close_matches(name, candidates or [e.name for e in CATALOGUE], n=5, cutoff=0.6)
