"""``vision-lens compare``: vision runs and LLM lens evaluations on one relative-depth axis.

Inputs are our run folders, the ``aggregate_metrics.json`` files written by
``tuned-lens eval`` (``{"tuned"|"logit": {"ce"|"kl"|"entropy": {"layer_k": v},
"layer_transfer": {"ce"|"kl": {"layer_i": {"layer_j": v}}}}, "baseline": ...}``), and
folders holding a penalty-only transfer matrix beside a per-layer CE
(:func:`~vision_lens.artifacts.load_penalty_only`: the tuned-lens authors' Pythia-12B,
whose caveat the figure and the JSON carry). ``thin`` adds each deep input without
block names (a language model) at that many layers too (:func:`~vision_lens.analysis.thinned`),
for matched relative depth.
tuned-lens reports bits per byte and we report bits per image, so raw values
do not compare; only two unitless quantities are drawn:

* CE or KL at a layer as a fraction of the same lens's value at the first layer
  (the first layer where it is defined);
* the transfer penalty ``ce[i][j] - ce[j][j]`` as a fraction of the mean
  diagonal CE, against the distance ``|i - j|`` as a fraction of depth, over the
  blocks past a transformer's embedding layer (:func:`~vision_lens.analysis.past_embedding`:
  a class-token ViT's ``embed`` is one vector for every image, and a language model's
  ``layer_0`` is its token embeddings; the same rule on both sides).

:func:`compare_to_file` writes these numbers beside the figure, as JSON
(:func:`compared_numbers`), for a table.

Depth is the layer index scaled to [0, 1]. For tuned-lens, ``layer_0`` is
the embedding output and the last layer the input of the last transformer
block; for us, the first and the last lensed block.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from .analysis import (ResultsLike, as_results, defined_transfer, has_transfer, layer_values, past_embedding,
                       penalty_profiles, relative_depth, thinned)
from .artifacts import RunFolderError, RunResults, reference_or_path, require_complete
from .files import write_text_atomic
from .errors import OptionError
from .plotting import lens_label, lens_style, palette, penalty_vs_distance

COMPARED_METRICS = ("ce", "kl")
MIN_FONT_SIZE = 8  # points, at the saved figure size


def normalised_layerwise(run: RunResults, metric: str, lens_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(relative depth, metric / metric at the first defined layer)`` for one lens of one run."""
    values = layer_values(run.aggregate[lens_type][metric])
    defined = values[~np.isnan(values)]
    if not len(defined) or defined[0] == 0:
        raise RunFolderError(f"{run.path} ({run.name}): {lens_type} {metric} has no nonzero first value to normalise by")
    return relative_depth(len(values)), values / defined[0]


def _labelled(results, labels: Sequence[str] | None, thin: int | None = None) -> list[RunResults]:
    runs = as_results(results)
    if labels is not None:
        if len(labels) != len(runs):
            raise OptionError(f"{len(labels)} labels for {len(runs)} inputs; give one --label per input, in order")
        runs = [dataclasses.replace(run, name=label) for run, label in zip(runs, labels)]
    return runs if thin is None else with_thinned(runs, thin)


def with_thinned(runs: Sequence[RunResults], count: int) -> list[RunResults]:
    """``runs``, each input without block names (tuned-lens output, a penalty-only matrix: a language model) that
    has more than ``count`` layers followed by itself at ``count`` of them (:func:`~vision_lens.analysis.thinned`:
    Pythia-12B's 36 layers at 0, 6, ..., 30 beside a six-layer model)."""
    if count < 2:
        raise OptionError(f"--thin {count}: give the number of layers to keep, at least 2")
    out = []
    for run in runs:
        out.append(run)
        if not run.block_names and len(run.aggregate["tuned"]["ce"]) > count:
            out.append(thinned(run, count))
    return out


