"""Plotting helpers for lens results (seaborn/matplotlib).

Every function takes result folders (``str``/``Path``), ``aggregate_metrics.json``
files (ours or those written by ``tuned-lens eval``) or loaded
:class:`~vision_lens.artifacts.RunResults`, and returns the matplotlib Axes it
drew on, so figures can be composed and saved by the caller::

    from vision_lens import plotting

    ax = plotting.layerwise(["results/cifar10-resnet20", "results/cifar10-resnet32"], "acc", x="relative_depth")
    ax.figure.savefig("acc.png", dpi=150)

``prediction_trajectory`` instead takes a model adapter, a loaded lens and one
image, and runs the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
import numpy as np
import seaborn as sns
import torch
from PIL import Image

from .adapters import ModelAdapter
from .analysis import (
    ResultsLike,
    as_results,
    block_names,
    has_transfer,
    layer_values,
    penalty_by_distance,
    relative_depth,
    transfer_matrix,
)
from .capture import BlockRecorder
from .lenses import SavedLens

METRIC_LABELS = {
    "acc": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agree": "agreement with the model",
    "ce": "cross-entropy (bits)",
    "kl": "KL(model ‖ lens) (bits)",
    "entropy": "entropy (bits)",
}
LENS_LABELS = {
    "tuned": "tuned lens",
    "shared": "shared tuned lens",
    "logit": "logit lens",
    "linear_probe": "linear probe",
    "aux_head": "auxiliary classifier",
}
LENS_STYLES = {"tuned": "-", "shared": "-.", "logit": "--", "linear_probe": ":", "aux_head": "-"}
X_AXES = ("block", "relative_depth")
UNDEFINED_HATCH = {"facecolor": "#e0e0e0", "hatch": "///", "edgecolor": "#9e9e9e"}


def _hatch_undefined(ax: plt.Axes) -> None:
    # Masked heatmap cells are transparent, so the hatched axes background marks them.
    ax.patch.set_facecolor(UNDEFINED_HATCH["facecolor"])
    ax.patch.set_hatch(UNDEFINED_HATCH["hatch"])
    ax.patch.set_edgecolor(UNDEFINED_HATCH["edgecolor"])


def layerwise(
    results: ResultsLike | Iterable[ResultsLike],
    metric: str = "acc",
    x: str = "block",
    lens_types: Sequence[str] = ("tuned", "shared", "logit", "linear_probe", "aux_head"),
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """One line per model and lens type: ``metric`` at every block.

    ``x="block"`` labels the axis with block names (block indices when the
    runs' blocks differ); ``x="relative_depth"`` puts models of any depth on
    [0, 1] (0 = first lensed block, 1 = last). With one run the colour tells
    the lens; with several the colour tells the model and the line style the
    lens. Undefined values (e.g. the logit lens without an identity path) are
    gaps, not zeros.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    runs = as_results(results)
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    palette = sns.color_palette("colorblind")
    drawn = 0
    for r_i, run in enumerate(runs):
        for t_i, lens_type in enumerate(t for t in lens_types if t in run.aggregate):
            by_layer = run.aggregate[lens_type].get(metric)
            if not by_layer:
                continue
            y = layer_values(by_layer)
            xs = relative_depth(len(y)) if x == "relative_depth" else np.arange(len(y))
            label = LENS_LABELS.get(lens_type, lens_type) + (f" · {run.name}" if len(runs) > 1 else "")
            color = palette[(r_i if len(runs) > 1 else t_i) % len(palette)]
            ax.plot(xs, y, LENS_STYLES.get(lens_type, "-"), marker="o", ms=3.5, color=color, label=label)
            drawn += 1
        baseline = run.aggregate.get("baseline", {}).get(metric, {}).get("final")
        if baseline is not None and len(runs) == 1:  # None: no image has a model class (lucent)
            ax.axhline(baseline, color="grey", lw=1, ls="-.", label="model output")
    if not drawn:
        known = {m for run in runs for t in lens_types if t in run.aggregate for m in run.aggregate[t]}
        known = sorted(known - {"layer_transfer"})
        raise ValueError(f"no run has metric {metric!r} for lens types {list(lens_types)}; known metrics: {known}")
    if x == "relative_depth":
        ax.set_xlabel("relative depth (0 = first lensed block, 1 = last)")
        ax.set_xlim(-0.03, 1.03)
    elif len({tuple(r.block_names) for r in runs}) == 1 and runs[0].block_names:
        names = runs[0].block_names
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("block")
    else:
        ax.set_xlabel("block index")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if drawn > 4 else 8, frameon=False)
    return ax


