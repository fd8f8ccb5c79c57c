"""Result analysis, apart from drawing: loading runs, transfer matrices, penalty by block distance.

Every function takes result folders (``str``/``Path``), ``aggregate_metrics.json``
files (ours or those written by ``tuned-lens eval``) or loaded
:class:`~vision_lens.artifacts.RunResults`, and returns numbers (numpy arrays,
NaN where a value is undefined).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from .artifacts import RunFolderError, RunResults, layer_keys, load_results
from .metrics import mean_by_distance, pair_groups, transfer_penalty

ResultsLike = Union[str, Path, RunResults]


def as_results(results: ResultsLike | Iterable[ResultsLike]) -> list[RunResults]:
    if isinstance(results, (str, Path, RunResults)):
        results = [results]
    return [r if isinstance(r, RunResults) else load_results(r) for r in results]


def layer_values(by_layer: dict) -> np.ndarray:
    """``{"layer_k": v}`` in block order as floats, NaN where undefined."""
    return np.array([np.nan if by_layer[k] is None else by_layer[k] for k in layer_keys(by_layer)], dtype=float)


def interval_values(by_layer: dict) -> tuple[np.ndarray, np.ndarray]:
    """``{"layer_k": [low, high]}`` (``aggregate_metrics_ci.json``) in block order: ``(low, high)``, NaN where null."""
    bounds = [by_layer[k] or [np.nan, np.nan] for k in layer_keys(by_layer)]
    return tuple(np.array(bounds, dtype=float).reshape(-1, 2).T)


def relative_depth(blocks: int) -> np.ndarray:
    """Block positions on [0, 1]: 0 = first lensed block, 1 = last."""
    return np.arange(blocks) / max(blocks - 1, 1)


def block_names(run: RunResults, blocks: int) -> list[str]:
    """The run's block names, or its ``layer_k`` keys where the run has no ``layers.json`` (tuned-lens output; a
    :func:`thinned` one keeps its layers' own keys)."""
    return run.block_names or layer_keys(run.aggregate["tuned"]["ce"])[:blocks]


def past_embedding(run: RunResults) -> np.ndarray:
    """The indices of the blocks the transfer tables compare: all but a transformer's embedding layer, on both
    sides of the comparison alike (docs/control.md's embedding rule). Left out: a class-token ViT's ``embed`` read
    at ``--pool-grid 1`` (the class token before the first block is one learned vector, the same for every image,
    so its lens is a constant and its translator learns only a bias) and a language model's ``layer_0`` (the token
    embeddings: a translator there reads a bigram table, and most of a small model's neighbour penalty sits in the
    pairs that involve it)."""
    names = run.block_names or layer_keys(run.aggregate["tuned"]["ce"])
    pool_grid = run.run.get("options", {}).get("pool_grid")
    return np.flatnonzero([not ((name == "embed" and pool_grid == 1) or name == "layer_0") for name in names])


def fit_recipe(run: RunResults) -> str | None:
    """How the run's translators were fitted: ``optimum`` (the default: the convex optimum at the held-out
    strength) or ``tuned-lens`` (``--recipe tuned-lens``); None for ``tuned-lens eval`` output (no run.json)."""
    return run.run.get("options", {}).get("recipe", "optimum") if run.run else None


def has_transfer(run: RunResults, lens_type: str = "tuned") -> bool:
    """Whether the run holds a transfer matrix for ``lens_type``."""
    return "layer_transfer" in run.aggregate.get(lens_type, {})


def defined_transfer(run: RunResults, lens_type: str = "tuned") -> bool:
    """Whether any translator of the run is defined on another block than its own (not so without identity
    paths, e.g. in an Inception)."""
    if not has_transfer(run, lens_type):
        return False
    matrix = transfer_matrix(run, "penalty", lens_type)
    return bool(np.isfinite(matrix[~np.eye(len(matrix), dtype=bool)]).any())


def transfer_matrix(run: RunResults, kind: str = "penalty", lens_type: str = "tuned") -> np.ndarray:
    """``layer_transfer[kind]`` as an array: rows = translator's block, columns = eval block; NaN = undefined.

    ``penalty`` is derived from ``ce`` when the file lacks it (``tuned-lens eval`` writes only ce and kl).
    """
    transfer = run.aggregate.get(lens_type, {}).get("layer_transfer")
    if transfer is None:
        raise RunFolderError(f"{run.name} has no {lens_type} layer_transfer (tuned-lens eval: pass --layer_transfer)")
    table = transfer.get(kind) or (transfer_penalty(transfer["ce"]) if kind == "penalty" else None)
    if table is None:
        raise RunFolderError(f"{run.name}: layer_transfer has no {kind!r}; choose one of penalty, {', '.join(transfer)}")
    keys = layer_keys(table)
    return np.array([[np.nan if table[i][j] is None else table[i][j] for j in keys] for i in keys], dtype=float)