def caveat_lines(runs: Sequence[RunResults]) -> list[str]:
    """One line per caveat of the inputs (a penalty-only matrix's CE from another file), naming the inputs it
    concerns (a thinned copy shares its input's), for a figure or a table."""
    named: dict[str, list[str]] = {}
    for run in runs:
        for caveat in run.caveats:
            named.setdefault(caveat, []).append(run.name)
    return [f"{' and '.join(names)}: {caveat}" for caveat, names in named.items()]


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def compared_numbers(
    results: ResultsLike | Iterable[ResultsLike],
    lens_types: Sequence[str] = ("tuned", "logit"),
    metrics: Sequence[str] = COMPARED_METRICS,
    labels: Sequence[str] | None = None,
    thin: int | None = None,
) -> list[dict]:
    """The curves :func:`compare` draws, per input: ``{"name", "path", "layerwise": {lens: {metric:
    {"relative_depth", "normalised"}}}, "transfer": {"relative_distance", "normalised_penalty", "pairs"}}``
    (``transfer`` None where no translator reads another block; null where a value is undefined; ``non_finite``
    names the NaN or infinite numbers of the input, read as undefined; ``caveats`` what must be said beside its
    numbers)."""
    numbers = []
    for run in _labelled(results, labels, thin):
        layerwise: dict = {}
        for lens_type in lens_types:
            for metric in metrics:
                if metric in run.aggregate.get(lens_type, {}) and \
                        np.isfinite(layer_values(run.aggregate[lens_type][metric])).sum() >= 2:
                    x, y = normalised_layerwise(run, metric, lens_type)
                    layerwise.setdefault(lens_type, {})[metric] = {"relative_depth": x.tolist(),
                                                                   "normalised": _finite_or_none(y)}
        transfer = None
        if defined_transfer(run):
            profile = penalty_profiles(run, relative=True, normalise=True, blocks=past_embedding(run))["all"]
            transfer = {"relative_distance": profile.distance.tolist(),
                        "normalised_penalty": _finite_or_none(profile.mean), "pairs": profile.pairs.tolist()}
        numbers.append({"name": run.name, "path": str(run.path), "layerwise": layerwise, "transfer": transfer,
                        "non_finite": list(run.non_finite), "caveats": list(run.caveats)})
    return numbers


