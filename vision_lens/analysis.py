"""Result analysis, apart from drawing: loading runs, transfer matrices, penalty by block distance.

Every function takes result folders (``str``/``Path``), ``aggregate_metrics.json``
files (ours or those written by ``tuned-lens eval``) or loaded
:class:`~vision_lens.artifacts.RunResults`, and returns numbers (numpy arrays,
NaN where a value is undefined).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

import numpy as np

from .artifacts import RunResults, layer_keys, load_results
from .metrics import transfer_penalty

ResultsLike = Union[str, Path, RunResults]


def as_results(results: ResultsLike | Iterable[ResultsLike]) -> list[RunResults]:
    if isinstance(results, (str, Path, RunResults)):
        results = [results]
    return [r if isinstance(r, RunResults) else load_results(r) for r in results]


def layer_values(by_layer: dict) -> np.ndarray:
    """``{"layer_k": v}`` in block order as floats, NaN where undefined."""
    return np.array([np.nan if by_layer[k] is None else by_layer[k] for k in layer_keys(by_layer)], dtype=float)


def relative_depth(blocks: int) -> np.ndarray:
    """Block positions on [0, 1]: 0 = first lensed block, 1 = last."""
    return np.arange(blocks) / max(blocks - 1, 1)


def block_names(run: RunResults, blocks: int) -> list[str]:
    """The run's block names, or ``layer_k`` keys where the run has no ``layers.json`` (tuned-lens output)."""
    return run.block_names or [f"layer_{k}" for k in range(blocks)]


def has_transfer(run: RunResults, lens_type: str = "tuned") -> bool:
    """Whether the run holds a transfer matrix for ``lens_type``."""
    return "layer_transfer" in run.aggregate.get(lens_type, {})


def transfer_matrix(run: RunResults, kind: str = "penalty", lens_type: str = "tuned") -> np.ndarray:
    """``layer_transfer[kind]`` as an array: rows = translator's block, columns = eval block; NaN = undefined.

    ``penalty`` is derived from ``ce`` when the file lacks it (``tuned-lens eval`` writes only ce and kl).
    """
    transfer = run.aggregate.get(lens_type, {}).get("layer_transfer")
    if transfer is None:
        raise ValueError(f"{run.name} has no {lens_type} layer_transfer (tuned-lens eval: pass --layer_transfer)")
    table = transfer.get(kind) or (transfer_penalty(transfer["ce"]) if kind == "penalty" else None)
    if table is None:
        raise ValueError(f"{run.name}: layer_transfer has no {kind!r}; choose one of penalty, {', '.join(transfer)}")
    keys = layer_keys(table)
    return np.array([[np.nan if table[i][j] is None else table[i][j] for j in keys] for i in keys], dtype=float)


def mean_diagonal_ce(run: RunResults, lens_type: str = "tuned") -> float:
    """Mean over blocks of ``ce[k][k]``: each translator on its own block (undefined blocks skipped)."""
    diagonal = np.diag(transfer_matrix(run, "ce", lens_type))
    return float(np.nanmean(diagonal))


def penalty_by_distance(run: RunResults, lens_type: str = "tuned", normalise: bool = False) -> np.ndarray:
    """Mean transfer penalty over the cells with ``|i - j| = d``, for d = 0 .. blocks-1; null cells ignored.

    With ``normalise`` the penalties are divided by :func:`mean_diagonal_ce`,
    so runs reported in different units (bits per image, bits per byte) compare.
    """
    matrix = transfer_matrix(run, "penalty", lens_type)
    if normalise:
        matrix = matrix / mean_diagonal_ce(run, lens_type)
    rows, cols = np.indices(matrix.shape)
    distance = np.abs(rows - cols)
    means = []
    for d in range(len(matrix)):
        cells = matrix[distance == d]
        cells = cells[~np.isnan(cells)]
        means.append(cells.mean() if len(cells) else np.nan)
    return np.array(means)
