"""What the translators read while they are fitted: each block's inputs, and their standardisation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..lenses import SavedLens


def lens_device(lens: SavedLens) -> torch.device:
    return next(lens.parameters()).device


@torch.no_grad()
def fit_parts(lens: SavedLens, features: list[Tensor], blocks: list[int], rows: Tensor | None = None
              ) -> list[tuple[Tensor, Tensor | None]]:
    """:meth:`SavedLens.fit_inputs` of each of ``blocks`` on ``rows`` (every row where None), on the lens's device
    (the rows are taken where the features are, then moved)."""
    device = lens_device(lens)
    return [lens.fit_inputs((features[k] if rows is None else features[k][rows.to(features[k].device)]).to(device), k)
            for k in blocks]


@torch.no_grad()
def input_statistics(lens: SavedLens, features: list[Tensor], rows: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """Per block, the mean and std of its translator inputs on ``rows``, pooled over each standardisation group."""
    statistics = {}
    for group in lens.standardization_groups():
        total = squares = None
        for k in group:  # running sums: a group's inputs never sit in memory at once
            x = lens.fit_inputs(features[k].to(rows.device)[rows], k)[0].double()
            total = x.sum(0) if total is None else total + x.sum(0)
            squares = x.square().sum(0) if squares is None else squares + x.square().sum(0)
        n = len(rows) * len(group)
        mean = total / n
        std = (squares / n - mean.square()).clamp(min=0).sqrt()
        statistics |= {k: (mean.float(), std.float()) for k in group}
    return statistics


def standardize(lens: SavedLens, features: list[Tensor], rows: Tensor) -> None:
    """Every translator standardised on ``rows`` (the rows that choose the penalty: validation rows stay unseen)."""
    statistics = input_statistics(lens, features, rows)
    for module, blocks in lens.fit_groups():
        module.standardize(*statistics[blocks[0]])
