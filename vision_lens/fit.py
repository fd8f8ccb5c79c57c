"""Lens fitting on cached features, with the L2 penalty chosen on held-out images.

Each lens is an affine map followed by a fixed linear head and a softmax: a
convex problem, solved full-batch with L-BFGS. The one free choice is the
strength of the L2 penalty, and no single value suits every block and lens
(a weak penalty underfits nothing early, but overfits the wide late blocks).
So for every fitted module the penalty is chosen from a grid on a validation
slice of the *fit* split (never the eval split), sweeping from strong to weak
with warm starts, and the module is then refitted on the whole fit split at
the chosen strength.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .lenses import SavedLens

PENALTY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class FitSettings:
    """How every lens is fitted.

    Attributes:
        max_iter: L-BFGS iterations per solve (each run stops earlier at its tolerance).
        weight_decay: a fixed L2 strength; None chooses it per block from
            ``penalty_grid`` on a held-out ``validation_fraction`` of the fit images.
        seed: seeds the validation slice.
    """

    max_iter: int = 100
    weight_decay: float | None = None
    penalty_grid: tuple[float, ...] = PENALTY_GRID
    validation_fraction: float = 0.2
    seed: int = 0
    chunk_size: int = field(default=65536, repr=False)

    def to_dict(self) -> dict:
        return {
            "max_iter": self.max_iter,
            "weight_decay": "chosen on validation" if self.weight_decay is None else self.weight_decay,
            "penalty_grid": list(self.penalty_grid),
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }


class _Objective:
    """The lens's mean loss in nats on given rows: KL to the model's output, or CE against the labels."""

    def __init__(self, lens: SavedLens, module: nn.Module, inputs: dict[int, tuple[Tensor, Tensor | None]],
                 labels: Tensor, final_logits: Tensor | None, chunk_size: int):
        self.lens, self.module, self.inputs, self.labels, self.chunk_size = lens, module, inputs, labels, chunk_size
        self.final_probs = self.final_entropy = None
        if final_logits is not None:  # the targets are fixed: take their softmax and entropy once
            final_lps = final_logits.log_softmax(-1)
            self.final_probs = final_lps.exp()
            self.final_entropy = -(self.final_probs * final_lps).sum(-1)

    def block_sum(self, k: int, rows: Tensor) -> Tensor:
        inputs, forwarded = self.inputs[k]
        logits = self.lens.decode(self.module, inputs[rows], None if forwarded is None else forwarded[rows])
        if self.final_probs is None:
            return F.cross_entropy(logits, self.labels[rows], reduction="sum")
        cross = -(self.final_probs[rows] * logits.log_softmax(-1)).sum(-1)
        return (cross - self.final_entropy[rows]).sum()

    def backward(self, blocks: list[int], rows: Tensor) -> dict[int, float]:
        """Accumulate the gradient of the mean over ``blocks`` of each block's mean loss; returns those means."""
        means = {}
        for k in blocks:
            total = 0.0
            # Chunks bound memory; gradients accumulate, so this is still the full-batch loss.
            for chunk in rows.split(self.chunk_size):
                loss = self.block_sum(k, chunk)
                (loss / (len(rows) * len(blocks))).backward()
                total += float(loss.detach())
            means[k] = total / len(rows)
        return means

    @torch.no_grad()
    def evaluate(self, blocks: list[int], rows: Tensor) -> dict[int, float]:
        return {k: sum(float(self.block_sum(k, c)) for c in rows.split(self.chunk_size)) / len(rows) for k in blocks}


def _minimise(module: nn.Module, objective: _Objective, blocks: list[int], rows: Tensor, weight_decay: float,
              max_iter: int) -> tuple[dict[int, float], int]:
    """L-BFGS from the module's current parameters; returns each block's mean loss and the iterations used."""
    params = list(module.parameters())
    optimizer = torch.optim.LBFGS(
        params, lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )
    losses: dict[int, float] = {}

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses.update(objective.backward(blocks, rows))
        penalty = weight_decay / 2 * sum(p.square().sum() for p in params)
        penalty.backward()
        return penalty.detach() + sum(losses.values()) / len(blocks)

    optimizer.step(closure)
    iterations = optimizer.state[params[0]].get("n_iter", 0)
    with torch.no_grad():
        losses = objective.evaluate(blocks, rows)
    return losses, iterations


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


def validation_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of ``range(n)`` into (fit rows, validation rows), both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"{n} fit images are too few to hold out a validation slice; fix --weight-decay instead")
    return order[n_val:].sort().values, order[:n_val].sort().values


def fit_lens(
    lens: SavedLens,
    features: list[Tensor],
    labels: Tensor,
    final_logits: Tensor | None = None,
    settings: FitSettings = FitSettings(),
    desc: str = "fit",
) -> list[dict | None]:
    """Fit ``lens``; returns for each block a record of its fit (None where nothing was fitted).

    With ``final_logits`` the loss is KL(model output || lens), as tuned-lens
    trains; otherwise cross-entropy against ``labels``. Each module of
    ``lens.fit_groups()`` is fitted on the mean loss of its blocks (one block
    for a per-block translator, all of them for a shared one), with the
    penalty ``weight_decay / 2 * |params|^2``. A record holds the chosen
    ``weight_decay``, the validation loss at every grid value (nats), the
    final training loss (nats, without the penalty) and the L-BFGS iterations.
    """
    device = next(lens.parameters()).device
    labels = labels.to(device)
    rows = torch.arange(len(labels), device=device)
    if final_logits is None:  # label-trained: unlabelled images (label -1) carry no target
        rows = rows[labels >= 0]
    chosen_on_validation = settings.weight_decay is None
    if chosen_on_validation:
        fit_part, val_part = validation_split(len(rows), settings.validation_fraction, settings.seed)
        fit_rows, val_rows = rows[fit_part.to(device)], rows[val_part.to(device)]
    final_logits = None if final_logits is None else final_logits.to(device)
    # Statistics of the rows that choose the penalty: the validation rows stay unseen until scored.
    statistics = input_statistics(lens, features, fit_rows if chosen_on_validation else rows)
    records: list[dict | None] = [None] * len(features)
    lens.train()
    for module, blocks in tqdm(lens.fit_groups(), desc=desc, unit="translator", dynamic_ncols=True):
        with torch.no_grad():  # what the translator reads is fixed: carry each block once
            inputs = {k: lens.fit_inputs(features[k].to(device), k) for k in blocks}
        module.standardize(*statistics[blocks[0]])
        objective = _Objective(lens, module, inputs, labels, final_logits, settings.chunk_size)
        record: dict = {"blocks": len(blocks)}
        weight_decay = settings.weight_decay
        if chosen_on_validation:
            validation, states = {}, {}
            for wd in sorted(settings.penalty_grid, reverse=True):  # strong to weak: each warm-starts the next
                _minimise(module, objective, blocks, fit_rows, wd, settings.max_iter)
                val = objective.evaluate(blocks, val_rows)
                validation[wd] = sum(val.values()) / len(blocks)
                states[wd] = {n: p.detach().clone() for n, p in module.state_dict().items()}
            weight_decay = min(validation, key=validation.get)
            module.load_state_dict(states[weight_decay])
            record["validation_loss_nats"] = {repr(wd): v for wd, v in validation.items()}
        losses, iterations = _minimise(module, objective, blocks, rows, weight_decay, settings.max_iter)
        record |= {"weight_decay": weight_decay, "iterations": iterations}
        for k in blocks:
            records[k] = record | {"loss_nats": losses[k]}
    lens.eval()
    return records
