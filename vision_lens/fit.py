"""Lens fitting on cached features: every translator at every grid penalty, solved side by side.

Each fitted module (a translator, or a probe's softmax regression) is an affine
map on standardised features, followed by a fixed affine head (the model's
unembedding; none for the probe) and a softmax: a convex problem. The one free
choice is the strength of the L2 penalty, and no single value suits every block
and lens (the wide late blocks overfit at strengths the early ones need). So for
every module the penalty is chosen from a grid on a validation slice of the
*fit* split (never the eval split), and the module is then refitted on the
whole fit split at the chosen strength.

The modules' problems are separable, so L-BFGS minimises their sum at once and
each module reaches the optimum it would reach alone. Modules with the same
outputs are stacked (narrower inputs padded with zeros, which leaves each
optimum as it is), so one batched matrix product per pass serves them all, and
logits are computed as ``x (U A)^T``, never in the head's wider input space.
The grid is swept from strong to weak, each solve warm-started from the
previous optimum: one joint solve of all penalties from zero converged too
slowly on small fit splits, where the weak penalties are ill-conditioned. ``SOLVE_PARAMETERS``
bounds how many parameters one solve holds, so that ImageNet-sized translators
are solved a few at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .lenses import SavedLens

PENALTY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
SOLVE_PARAMETERS = 2**24  # per solve; L-BFGS keeps about 45 copies (history 20)
CHUNK_ELEMENTS = 2**25  # logits held at once in a pass over the rows
STACK_FILL = 0.75  # modules stack when their active inputs are within this fraction of the stack's widest


@dataclass
class FitSettings:
    """How every lens is fitted.

    Attributes:
        max_iter: L-BFGS iterations per solve (each solve stops earlier at its tolerance).
        weight_decay: a fixed L2 strength; None chooses it per module from
            ``penalty_grid`` on a held-out ``validation_fraction`` of the fit images.
        seed: seeds the validation slice.
    """

    max_iter: int = 100
    weight_decay: float | None = None
    penalty_grid: tuple[float, ...] = PENALTY_GRID
    validation_fraction: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return {
            "max_iter": self.max_iter,
            "weight_decay": "chosen on validation" if self.weight_decay is None else self.weight_decay,
            "penalty_grid": list(self.penalty_grid),
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }


@dataclass
class _Targets:
    """Per image: the label (CE), or the model's output distribution ``(C, N)`` and its entropy (KL)."""

    labels: Tensor
    probs: Tensor | None = None
    entropy: Tensor | None = None

    @classmethod
    def of(cls, labels: Tensor, final_logits: Tensor | None) -> "_Targets":
        if final_logits is None:
            return cls(labels)
        log_probs = final_logits.log_softmax(-1)
        return cls(labels, log_probs.exp().T.contiguous(), -(log_probs.exp() * log_probs).sum(-1))

    def losses(self, logits: Tensor, images: Tensor) -> Tensor:
        """Loss (nats) of ``logits`` ``(G, C, r)`` whose columns show ``images`` ``(r,)``: ``(G, r)``."""
        log_probs = logits.log_softmax(1)
        if self.probs is None:
            return -log_probs.gather(1, self.labels[images].expand(len(logits), 1, -1))[:, 0]
        return -(log_probs * self.probs[:, images]).sum(1) - self.entropy[images]


