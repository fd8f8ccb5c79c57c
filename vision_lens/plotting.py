"""Plotting helpers for lens results (seaborn/matplotlib).

Every function takes result folders (``str``/``Path``) or loaded
:class:`~vision_lens.artifacts.RunResults` and returns the matplotlib Axes it
drew on, so figures can be composed and saved by the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless: plots are files)
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .artifacts import RunResults, load_results

ResultsLike = Union[str, Path, RunResults]
METRIC_LABELS = {
    "acc": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agree": "agreement with the model",
    "ce": "cross-entropy (bits)",
    "kl": "KL(model ‖ lens) (bits)",
    "entropy": "entropy (bits)",
}
LENS_LABELS = {"tuned": "tuned lens", "logit": "logit lens", "linear_probe": "linear probe"}


def as_results(results: ResultsLike | Iterable[ResultsLike]) -> list[RunResults]:
    if isinstance(results, (str, Path, RunResults)):
        results = [results]
    return [r if isinstance(r, RunResults) else load_results(r) for r in results]


def _layer_keys(by_layer: dict) -> list[str]:
    return sorted(by_layer, key=lambda k: int(k.split("_")[1]))


def layerwise(
    results: ResultsLike | Iterable[ResultsLike],
    metric: str = "acc",
    x: str = "block",
    lens_types: Sequence[str] = ("tuned", "logit", "linear_probe"),
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """One line per model and lens type: ``metric`` at every block.

    ``x="block"`` labels the axis with block names (one model);
    ``x="relative_depth"`` puts models of any depth on [0, 1] (0 = first lensed block).
    Undefined values (e.g. the logit lens without an identity path) are gaps.
    """
    runs = as_results(results)
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    palette = sns.color_palette("colorblind")
    styles = {"tuned": "-", "logit": "--", "linear_probe": ":"}
    for r_i, run in enumerate(runs):
        for t_i, lens_type in enumerate(t for t in lens_types if t in run.aggregate):
            by_layer = run.aggregate[lens_type].get(metric)
            if not by_layer:
                continue
            keys = _layer_keys(by_layer)
            y = np.array([np.nan if by_layer[k] is None else by_layer[k] for k in keys], dtype=float)
            xs = np.arange(len(keys)) / max(len(keys) - 1, 1) if x == "relative_depth" else np.arange(len(keys))
            label = LENS_LABELS.get(lens_type, lens_type) + (f" · {run.name}" if len(runs) > 1 else "")
            color = palette[(r_i if len(runs) > 1 else t_i) % len(palette)]
            ax.plot(xs, y, styles.get(lens_type, "-"), marker="o", ms=3.5, color=color, label=label)
        if metric in run.aggregate.get("baseline", {}) and len(runs) == 1:
            ax.axhline(run.aggregate["baseline"][metric]["final"], color="grey", lw=1, ls="-.", label="model output")
    if x == "relative_depth":
        ax.set_xlabel("relative depth (0 = first block, 1 = last)")
    else:
        names = runs[0].block_names
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("block")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


def transfer_matrix(run: RunResults, kind: str = "penalty", lens_type: str = "tuned") -> np.ndarray:
    """``layer_transfer[kind]`` as an array: rows = translator's block, columns = eval block; NaN = undefined."""
    table = run.aggregate[lens_type]["layer_transfer"][kind]
    keys = _layer_keys(table)
    return np.array([[np.nan if table[i][j] is None else table[i][j] for j in keys] for i in keys], dtype=float)


def transfer_heatmap(
    results: ResultsLike, kind: str = "penalty", lens_type: str = "tuned", ax: plt.Axes | None = None
) -> plt.Axes:
    """Heatmap of the transfer matrix: train block on the rows, eval block on the columns.

    Undefined cells (no identity path between the blocks) are hatched grey, not zero.
    """
    (run,) = as_results(results)
    matrix = transfer_matrix(run, kind, lens_type)
    names = run.block_names or [str(k) for k in range(len(matrix))]
    ax = ax or plt.subplots(figsize=(6.5, 5.5))[1]
    ax.set_facecolor("#d9d9d9")
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor("#a6a6a6")
    sns.heatmap(
        matrix,
        mask=np.isnan(matrix),
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
    title = {"penalty": "transfer penalty ce[i][j] − ce[j][j]", "ce": "transfer CE", "kl": "transfer KL"}
    ax.set_title(f"{run.name}: {title.get(kind, kind)}", fontsize=10)
    return ax


def save_run_figures(results: ResultsLike, out: str | Path) -> list[Path]:
    """The two figures of a run bundle: ``layerwise.png`` (accuracy and CE) and ``transfer_penalty.png``."""
    (run,) = as_results(results)
    out = Path(out)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    layerwise(run, "acc", ax=axes[0])
    layerwise(run, "ce", ax=axes[1])
    fig.suptitle(f"{run.name}: lenses at every block (eval split)")
    fig.tight_layout()
    paths = [out / "layerwise.png"]
    fig.savefig(paths[0], dpi=150)
    plt.close(fig)
    if "tuned" in run.aggregate and "layer_transfer" in run.aggregate["tuned"]:
        fig, ax = plt.subplots(figsize=(7, 6))
        transfer_heatmap(run, "penalty", ax=ax)
        fig.tight_layout()
        paths.append(out / "transfer_penalty.png")
        fig.savefig(paths[-1], dpi=150)
        plt.close(fig)
    return paths