def transfer_heatmap(
    results: ResultsLike, kind: str = "penalty", lens_type: str = "tuned", ax: plt.Axes | None = None
) -> plt.Axes:
    """Heatmap of the transfer matrix: train block on the rows, eval block on the columns.

    As in the tuned-lens paper's transfer figure. Undefined cells (no
    identity path between the blocks) are hatched grey, not zero.
    """
    (run,) = as_results(results)
    matrix = transfer_matrix(run, kind, lens_type)
    names = block_names(run, len(matrix))
    ax = ax or plt.subplots(figsize=(6.5, 5.5))[1]
    _hatch_undefined(ax)
    undefined = np.isnan(matrix)
    sns.heatmap(
        matrix,
        mask=undefined,
        # With every cell undefined (no labels, no paths) there is no range to read off.
        vmin=0 if undefined.all() else None,
        vmax=1 if undefined.all() else None,
        cmap="rocket_r" if kind != "kl" else "mako_r",
        xticklabels=names,
        yticklabels=names,
        square=True,
        cbar_kws={"label": f"{'transfer penalty' if kind == 'penalty' else kind.upper()} (bits)"},
        ax=ax,
    )
    ax.set_xlabel("evaluated on block j")
    ax.set_ylabel("translator of block i")
    ax.tick_params(labelsize=7)
    ax.tick_params(axis="y", rotation=0)
    titles = {"penalty": "transfer penalty ce[i][j] − ce[j][j]", "ce": "transfer CE", "kl": "transfer KL"}
    title = titles.get(kind, kind)
    ax.set_title(f"{run.name}: {title}" + (" (hatched: undefined)" if np.isnan(matrix).any() else ""), fontsize=10)
    return ax