class _Solve:
    """Modules stacked, each with its own penalty ``(G,)``: weights ``(G, out, D)``, biases ``(G, out)``.

    ``inputs`` ``(G, D, R)`` are standardised, one column per row; ``base`` ``(G, C, R)`` (or None) is added to
    the logits. Row ``j * n + i`` of a module shows image ``images[i]`` at the module's ``j``-th block.
    ``head`` ``(C, out)`` maps outputs to logits (None: outputs are logits). Classes lie along a middle
    dimension, rows along the last, so the softmax runs over long contiguous rows (3x faster for 10 classes).
    """

    def __init__(self, inputs: Tensor, base: Tensor | None, images: Tensor, targets: _Targets,
                 head: Tensor | None, weight: Tensor, bias: Tensor, penalty: Tensor):
        self.inputs, self.base, self.targets, self.head = inputs, base, targets, head
        self.blocks = inputs.shape[2] // len(images)
        self.images = images.repeat(self.blocks)
        self.weight, self.bias, self.penalty = weight, bias, penalty
        g, out = weight.shape[:2]
        classes = out if head is None else head.shape[0]
        size = max(1, CHUNK_ELEMENTS // (g * classes))
        self.chunks = [slice(s, s + size) for s in range(0, inputs.shape[2], size)]

    def effective(self) -> tuple[Tensor, Tensor]:
        """Weights and biases from standardised inputs straight to logits: ``(G, C, D)``, ``(G, C)``."""
        if self.head is None:
            return self.weight, self.bias
        return torch.einsum("co,god->gcd", self.head, self.weight), self.bias @ self.head.T

    def row_losses(self, weight: Tensor, bias: Tensor, rows: slice) -> Tensor:
        """Loss (nats) per module and row of ``rows``, ``(G, r)``, of the effective maps."""
        logits = torch.bmm(weight, self.inputs[:, :, rows]) + bias[..., None]
        if self.base is not None:
            logits = logits + self.base[:, :, rows]
        return self.targets.losses(logits, self.images[rows])

    def minimise(self, max_iter: int) -> int:
        """L-BFGS on the sum over modules, in place; returns the iterations used."""
        self.weight.requires_grad_(), self.bias.requires_grad_()
        optimizer = torch.optim.LBFGS([self.weight, self.bias], lr=1, max_iter=max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
        rows = self.inputs.shape[2]

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            weight, bias = self.effective()
            # The chunks backpropagate into the effective maps; those go through the head once.
            leaves = weight.detach().requires_grad_(), bias.detach().requires_grad_()
            total = torch.zeros((), device=weight.device)
            for chunk in self.chunks:
                loss = self.row_losses(*leaves, chunk).sum() / rows
                loss.backward()
                total += loss.detach()
            torch.autograd.backward([weight, bias], [leaves[0].grad, leaves[1].grad])
            penalty = (self.penalty / 2 * (self.weight.square().sum((1, 2)) + self.bias.square().sum(1))).sum()
            penalty.backward()
            return total + penalty.detach()

        optimizer.step(closure)
        return int(optimizer.state[self.weight].get("n_iter", 0))

    @torch.no_grad()
    def block_losses(self) -> Tensor:
        """Mean loss (nats) per module and block: ``(G, blocks)``."""
        losses = torch.cat([self.row_losses(*self.effective(), chunk) for chunk in self.chunks], 1)
        return losses.view(len(losses), self.blocks, -1).mean(2)


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


def _stacks(shapes: list[tuple[int, int]], active: list[int]) -> list[list[int]]:
    """Modules solved stacked: equal (blocks, outputs) and active input counts of at least ``STACK_FILL`` times
    the stack's largest, the others padded with zero inputs; largest first."""
    stacks: list[list[int]] = []
    for shape in dict.fromkeys(shapes):
        for m in sorted((m for m, s in enumerate(shapes) if s == shape), key=lambda m: -active[m]):
            if stacks and shapes[stacks[-1][0]] == shape and active[m] >= STACK_FILL * active[stacks[-1][0]]:
                stacks[-1].append(m)
            else:
                stacks.append([m])
    return stacks


def _solve_plan(stacks: list[list[int]], sizes: list[int]) -> list[list[int]]:
    """The modules of each solve: a stack, split to keep each solve within ``SOLVE_PARAMETERS`` (``sizes``:
    parameters per module; a module over the budget is solved alone)."""
    plan = []
    for members in stacks:
        per_solve = max(1, SOLVE_PARAMETERS // sizes[members[0]])
        plan += [members[i:i + per_solve] for i in range(0, len(members), per_solve)]
    return plan


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
    final training loss (nats, without the penalty) and the L-BFGS iterations
    of the final solve (shared by the modules solved together).
    """
    device = next(lens.parameters()).device
    labels = labels.to(device)
    rows = torch.arange(len(labels), device=device)
    if final_logits is None:  # label-trained: unlabelled images (label -1) carry no target
        rows = rows[labels >= 0]
    targets = _Targets.of(labels, None if final_logits is None else final_logits.to(device).float())
    chosen_on_validation = settings.weight_decay is None
    if chosen_on_validation:
        fit_part, val_part = validation_split(len(rows), settings.validation_fraction, settings.seed)
        fit_rows, val_rows = rows[fit_part.to(device)], rows[val_part.to(device)]
    # Statistics of the rows that choose the penalty: the validation rows stay unseen until scored.
    statistics = input_statistics(lens, features, fit_rows if chosen_on_validation else rows)
    head = None if lens.head is None else lens.head.weight.detach()
    groups = lens.fit_groups()
    for module, blocks in groups:
        module.standardize(*statistics[blocks[0]])
    # Inputs constant on the fit images of the module's standardisation group (dead units) standardise to 0 and
    # get weight 0 at the optimum: leaving them out is exact.
    columns = [module.varying.nonzero()[:, 0] for module, _ in groups]
    shapes = [(len(b), m.linear.out_features) for m, b in groups]
    stacks = _stacks(shapes, [len(c) for c in columns])
    width = {m: len(columns[stack[0]]) for stack in stacks for m in stack}  # a stack's inputs: its widest module's

    @torch.no_grad()
    def stacked(members: list[int], images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Standardised inputs and base logits of ``members`` on ``images``: ``(G, D, R)``, ``(G, C, R)``."""
        inputs, base = [], []
        for m in members:
            module, blocks = groups[m]
            parts = [lens.fit_inputs(features[k].to(device)[images], k) for k in blocks]
            on, pad = columns[m], width[m] - len(columns[m])
            inputs.append(torch.cat([F.pad((x[:, on] - module.mean[on]) / module.scale[on], (0, pad)).T
                                     for x, _ in parts], 1))
            base.append([lens.base_logits(f) for _, f in parts])
        if base[0][0] is None:
            return torch.stack(inputs), None
        return torch.stack(inputs), torch.stack([torch.cat([f.expand(len(images), -1).T for f in fs], 1)
                                                 for fs in base])

    grid = sorted(settings.penalty_grid, reverse=True) if chosen_on_validation else [settings.weight_decay]
    records: list[dict | None] = [None] * len(features)
    weights = [torch.zeros(len(grid), shapes[m][1], width[m]) for m in range(len(groups))]
    biases = [torch.zeros(len(grid), shapes[m][1]) for m in range(len(groups))]
    validation = torch.zeros(len(groups), len(grid))
    sizes = [shapes[m][1] * width[m] for m in range(len(groups))]
    plan = _solve_plan(stacks, sizes)
    with tqdm(total=len(plan) * (len(grid) * chosen_on_validation + 1), desc=desc, unit="solve",
              dynamic_ncols=True) as bar:
        for members in plan if chosen_on_validation else []:  # the grid, strong to weak, on the fit part
            out, d = shapes[members[0]][1], width[members[0]]
            inputs, base = stacked(members, fit_rows)
            val_inputs, val_base = stacked(members, val_rows)
            weight = torch.zeros(len(members), out, d, device=device)
            bias = torch.zeros(len(members), out, device=device)
            for p, wd in enumerate(grid):  # each solve starts from the previous (stronger) one's optimum
                solve = _Solve(inputs, base, fit_rows, targets, head, weight, bias,
                               torch.full((len(members),), wd, device=device))
                solve.minimise(settings.max_iter)
                weight, bias = solve.weight.detach(), solve.bias.detach()
                scored = _Solve(val_inputs, val_base, val_rows, targets, head, weight, bias, solve.penalty)
                losses = scored.block_losses().mean(1).cpu()  # a module's loss: the mean over its blocks
                for i, m in enumerate(members):
                    validation[m, p] = losses[i]
                    weights[m][p] = weight[i].cpu()
                    biases[m][p] = bias[i].cpu()
                weight, bias = weight.clone(), bias.clone()
                bar.update()
        chosen = validation.argmin(1) if chosen_on_validation else torch.zeros(len(groups), dtype=torch.long)
        for members in plan:  # the chosen penalty, on every fit image, from the grid's solution
            solve = _Solve(*stacked(members, rows), rows, targets, head,
                           torch.stack([weights[m][chosen[m]] for m in members]).to(device),
                           torch.stack([biases[m][chosen[m]] for m in members]).to(device),
                           torch.tensor([grid[chosen[m]] for m in members], device=device))
            iterations = solve.minimise(settings.max_iter)
            losses = solve.block_losses().cpu()
            for i, m in enumerate(members):
                module, blocks = groups[m]
                with torch.no_grad():
                    module.linear.weight.zero_()
                    module.linear.weight[:, columns[m]] = solve.weight[i, :, :len(columns[m])]
                    module.linear.bias.copy_(solve.bias[i])
                record: dict = {"blocks": len(blocks)}
                if chosen_on_validation:
                    record["validation_loss_nats"] = {repr(wd): float(v) for wd, v in zip(grid, validation[m])}
                record |= {"weight_decay": grid[chosen[m]], "iterations": iterations}
                for j, k in enumerate(blocks):
                    records[k] = record | {"loss_nats": float(losses[i, j])}
            bar.update()
    return records