def compare(
    results: ResultsLike | Iterable[ResultsLike],
    lens_types: Sequence[str] = ("tuned", "logit"),
    metrics: Sequence[str] = COMPARED_METRICS,
    labels: Sequence[str] | None = None,
    thin: int | None = None,
) -> plt.Figure:
    """One figure: normalised CE and KL against relative depth, and the normalised transfer penalty.

    Colour tells the run, line style the lens. ``labels`` names the inputs, in
    order (default: the model in run.json, or the folder name); ``thin`` adds
    each deep language model at that many layers too (:func:`with_thinned`).
    Every panel, and so the legend, is unitless; an input's caveats are printed
    under the legend.
    """
    runs = _labelled(results, labels, thin)
    for run in runs:  # every legend entry must have data behind it
        drawable = [f"{t}.{m}" for t in lens_types for m in metrics if m in run.aggregate.get(t, {})]
        if not drawable and not has_transfer(run):
            present = ", ".join(t for t in run.aggregate if t != "baseline") or "none"
            raise RunFolderError(
                f"{run.path} ({run.name}) has nothing to compare: no {'/'.join(metrics)} for the lenses "
                f"{', '.join(lens_types)} and no tuned layer_transfer (its lenses: {present}); pass --lens-types "
                "that it has, or another input"
            )
    colours = palette()
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4.4))
    styles_used: list[str] = []
    for ax, metric in zip(axes, metrics):
        for r_i, run in enumerate(runs):
            for lens_type in lens_types:
                if metric not in run.aggregate.get(lens_type, {}):
                    continue
                if np.isfinite(layer_values(run.aggregate[lens_type][metric])).sum() < 2:
                    continue  # defined at one block only (an Inception's logit lens): no curve to normalise
                x, y = normalised_layerwise(run, metric, lens_type)
                ax.plot(x, y, ls=lens_style(lens_type), marker="o", ms=3, color=colours[r_i % len(colours)],
                        label=f"{lens_type} · {run.name}")
                styles_used += [lens_type] if lens_type not in styles_used else []
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("relative depth (0 = first layer, 1 = last)")
        ax.set_ylabel(f"{metric.upper()} / {metric.upper()} at the first layer")
        ax.set_title(f"{metric.upper()}, normalised (unitless)", fontsize=10)
        ax.tick_params(labelsize=MIN_FONT_SIZE + 1)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    with_transfer = [i for i, run in enumerate(runs) if defined_transfer(run)]
    penalty_ax = axes[-1]
    if with_transfer:
        penalty_vs_distance([runs[i] for i in with_transfer], relative=True, normalise=True,
                            colors=[colours[i % len(colours)] for i in with_transfer], ax=penalty_ax,
                            past_embedding_only=True)
        penalty_ax.get_legend().remove()  # the figure legend names the runs
    else:
        penalty_ax.text(0.5, 0.5, "no input has a tuned-lens layer_transfer", ha="center", va="center",
                        transform=penalty_ax.transAxes)
    penalty_ax.set_title("tuned lens: transfer penalty, normalised (unitless)", fontsize=10)

    # Every panel is unitless, so the legend names the inputs without a unit.
    run_handles = [Line2D([], [], color=colours[i % len(colours)], lw=2.5, label=run.name) for i, run in enumerate(runs)]
    style_handles = [Line2D([], [], color="black", ls=lens_style(t), label=lens_label(t))
                     for t in styles_used]
    fig.legend(handles=run_handles + style_handles, loc="lower center", ncol=min(len(runs) + len(styles_used), 5),
               frameon=False, fontsize=9)
    fig.suptitle("Lenses across models on normalised quantities: raw bits per image (vision) and bits per byte "
                 "(tuned-lens, LLMs) do not compare", fontsize=10)
    notes = "\n".join(textwrap.fill(line, 220) for line in caveat_lines(runs))
    note_height = 0.035 * (notes.count("\n") + 1) if notes else 0.0  # a line of 8 pt type in a 4.4 in figure
    if notes:  # under the legend
        fig.text(0.01, 0.005, notes, fontsize=MIN_FONT_SIZE, va="bottom", ha="left")
        fig.legends[0].set_bbox_to_anchor((0.5, note_height), transform=fig.transFigure)
    legend_rows = (len(runs) + len(styles_used) - 1) // 5
    fig.tight_layout(rect=(0, 0.06 + 0.04 * legend_rows + note_height, 1, 0.95))
    return fig


def compare_to_file(
    paths: Sequence[str | Path],
    out: str | Path,
    lens_types: Sequence[str] = ("tuned", "logit"),
    labels: Sequence[str] | None = None,
    thin: int | None = None,
) -> Path:
    """``vision-lens compare``: draw :func:`compare` for ``paths`` and save it to ``out`` (format from the suffix),
    with its numbers (:func:`compared_numbers`) beside it as ``out`` with ``.json``. ``paths`` may also name
    committed references (``cifar10-vit``).

    Incomplete run folders and malformed inputs are refused with a message naming them.
    """
    missing = [str(p) for p in paths if not Path(p).exists() and len(Path(p).parts) > 1]
    if missing:
        raise FileNotFoundError(f"no such result folder or aggregate_metrics.json: {', '.join(missing)}")
    paths = [reference_or_path(p) for p in paths]  # a bare name that is no reference: an error listing them
    for path in paths:
        require_complete(path)
    runs = as_results(paths)  # read once: a warning about an input is printed once
    fig = compare(runs, lens_types, labels=labels, thin=thin)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
        numbers = {"lens_types": list(lens_types),
                   "inputs": compared_numbers(runs, lens_types, labels=labels, thin=thin)}
        write_text_atomic(out.with_suffix(".json"), json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    except OSError as exc:
        raise RunFolderError(f"--out {out} cannot be written ({exc.strerror or exc}); choose a writable path") from exc
    finally:
        plt.close(fig)
    return out