def own_ce(run: RunResults, lens_type: str = "tuned") -> np.ndarray:
    """Each block's own CE, ``ce[k][k]`` (each translator on its own block; NaN where undefined). A penalty-only
    matrix has no transfer CE: there it is the lens's layer-wise CE, read from another file
    (:func:`~vision_lens.artifacts.load_penalty_only`, whose caveat says so)."""
    if "ce" in run.aggregate.get(lens_type, {}).get("layer_transfer", {}):
        return np.diag(transfer_matrix(run, "ce", lens_type))
    return layer_values(run.aggregate[lens_type]["ce"])


def mean_diagonal_ce(run: RunResults, lens_type: str = "tuned", blocks: Sequence[int] | None = None) -> float:
    """Mean over blocks of :func:`own_ce` (undefined blocks skipped); over the block indices ``blocks`` only, where
    given."""
    diagonal = own_ce(run, lens_type)
    return float(np.nanmean(diagonal if blocks is None else diagonal[list(blocks)]))


def thinned(run: RunResults, count: int) -> RunResults:
    """``run`` at ``count`` of its layers, every ``L // count``-th from the first (Pythia-12B's 36 layers to six:
    ``layer_0, layer_6, ..., layer_30``), so that a deep model meets a shallow one at matched relative depth; a run
    of ``count`` layers or fewer is returned as it is. The layers keep their keys (and block names); distances are
    then counted in kept layers, and bootstrap intervals of the full run do not apply (the result has none)."""
    keys = layer_keys(run.aggregate["tuned"]["ce"])
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(keys) <= count:
        return run
    step = len(keys) // count
    keep = keys[::step][:count]

    def subset(node):
        if isinstance(node, dict) and node and all(k.startswith("layer_") for k in node):
            return {k: subset(node[k]) for k in keep}
        return {k: subset(v) for k, v in node.items()} if isinstance(node, dict) else node

    positions = [keys.index(k) for k in keep]
    info = dict(run.run)
    if "block_stages" in info:
        info["block_stages"] = [info["block_stages"][k] for k in positions]
    numbers = [k.split("_")[1] for k in keep]
    name = f"{run.name} (layers {', '.join(numbers[:2])}{', ...' if len(keep) > 3 else ''}, {numbers[-1]})"
    return dataclasses.replace(run, name=name, aggregate=subset(run.aggregate), intervals=None, run=info,
                               layers={k: v for k, v in run.layers.items() if k in keep})


@dataclass
class DistanceProfile:
    """The mean transfer penalty at each block distance, over one group of block pairs."""

    distance: np.ndarray  # |i - j| = 0 .. blocks-1, or that over (blocks - 1) when relative
    mean: np.ndarray  # NaN where the group has no defined cell at that distance
    pairs: np.ndarray  # the number of defined (i, j) cells averaged at each distance
    low: np.ndarray | None = None  # 95 % bootstrap interval of the mean (aggregate_metrics_ci.json), else None
    high: np.ndarray | None = None


