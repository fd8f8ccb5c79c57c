"""Numerical checks: NaN or Inf in a block's pooled activations or in a fitted lens stops the run
naming the block, instead of writing numbers computed from them. (What can be checked before the
first forward pass is in :mod:`vision_lens.preflight`.)"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import UserError


class NumericsError(UserError, ValueError):
    """NaN or Inf in activations or in a fit; the message names the block."""


def check_activations(block_names: Sequence[str], pooled: Sequence[np.ndarray], logits: np.ndarray | None,
                      first_row: int) -> None:
    """Raise NumericsError naming the first block (or the output, where its logits are captured) with NaN or Inf in
    this batch."""
    output = [("the model output (logits)", logits)] if logits is not None else []
    for name, values in [*zip(block_names, pooled), *output]:
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad) + first_row
            raise NumericsError(
                f"block {name}: NaN or Inf activations for {len(rows)} image(s), captured rows {rows[:5].tolist()}; "
                "the weights or inputs make the model numerically unstable, check --weights and the data"
            )


def check_fit(lens_type: str, lens, per_block_loss: Sequence[float | None], block_names: Sequence[str]) -> None:
    """Raise NumericsError naming the block whose fitted ``lens`` (a SavedLens) has a NaN or Inf loss or parameter."""
    advice = "raise --weight-decay or lower --max-iter, and check the captured features"
    for name, loss in zip(block_names, per_block_loss):
        if loss is not None and not np.isfinite(loss):
            raise NumericsError(f"{lens_type} lens, block {name}: the fit ended with loss {loss}; {advice}")
    for module, blocks in lens.fit_groups():
        if not all(p.isfinite().all() for p in module.parameters()):
            names = ", ".join(block_names[k] for k in blocks)
            raise NumericsError(f"{lens_type} lens, block {names}: NaN or Inf parameters after the fit; {advice}")
