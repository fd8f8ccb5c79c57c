"""Plotting helpers for lens results (seaborn and matplotlib).

Every function takes result folders (``str``/``Path``), ``aggregate_metrics.json``
files (ours or those written by ``tuned-lens eval``) or loaded
:class:`~vision_lens.artifacts.RunResults`, and returns the matplotlib Axes it
drew on, so figures can be composed and saved by the caller::

    from vision_lens import plotting

    ax = plotting.layerwise(["results/cifar10-resnet20", "results/cifar10-resnet32"], "acc", x="relative_depth")
    ax.figure.savefig("acc.png", dpi=150)

``prediction_trajectory`` instead takes a model adapter, a loaded lens and one
image, and runs the model.

Importing this module loads only matplotlib's ``Figure`` machinery. seaborn
(which pulls in pandas and scipy.stats) is imported at the first drawing that
needs it, and pyplot when a function is called without ``ax`` (to give it a
figure of its own), so that importing the pipeline stays cheap and a
notebook's backend is left as it was.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from .adapters import ModelAdapter
from .artifacts import FRONTIER_FILE, LAYERWISE_FIGURE, TRANSFER_FIGURE, RunFolderError, RunResults
from .files import write_bytes_atomic
from .analysis import (
    ResultsLike,
    as_results,
    block_names,
    chance_accuracy,
    defined_transfer,
    eval_description,
    has_transfer,
    past_embedding,
    interval_values,
    layer_values,
    penalty_profiles,
    relative_depth,
    reported_unit,
    stage_boundaries,
    summarise_transfer,
    transfer_matrix,
)
from .capture import BlockRecorder
from .lens_kinds import lens_kinds
from .lenses import SavedLens

METRIC_LABELS = {
    "acc": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agree": "agreement with the model",
    "ce": "cross-entropy",
    "kl": "KL(model ‖ lens)",
    "entropy": "entropy",
}
BITS_METRICS = ("ce", "kl", "entropy")
# Read-outs of aggregate_metrics.json that are no lens kind: the model's auxiliary classifiers (Inception's).
READOUTS = {"aux_head": ("auxiliary classifier", "-")}
X_AXES = ("block", "relative_depth")
UNDEFINED_HATCH = {"facecolor": "#e0e0e0", "hatch": "///", "edgecolor": "#9e9e9e"}
HEATMAP_CLIP_PERCENTILE = 95
HEATMAP_MAX_ANNOTATED = 24  # blocks; beyond that cell values no longer fit
# The heatmaps' colour maps (seaborn's): dark for large penalties, and another for KL so that the two never
# read alike.
HEATMAP_CMAPS = {"kl": "mako_r"}
HEATMAP_CMAP = "rocket_r"
PAIR_GROUP_STYLES = {"all": ("-", "o", ""), "within_stage": ("-", "o", " · within stage"),
                     "across_stage": ("--", "s", " · across stages")}


def lens_label(name: str) -> str:
    """A lens kind's (or read-out's) name in legends and tables, as the lens-kind registry declares it."""
    if name in READOUTS:
        return READOUTS[name][0]
    return next((kind.label for kind in lens_kinds() if kind.name == name), name)


def lens_style(name: str):
    """A lens kind's (or read-out's) line style, as the registry declares it."""
    if name in READOUTS:
        return READOUTS[name][1]
    return next((kind.style for kind in lens_kinds() if kind.name == name), "-")


def default_lens_types() -> list[str]:
    """What :func:`layerwise` draws by default: every registered kind, then the read-outs."""
    return [kind.name for kind in lens_kinds()] + list(READOUTS)


def seaborn():
    """The seaborn module, imported at the first drawing (see the module's docstring)."""
    import seaborn as sns

    return sns


def palette(n: int | None = None) -> list[tuple[float, float, float]]:
    """seaborn's colorblind palette as RGB; with ``n``, ``n`` colours, cycling."""
    return seaborn().color_palette("colorblind", n)


def new_axes(**subplots):
    """``pyplot.subplots(**subplots)``: a figure for a caller that passed no Axes (pyplot is imported only here,
    so that writing a run's files never loads it)."""
    import matplotlib.pyplot as plt

    return plt.subplots(**subplots)


def _out_of_layout(texts) -> None:
    """Cell annotations lie inside their axes, so tight_layout need not measure them (a third of the time
    save_run_figures spent)."""
    for text in texts:
        text.set_in_layout(False)


def metric_label(metric: str, runs: Sequence[RunResults]) -> str:
    """The metric's name, with the runs' unit for the metrics in bits (``bits per image`` for ours)."""
    label = METRIC_LABELS.get(metric, metric)
    if metric in BITS_METRICS:
        label += f" ({' or '.join(sorted({reported_unit(r) for r in runs}))})"
    return label


def _hatch_undefined(ax: Axes) -> None:
    # Masked heatmap cells are transparent, so the hatched axes background marks them.
    ax.patch.set_facecolor(UNDEFINED_HATCH["facecolor"])
    ax.patch.set_hatch(UNDEFINED_HATCH["hatch"])
    ax.patch.set_edgecolor(UNDEFINED_HATCH["edgecolor"])


def layerwise(
    results: ResultsLike | Iterable[ResultsLike],
    metric: str = "acc",
    x: str = "block",
    lens_types: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One line per model and lens type (default: every registered kind and the auxiliary classifiers): ``metric``
    at every block.

    ``x="block"`` labels the axis with block names (block indices when the
    runs' blocks differ); ``x="relative_depth"`` puts models of any depth on
    [0, 1] (0 = first lensed block, 1 = last). With one run the colour tells
    the lens; with several the colour tells the model and the line style the
    lens. Undefined values (e.g. the logit lens without an identity path) are
    gaps, not zeros. Where a run has bootstrap intervals
    (``aggregate_metrics_ci.json``), each line gets its shaded 95 % band. For
    ``acc`` and ``top5`` chance (1/classes, resp. 5/classes, from run.json) is a
    dotted line; with one run the x label names the eval split and its size.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    runs = as_results(results)
    lens_types = default_lens_types() if lens_types is None else lens_types
    ax = ax or new_axes(figsize=(7, 4))[1]
    colours = palette()
    drawn, banded = 0, False
    for r_i, run in enumerate(runs):
        for t_i, lens_type in enumerate(t for t in lens_types if t in run.aggregate):
            by_layer = run.aggregate[lens_type].get(metric)
            if not by_layer:
                continue
            y = layer_values(by_layer)
            xs = relative_depth(len(y)) if x == "relative_depth" else np.arange(len(y))
            label = lens_label(lens_type) + (f" · {run.name}" if len(runs) > 1 else "")
            color = colours[(r_i if len(runs) > 1 else t_i) % len(colours)]
            ax.plot(xs, y, ls=lens_style(lens_type), marker="o", ms=3.5, color=color, label=label)
            bounds = (run.intervals or {}).get(lens_type, {}).get(metric)
            if bounds:
                low, high = interval_values(bounds)
                ax.fill_between(xs, low, high, where=~np.isnan(low), color=color, alpha=0.2, lw=0,
                                label="_nolegend_" if banded else "95% bootstrap interval")
                banded = True
            drawn += 1
        baseline = run.aggregate.get("baseline", {}).get(metric, {}).get("final")
        if baseline is not None and len(runs) == 1:  # None: no image has a model class (lucent)
            ax.axhline(baseline, color="grey", lw=1, ls="-.", label="model output")
    chances = {chance_accuracy(run) for run in runs} - {None}
    for chance in sorted(chances) if metric in ("acc", "top5") else ():
        guesses = 5 if metric == "top5" else 1
        ax.axhline(min(1.0, guesses * chance), color="black", lw=1, ls=":",
                   label=f"chance ({guesses}/{round(1 / chance)})")
    if not drawn:
        known = {m for run in runs for t in lens_types if t in run.aggregate for m in run.aggregate[t]}
        known = sorted(known - {"layer_transfer"})
        raise RunFolderError(f"no run has metric {metric!r} for lens types {list(lens_types)}; known metrics: {known}")
    if x == "relative_depth":
        ax.set_xlabel("relative depth (0 = first lensed block, 1 = last)")
        ax.set_xlim(-0.03, 1.03)
    elif len({tuple(r.block_names) for r in runs}) == 1 and runs[0].block_names:
        names = runs[0].block_names
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("block")
    else:
        ax.set_xlabel("block index")
    evaluated = eval_description(runs[0]) if len(runs) == 1 else None
    if evaluated:
        ax.set_xlabel(f"{ax.get_xlabel()} (evaluated on the {evaluated})")
    ax.set_ylabel(metric_label(metric, runs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if drawn > 4 else 8, frameon=False)
    return ax


def transfer_heatmap(
    results: ResultsLike, kind: str = "penalty", lens_type: str = "tuned", ax: Axes | None = None
) -> Axes:
    """Heatmap of the transfer matrix: train block on the rows, eval block on the columns.

    As in the tuned-lens paper's transfer figure. Undefined cells (no
    identity path between the blocks) are hatched grey, not zero. The colour
    scale stops at the 95th percentile of the defined cells (the colour bar is
    extended when larger cells exist), so a few extreme cells such as the
    ``stem`` row do not wash out the rest; the printed values (up to 24
    blocks) stay exact. Lines mark the stage boundaries (where the run's
    block stages change; runs with block names only).
    """
    (run,) = as_results(results)
    matrix = transfer_matrix(run, kind, lens_type)
    names = block_names(run, len(matrix))
    ax = ax or new_axes(figsize=(6.5, 5.5))[1]
    _hatch_undefined(ax)
    undefined = np.isnan(matrix)
    # With every cell undefined (no labels, no paths) there is no range to read off.
    defined = matrix[~undefined] if not undefined.all() else np.array([0.0, 1.0])
    vmax = float(np.percentile(defined, HEATMAP_CLIP_PERCENTILE))
    clipped = defined.max() > vmax
    name = "transfer penalty" if kind == "penalty" else kind.upper()
    annotate = len(matrix) <= HEATMAP_MAX_ANNOTATED
    seaborn().heatmap(
        matrix, mask=undefined, vmin=min(0.0, float(defined.min())), vmax=vmax,
        cmap=HEATMAP_CMAPS.get(kind, HEATMAP_CMAP), annot=annotate, fmt=".1f",
        annot_kws={"fontsize": min(7.0, max(4.0, 70 / len(matrix)))}, xticklabels=names, yticklabels=names,
        square=True, ax=ax,
        cbar_kws={"label": f"{name} ({reported_unit(run)})"
                           + (f"\ncolour clipped at the {HEATMAP_CLIP_PERCENTILE}th percentile" if clipped else ""),
                  "extend": "max" if clipped else "neither"},
    )
    _out_of_layout(ax.texts)
    for k in stage_boundaries(run):
        ax.axhline(k, color="black", lw=0.8)
        ax.axvline(k, color="black", lw=0.8)
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
    stages: bool = False,
    pair_counts: bool = True,
    colors: Sequence | None = None,
    ax: Axes | None = None,
    past_embedding_only: bool = False,
) -> Axes:
    """Mean transfer penalty as a function of block distance ``|i - j|``, one line per model.

    If representations drift gradually (the claim tested), the penalty grows
    with distance. ``relative`` puts distance on [0, 1] (a fraction of the
    model's depth) so models of different depth share the axis; ``normalise``
    divides by the mean diagonal CE (see :func:`~vision_lens.analysis.penalty_profiles`).
    ``stages`` draws two lines per run instead: pairs within one stage (solid)
    and across stages (dashed). Where a run has bootstrap intervals
    (``aggregate_metrics_ci.json``) and ``normalise`` is off, error bars show
    the 95 % interval of each mean. ``pair_counts`` draws, as pale bars on a
    right-hand axis, how many block pairs each mean averages. ``colors`` gives
    one colour per run (default: the colorblind palette). ``past_embedding_only`` leaves
    out the pairs of a transformer's embedding layer (:func:`~vision_lens.analysis.past_embedding`: a class-token
    ViT's ``embed``, a language model's ``layer_0``).
    """
    runs = as_results(results)
    ax = ax or new_axes(figsize=(6, 4))[1]
    colors = colors or palette(len(runs))
    drawn = []  # (profile, colour) for the pair-count bars
    for run, color in zip(runs, colors):
        if not defined_transfer(run, lens_type):  # no translator reads another block: nothing to draw
            continue
        profiles = penalty_profiles(run, lens_type, relative, normalise,
                                    blocks=past_embedding(run) if past_embedding_only else None)
        groups = [g for g in ("within_stage", "across_stage") if g in profiles] if stages else []
        for group in groups or ["all"]:
            profile = profiles[group]
            line_style, marker, suffix = PAIR_GROUP_STYLES[group]
            ax.plot(profile.distance, profile.mean, ls=line_style, marker=marker, ms=3.5, color=color,
                    label=run.name + suffix)
            if profile.low is not None:
                # The interval itself, low to high: a percentile interval need not be centred on the mean.
                shown = ~np.isnan(profile.low) & ~np.isnan(profile.mean)
                ax.vlines(profile.distance[shown], profile.low[shown], profile.high[shown], color=color, lw=1)
            drawn.append((profile, color, line_style))
    ax.set_xlabel("block distance |i − j| / (blocks − 1)" if relative else "block distance |i − j|")
    ax.set_ylabel("mean transfer penalty / mean diagonal CE" if normalise
                  else f"mean transfer penalty ({' or '.join(sorted({reported_unit(r) for r in runs}))})")
    if not relative:
        ax.xaxis.get_major_locator().set_params(integer=True)
    lens_name = lens_label(lens_type)
    ax.set_title(f"Extra cross-entropy when block i's translator ({lens_name}) reads block j", fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, frameon=False)
    if pair_counts:
        _pair_count_bars(ax, drawn)
    return ax


def _pair_count_bars(ax: Axes, drawn: list) -> Axes:
    """Pale bars of the number of block pairs behind each mean, on a right-hand axis labelled ``block pairs``.

    The bars fill the lowest quarter of the plot, behind the lines.
    """
    counts_ax = ax.twinx()
    counts_ax.set_label("block pairs")
    ax.set_zorder(counts_ax.get_zorder() + 1)  # lines over the bars
    ax.patch.set_visible(False)
    for n, (profile, color, line_style) in enumerate(drawn):
        step = np.diff(profile.distance[:2])[0] if len(profile.distance) > 1 else 1.0
        width = 0.8 * step / len(drawn)
        offset = (n - (len(drawn) - 1) / 2) * width
        counts_ax.bar(profile.distance + offset, profile.pairs, width=width, color=color, alpha=0.25,
                      ls=line_style, edgecolor=color, lw=0.5)
    highest = max((int(p.pairs.max()) for p, _, _ in drawn), default=1)
    counts_ax.set_ylim(0, 4 * max(highest, 1))
    counts_ax.set_yticks([0, highest])
    counts_ax.set_ylabel("block pairs (bars)", fontsize=8)
    counts_ax.tick_params(labelsize=8)
    return counts_ax


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


def image_folder_label(path: str | Path) -> str | None:
    """The class of an image at ``root/<class>/<file>`` of an ImageFolder: the folder's name, when ``root`` holds
    only folders, two or more (the class folders); None otherwise."""
    folder = Path(path).resolve().parent
    entries = list(folder.parent.iterdir())
    return folder.name if len(entries) >= 2 and all(e.is_dir() for e in entries) else None


def prediction_trajectory(
    model: ModelAdapter,
    lens: SavedLens,
    image: Image.Image | str | Path,
    k: int = 5,
    label: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Top-``k`` classes and their probabilities under ``lens`` at every block, for one image.

    The vision analog of tuned-lens's ``PredictionTrajectory``: rows are the
    blocks in forward order and then the model's output, columns the ranks,
    each cell names the class and is coloured by its probability. ``model``
    is a :class:`~vision_lens.adapters.ModelAdapter`; ``lens`` a lens loaded
    for it, e.g. ``TunedLens.load(run_dir / "lenses" / "tuned", model)``.
    Blocks where the lens is undefined are hatched. Without ``ax`` the input
    image is drawn beside the heatmap. The image's file name and true
    ``label`` are shown; for a path inside an ImageFolder the label defaults
    to its class folder's name (:func:`image_folder_label`).
    """
    caption = []
    if isinstance(image, (str, Path)):
        caption.append(Path(image).name)
        label = label or image_folder_label(image)
        image = Image.open(image)
    if label:
        caption.append(f"true label: {label}")
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
    image_drawn = ax is None
    if image_drawn:
        height = 0.42 * len(rows) + 1.4
        fig, (image_ax, ax) = new_axes(
            nrows=1, ncols=2, figsize=(1.3 * k + 4.5, height), gridspec_kw={"width_ratios": [1.1, 0.9 * k + 1.6]}
        )
        image_ax.imshow(image.convert("RGB"))
        image_ax.set_title("\n".join(caption) or "input", fontsize=8)
        image_ax.axis("off")
    _hatch_undefined(ax)
    seaborn().heatmap(
        probs, mask=np.isnan(probs), annot=names, fmt="", annot_kws={"fontsize": 7}, vmin=0, vmax=1, cmap="Blues",
        xticklabels=[f"top {r + 1}" for r in range(k)], yticklabels=labels, linewidths=0.5, linecolor="white",
        cbar_kws={"label": "probability"}, ax=ax,
    )
    _out_of_layout(ax.texts)
    for r, p in enumerate(rows):
        if p is None:
            ax.text(k / 2, r + 0.5, "undefined: no identity path", ha="center", va="center", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.axhline(len(per_block), color="black", lw=1.5)  # separates the lens rows from the model's own output
    if not image_drawn and caption:
        ax.set_xlabel(", ".join(caption), fontsize=8)
    ax.tick_params(axis="y", labelsize=7, rotation=0)
    ax.tick_params(axis="x", labelsize=8, top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title(f"{model.name}: {lens_label(lens.lens_type)}, top-{k} classes at every block",
                 fontsize=10)
    return ax


def penalty_frontier(
    runs: Sequence[str | Path], recipe_runs: Sequence[str | Path | None] | None = None, labels: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """The regularisation frontier: the mean transfer penalty between neighbouring blocks (|i - j| = 1) against
    the mean own CE, one curve per run folder along its ``frontier.json`` sweep (written by ``vision-lens
    frontier``; the strongest penalty labelled). The run's own fit (the L2 strength chosen per block on held-out
    fit images) is marked with a circle and, where ``recipe_runs`` gives a run under ``--recipe tuned-lens`` of
    the same model, that fit with a star. A verdict on penalties holds only if it holds along the whole curve.
    """
    ax = ax or new_axes(figsize=(6.5, 4.8))[1]
    colours = palette()
    recipe_runs = list(recipe_runs or [None] * len(runs))
    for i, (run_dir, recipe_dir) in enumerate(zip(runs, recipe_runs)):
        path = Path(run_dir) / FRONTIER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} has no frontier.json; run `vision-lens frontier {run_dir}` first")
        frontier = json.loads(path.read_text())
        color = colours[i % len(colours)]
        label = labels[i] if labels else frontier["model"]
        points = [(p["own_ce"], p["penalty_by_distance"].get("1"), p["weight_decay"]) for p in frontier["points"]]
        points = [p for p in points if p[1] is not None]
        if not points:
            continue
        ce, penalty, strength = zip(*points)
        ax.plot(ce, penalty, "-o", ms=3, color=color, label=label)
        ax.annotate(f"{strength[-1]:g}", (ce[-1], penalty[-1]), fontsize=7, color=color,
                    xytext=(3, 3), textcoords="offset points")
        own = frontier["run_fit"]
        if own["penalty_by_distance"].get("1") is not None:
            ax.plot(own["own_ce"], own["penalty_by_distance"]["1"], "o", ms=9, mfc="none", mew=1.5, color=color)
        if recipe_dir is not None:
            recipe = summarise_transfer(as_results(recipe_dir)[0])
            if recipe["penalty_by_distance"].get("1") is not None:
                ax.plot(recipe["own_ce"], recipe["penalty_by_distance"]["1"], "*", ms=12, color=color)
    ax.plot([], [], "o", ms=9, mfc="none", mew=1.5, color="grey", label="default fit (chosen per block)")
    if any(r is not None for r in recipe_runs):
        ax.plot([], [], "*", ms=12, color="grey", label="tuned-lens recipe")
    ax.set_yscale("symlog", linthresh=1)  # penalties span 1 to 100 bits, and can be negative on small data
    ax.set_xlabel("mean own CE (bits per image; each translator on its own block)")
    ax.set_ylabel("mean transfer penalty, neighbouring blocks (bits)")
    ax.set_title("Transfer penalty across the L2 sweep (one strength for every block)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    return ax


def save_run_figures(results: ResultsLike, out: str | Path) -> dict[str, bytes]:
    """The two figures of a run bundle into the folder ``out``: ``layerwise.png`` (accuracy and CE) and
    ``transfer_penalty.png`` (where the run has transfers); returns each PNG by file name, for the report."""
    (run,) = as_results(results)
    out = Path(out)
    # Figure objects, not pyplot: writing files never touches the user's backend or open figures.
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    layerwise(run, "acc", ax=axes[0])
    layerwise(run, "ce", ax=axes[1])
    evaluated = eval_description(run)
    fig.suptitle(f"{run.name}: lenses at every block" + (f", evaluated on the {evaluated}" if evaluated else ""))
    fig.tight_layout()
    pngs = {LAYERWISE_FIGURE: _save_png(fig, out / LAYERWISE_FIGURE)}
    if has_transfer(run):
        fig = Figure(figsize=(7, 6))
        transfer_heatmap(run, "penalty", ax=fig.subplots())
        fig.tight_layout()
        pngs[TRANSFER_FIGURE] = _save_png(fig, out / TRANSFER_FIGURE)
    return pngs


def _save_png(fig: Figure, path: Path) -> bytes:
    """The figure as a PNG at ``path``, written atomically (a failed write names ``path``, see files.py); returns
    the PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    write_bytes_atomic(path, buffer.getvalue())
    return buffer.getvalue()