def penalty_profiles(
    run: RunResults, lens_type: str = "tuned", relative: bool = False, normalise: bool = False,
    blocks: Sequence[int] | None = None,
) -> dict[str, DistanceProfile]:
    """The mean transfer penalty against block distance: over ``all`` cells, and split by stage.

    ``within_stage`` holds the pairs ``i != j`` of one stage (same width and
    resolution, joined by plain identity shortcuts), ``across_stage`` the rest;
    stages are the adapter's (:attr:`~vision_lens.artifacts.RunResults.block_stages`:
    ``stem``, ``layer1``, ...; one for a ViT). Runs without block names
    (tuned-lens output) have no stages and get ``all`` only.
    Undefined cells are left out of means and counts. ``relative`` divides the
    distance by ``blocks - 1``; ``normalise`` divides penalties by
    :func:`mean_diagonal_ce` (then no interval is given: the bootstrap did not
    resample that ratio). ``blocks`` (consecutive block indices, in order) keeps only
    the pairs among those blocks; the normalising CE is then theirs, and no
    interval is given either (unless ``blocks`` is every block). Intervals come
    from the run's ``aggregate_metrics_ci.json`` where it has one.
    """
    matrix = transfer_matrix(run, "penalty", lens_type)
    stages = list(run.block_stages) if run.block_names else None
    if blocks is not None:
        keep = [int(k) for k in blocks]
        if not keep or keep != list(range(keep[0], keep[0] + len(keep))):  # gaps would change the distances
            raise ValueError(f"blocks must be consecutive block indices in order, got {keep}")
        if keep == list(range(len(matrix))):  # every block: as if none were given (intervals kept)
            blocks = None
        else:
            matrix = matrix[np.ix_(keep, keep)]
            stages = None if stages is None else [stages[k] for k in keep]
    if normalise:
        matrix = matrix / mean_diagonal_ce(run, lens_type, blocks)
    groups = pair_groups(stages) if stages is not None else {"all": None}
    saved = None if normalise or blocks is not None or run.intervals is None else (
        run.intervals.get(lens_type, {}).get("layer_transfer", {}).get("penalty_by_distance"))
    distance = relative_depth(len(matrix)) if relative else np.arange(len(matrix))
    profiles = {}
    for group, cells in groups.items():
        means, counts = mean_by_distance(matrix, cells)
        profile = DistanceProfile(distance, means, counts)
        if saved and group in saved:
            bounds = [saved[group][str(d)] or [np.nan, np.nan] for d in range(len(matrix))]
            profile.low, profile.high = np.array(bounds, dtype=float).T
        profiles[group] = profile
    return profiles


def stage_boundaries(run: RunResults) -> list[int]:
    """Block indices k where a new stage starts (blocks k-1 and k differ in
    :attr:`~vision_lens.artifacts.RunResults.block_stages`); none for runs without block names."""
    stages = run.block_stages
    return [k for k in range(1, len(stages)) if stages[k] != stages[k - 1]]


def summarise_transfer(run: RunResults) -> dict:
    """The transfer summary of one evaluated run (a point of ``vision-lens frontier``): the mean own CE (each
    translator on its own block), the mean penalty between neighbouring blocks within a stage and across stages
    (None where no such pair exists), the penalty by distance, and the shared lens's gap (its CE minus the tuned
    lens's, averaged over the blocks where both are defined; None where none is, or the run fitted no shared
    lens)."""
    penalty = transfer_matrix(run, "penalty")
    groups = pair_groups(run.block_stages)
    neighbours = np.abs(np.subtract.outer(np.arange(len(penalty)), np.arange(len(penalty)))) == 1

    def mean(cells: np.ndarray) -> float | None:
        values = penalty[cells & np.isfinite(penalty)]
        return float(values.mean()) if len(values) else None

    tuned, shared = (np.array([np.nan if v is None else v for v in run.aggregate[t]["ce"].values()], dtype=float)
                     if t in run.aggregate else np.full(len(penalty), np.nan) for t in ("tuned", "shared"))
    gap = shared - tuned
    by_distance = penalty_profiles(run)["all"].mean
    return {
        "own_ce": mean_diagonal_ce(run),
        "neighbour_penalty_within_stage": mean(neighbours & groups["within_stage"]),
        "neighbour_penalty_across_stage": mean(neighbours & groups["across_stage"]),
        "penalty_by_distance": {str(d): None if np.isnan(v) else float(v) for d, v in enumerate(by_distance)},
        "shared_gap": float(np.nanmean(gap)) if np.isfinite(gap).any() else None,
    }


def chance_accuracy(run: RunResults) -> float | None:
    """``1 / classes``: from run.json's ``eval_classes`` (classes in the eval data) if recorded, else its
    ``num_classes`` (the model's outputs); None where run.json records neither."""
    classes = run.run.get("eval_classes") or run.run.get("num_classes")
    return 1 / classes if classes else None


def reported_unit(run: RunResults) -> str:
    """Our runs' unit (run.json's: ``bits per image``, or ``bits per token`` for a language model), ``bits per
    byte`` for tuned-lens output."""
    return run.run.get("units", {}).get("ce", "bits per image") if run.run else "bits per byte"


def eval_description(run: RunResults) -> str | None:
    """``"test split, 10,000 images"`` from run.json; None where it records neither."""
    split = run.run.get("options", {}).get("eval_split")
    images = run.run.get("eval_images")
    parts = ([f"{split} split"] if split else []) + ([f"{images:,} images"] if images else [])
    return ", ".join(parts) or None