def penalty_vs_distance(
    results: ResultsLike | Iterable[ResultsLike],
    lens_type: str = "tuned",
    relative: bool = False,
    normalise: bool = False,
    colors: Sequence | None = None,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Mean transfer penalty as a function of block distance ``|i - j|``, one line per model.

    If representations drift gradually (the claim tested), the penalty grows
    with distance. ``relative`` puts distance on [0, 1] (a fraction of the
    model's depth) so models of different depth share the axis; ``normalise``
    divides by the mean diagonal CE (see :func:`penalty_by_distance`).
    ``colors`` gives one colour per run (default: the colorblind palette).
    """
    runs = as_results(results)
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    colors = colors or sns.color_palette("colorblind", len(runs))
    for run, color in zip(runs, colors):
        means = penalty_by_distance(run, lens_type, normalise)
        xs = relative_depth(len(means)) if relative else np.arange(len(means))
        ax.plot(xs, means, "-o", ms=3.5, color=color, label=run.name)
    ax.set_xlabel("block distance |i − j| / (blocks − 1)" if relative else "block distance |i − j|")
    ax.set_ylabel("mean transfer penalty / mean diagonal CE" if normalise else "mean transfer penalty (bits)")
    if not relative:
        ax.xaxis.get_major_locator().set_params(integer=True)
    lens_name = LENS_LABELS.get(lens_type, lens_type)
    ax.set_title(f"{lens_name}: translator i on block j, averaged over |i − j|", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


@torch.no_grad()
def lens_probabilities(
    model: ModelAdapter, lens: SavedLens, image: Image.Image | str | Path
) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Class probabilities under ``lens`` at every block, and the model's own, for one image (one forward pass)."""
    image = Image.open(image) if isinstance(image, (str, Path)) else image
    x = model.transform(image.convert("RGB"))[None].to(model.device)
    with BlockRecorder(model, lens.layout) as recorder:
        output = model.logits(x)
    per_block = []
    for k, features in enumerate(recorder.pooled):
        logits = lens(features.float(), k)
        per_block.append(None if logits is None else logits.double().softmax(-1)[0].cpu())
    return per_block, output.double().softmax(-1)[0].cpu()


def prediction_trajectory(
    model: ModelAdapter, lens: SavedLens, image: Image.Image | str | Path, k: int = 5, ax: plt.Axes | None = None
) -> plt.Axes:
    """Top-``k`` classes and their probabilities under ``lens`` at every block, for one image.

    The vision analog of tuned-lens's ``PredictionTrajectory``: rows are the
    blocks in forward order and then the model's output, columns the ranks,
    each cell names the class and is coloured by its probability. ``model``
    is a :class:`~vision_lens.adapters.ModelAdapter`; ``lens`` a lens loaded
    for it, e.g. ``TunedLens.load(run_dir / "lenses" / "tuned", model)``.
    Blocks where the lens is undefined are hatched. Without ``ax`` the input
    image is drawn beside the heatmap.
    """
    image = Image.open(image) if isinstance(image, (str, Path)) else image
    per_block, output = lens_probabilities(model, lens, image)
    rows = per_block + [output]
    k = min(k, len(output))
    probs = np.full((len(rows), k), np.nan)
    names = np.full((len(rows), k), "", dtype=object)
    for r, p in enumerate(rows):
        if p is not None:
            top = p.topk(k)
            probs[r] = top.values.numpy()
            names[r] = [f"{model.class_names[c]}\n{v:.2f}" for c, v in zip(top.indices.tolist(), top.values.tolist())]
    labels = [b.name for b in model.blocks] + ["model output"]
    if ax is None:
        height = 0.42 * len(rows) + 1.4
        fig, (image_ax, ax) = plt.subplots(
            1, 2, figsize=(1.3 * k + 4.5, height), gridspec_kw={"width_ratios": [1.1, 0.9 * k + 1.6]}
        )
        image_ax.imshow(image.convert("RGB"))
        image_ax.set_title("input", fontsize=9)
        image_ax.axis("off")
    _hatch_undefined(ax)
    sns.heatmap(
        probs, mask=np.isnan(probs), annot=names, fmt="", annot_kws={"fontsize": 7}, vmin=0, vmax=1, cmap="Blues",
        xticklabels=[f"top {r + 1}" for r in range(k)], yticklabels=labels, linewidths=0.5, linecolor="white",
        cbar_kws={"label": "probability"}, ax=ax,
    )
    for r, p in enumerate(rows):
        if p is None:
            ax.text(k / 2, r + 0.5, "undefined: no identity path", ha="center", va="center", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.axhline(len(per_block), color="black", lw=1.5)  # separates the lens rows from the model's own output
    ax.tick_params(axis="y", labelsize=7, rotation=0)
    ax.tick_params(axis="x", labelsize=8, top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title(f"{model.name}: {LENS_LABELS.get(lens.lens_type, lens.lens_type)}, top-{k} classes at every block",
                 fontsize=10)
    return ax


def save_run_figures(results: ResultsLike, out: str | Path) -> list[Path]:
    """The two figures of a run bundle: ``layerwise.png`` (accuracy and CE) and ``transfer_penalty.png``."""
    (run,) = as_results(results)
    out = Path(out)
    # Figure objects, not pyplot: writing files never touches the user's backend or open figures.
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    layerwise(run, "acc", ax=axes[0])
    layerwise(run, "ce", ax=axes[1])
    fig.suptitle(f"{run.name}: lenses at every block (eval split)")
    fig.tight_layout()
    paths = [out / "layerwise.png"]
    fig.savefig(paths[0], dpi=150)
    if has_transfer(run):
        fig = Figure(figsize=(7, 6))
        transfer_heatmap(run, "penalty", ax=fig.subplots())
        fig.tight_layout()
        paths.append(out / "transfer_penalty.png")
        fig.savefig(paths[-1], dpi=150)
    return paths
