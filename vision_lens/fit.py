"""Lens fitting on cached features: every block in one job.

The translators of different blocks share no parameters, so minimising the
sum of the per-block losses fits each block exactly as separate runs would,
with one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .lenses import SavedLens


@dataclass
class FitSettings:
    """Optimiser settings shared by the tuned lens and the linear probe.

    Each block's lens is a convex problem (affine map, then a fixed linear head,
    then softmax), so it is solved to convergence with full-batch L-BFGS and an
    L2 penalty: the fit has one optimum, independent of seeds and learning rates.
    """

    max_iter: int = 100
    weight_decay: float = 1e-3
    chunk_size: int = 65536


def fit_lens(
    lens: SavedLens,
    features: list[Tensor],
    labels: Tensor,
    final_logits: Tensor | None = None,
    settings: FitSettings = FitSettings(),
    desc: str = "fit",
) -> list[float | None]:
    """Fit ``lens``; returns each block's final mean loss (nats, without the penalty; None if not fitted).

    With ``final_logits`` the loss is KL(model output || lens), as tuned-lens
    trains; otherwise cross-entropy against ``labels``. Each module of
    ``lens.fit_groups()`` is fitted on the mean loss of its blocks (one block
    for a per-block translator, all of them for a shared one); the penalty is
    ``weight_decay / 2 * |params|^2``.
    """
    device = next(lens.parameters()).device
    labels = labels.to(device)
    rows_used = torch.arange(len(labels), device=device)
    if final_logits is None:  # label-trained: unlabelled images (label -1) carry no target
        rows_used = rows_used[labels >= 0]
    n = len(rows_used)
    if final_logits is not None:  # the targets are fixed: take their softmax and entropy once
        final_lps = final_logits.to(device).log_softmax(-1)
        final_probs = final_lps.exp()
        final_entropy = -(final_probs * final_lps).sum(-1)
    losses: list[float | None] = [None] * len(features)
    lens.train()
    for module, blocks in tqdm(lens.fit_groups(), desc=desc, unit="translator", dynamic_ncols=True):
        xs = {k: features[k].to(device) for k in blocks}
        params = list(module.parameters())
        optimizer = torch.optim.LBFGS(
            params, lr=1, max_iter=settings.max_iter, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-9, tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            per_block = {}
            for k in blocks:
                per_block[k] = torch.zeros((), device=device)
                # Chunks bound memory; gradients accumulate, so this is still the full-batch loss.
                for rows in rows_used.split(settings.chunk_size):
                    logits = lens(xs[k][rows], k)
                    if final_logits is None:
                        loss = F.cross_entropy(logits, labels[rows], reduction="sum")
                    else:
                        cross = -(final_probs[rows] * logits.log_softmax(-1)).sum(-1)
                        loss = (cross - final_entropy[rows]).sum()
                    (loss / (n * len(blocks))).backward()
                    per_block[k] += loss.detach() / n
            penalty = settings.weight_decay / 2 * sum(p.square().sum() for p in params)
            penalty.backward()
            closure.data_loss = {k: float(v) for k, v in per_block.items()}
            return sum(per_block.values()) / len(blocks) + penalty.detach()

        optimizer.step(closure)
        closure()
        for k, loss in closure.data_loss.items():
            losses[k] = loss
    lens.eval()
    return losses
