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
slowly on small fit splits, where the weak penalties are ill-conditioned. Each
solve runs in coordinates scaled by a Kronecker model of its Hessian (see
:class:`_Problem`), which takes it to its tolerance in tens of iterations.
``SOLVE_PARAMETERS`` bounds how many parameters one solve holds, so that
ImageNet-sized translators are solved a few at a time.

Where the unembedding is not affine (a final LayerNorm before the head, as in a
ViT or a language model), no head can be folded into the weights. There
:func:`_fit_through_decoder` minimises the same penalised objective, with the
same penalty grid chosen on the same validation slice, by full-batch L-BFGS
on gradients from autograd through the unembedding: slower, and no longer
convex, but it reaches the fast solver's optimum where both apply (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .errors import OptionError
from .lenses import SavedLens

PENALTY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
SOLVE_PARAMETERS = 2**24  # per solve; L-BFGS keeps about 45 copies (history 20)
CHUNK_ELEMENTS = 2**25  # logits held at once in a pass over the rows
REFRESH_ITERATIONS = 25  # L-BFGS iterations between rebuilds of a solve's coordinates
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
        return self._losses(logits.log_softmax(1), images)

    def losses_and_gradients(self, logits: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`losses`, and their gradients with respect to ``logits``: softmax minus target, ``(G, C, r)``."""
        log_probs = logits.log_softmax(1)
        losses, gradients = self._losses(log_probs, images), log_probs.exp()
        if self.probs is None:  # the label's probability is exp(-loss)
            gradients.scatter_(1, self._labels(images, len(logits)), (-losses).exp()[:, None] - 1)
            return losses, gradients
        return losses, gradients.sub_(self.probs[:, images])

    def _labels(self, images: Tensor, modules: int) -> Tensor:
        return self.labels[images].expand(modules, 1, -1)

    def _losses(self, log_probs: Tensor, images: Tensor) -> Tensor:
        if self.probs is None:
            return -log_probs.gather(1, self._labels(images, len(log_probs)))[:, 0]
        return -(log_probs * self.probs[:, images]).sum(1) - self.entropy[images]

    def mean(self, images: Tensor, classes: int) -> Tensor:
        """The mean target distribution over ``images``: ``(C,)``."""
        if self.probs is None:
            return torch.bincount(self.labels[images], minlength=classes).float() / len(images)
        return self.probs[:, images].mean(1)


def _logits(weight: Tensor, inputs: Tensor, bias: Tensor | None = None, base: Tensor | None = None):
    """``weight @ inputs (+ bias) (+ base)`` in chunks of rows: yields (rows, logits ``(G, C, r)``).

    Classes lie along the middle dimension and rows along the last, so the softmax runs over long contiguous
    rows (3x faster for 10 classes than classes last)."""
    size = max(1, CHUNK_ELEMENTS // (weight.shape[0] * weight.shape[1]))
    for start in range(0, inputs.shape[2], size):
        rows = slice(start, start + size)
        logits = torch.bmm(weight, inputs[:, :, rows])
        if bias is not None:
            logits += bias[..., None]
        if base is not None:
            logits += base[:, :, rows]
        yield rows, logits


@torch.no_grad()
def block_losses(targets: _Targets, images: Tensor, inputs: Tensor, base: Tensor | None, head: Tensor | None,
                 weight: Tensor, bias: Tensor) -> Tensor:
    """Mean loss (nats) per module and block of modules ``weight`` ``(G, out, D)``, ``bias`` ``(G, out)`` on
    ``inputs`` ``(G, D, R)`` (row ``j * n + i`` shows ``images[i]`` at a module's ``j``-th block): ``(G, blocks)``."""
    if head is not None:  # straight to logits, never through the head's wider input space
        weight, bias = torch.einsum("co,god->gcd", head, weight), bias @ head.T
    blocks = inputs.shape[2] // len(images)
    images = images.repeat(blocks)
    losses = torch.cat([targets.losses(logits, images[rows]) for rows, logits in _logits(weight, inputs, bias, base)], 1)
    return losses.view(len(weight), blocks, -1).mean(2)


def _symmetric_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and orthonormal eigenvectors of symmetric positive semi-definite ``matrix`` (batched too).

    LAPACK's eigh can fail to converge on exactly repeated eigenvalues: the softmax curvature at a label mean
    spread evenly over 80 of 1,000 classes made it fail. For such a matrix the SVD is an eigendecomposition
    (the values in descending rather than ascending order, which no caller relies on), and it converges there.
    """
    try:
        return torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:
        vectors, values, _ = torch.linalg.svd(matrix)
        return values, vectors


def _output_basis(head: Tensor | None, targets: _Targets, images: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """``head = to_logits @ to_outputs.T``, ``to_logits`` ``(C, r)`` and ``to_outputs`` ``(out, r)`` with orthonormal
    columns along span(V) (``head = U S V^T``; no head: the identity), rotated to the eigenvectors of the softmax's
    curvature at the mean target over ``images``, as seen through ``U S``."""
    if head is None:
        left = right = torch.eye(classes, device=targets.labels.device, dtype=torch.float64)
    else:
        u, s, vh = torch.linalg.svd(head.double(), full_matrices=False)
        left, right = u * s, vh.T
    mean = targets.mean(images, classes).double()
    _, basis = _symmetric_eigh(left.T @ (torch.diag(mean) - torch.outer(mean, mean)) @ left)
    return (left @ basis).float(), (right @ basis).float()


class _Problem:
    """Modules stacked (weights ``(G, out, D)``, biases ``(G, out)``), solved together by :meth:`minimise`.

    ``inputs`` ``(G, D, R)`` are standardised, one column per row; row ``j * n + i`` of a module shows
    ``images[i]`` at its ``j``-th block; ``base`` ``(G, C, R)`` (or None) is added to the logits; ``basis``
    (:func:`_output_basis`) factors the head that maps outputs to logits.

    The loss sees a module only through ``head [A b] [x; 1]`` and the penalty is ``|[A b]|^2``, so the optimum
    lies in span(V) (``head = U S V^T``) on the output side and in the span of the rows' ``[x; 1]`` on the input
    side. L-BFGS runs in coordinates ``Z`` with ``[A b] = V P Z Q^T``: ``V P`` the output basis (curvatures
    ``omega`` at the solve's start), Q the eigenbasis of the rows' second moments, each row weighted by its
    softmax curvature at the start (``m``). The penalised objective's curvature is then about
    ``omega_i m_j + penalty`` per coordinate, and each coordinate is scaled by its square root: a change of
    variables that leaves every optimum where it is, and on correlated features and confident predictions
    reaches it in a fraction of the iterations.
    """

    def __init__(self, inputs: Tensor, base: Tensor | None, images: Tensor, targets: _Targets,
                 basis: tuple[Tensor, Tensor]):
        self.inputs, self.base, self.targets = inputs, base, targets
        self.images = images.repeat(inputs.shape[2] // len(images))
        self.to_logits, self.to_outputs = basis

    @torch.no_grad()
    def _curvature(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Under effective maps ``weight`` ``(G, C, D + 1)``: ``omega`` ``(G, r)``, the softmax's mean curvature
        along each output basis vector, and Q ``(G, D + 1, k)`` with the second moments ``m`` ``(G, k)`` of the
        rows' ``[x; 1]``, each row weighted by its softmax curvature ``1 - |p|^2``. k = D + 1, or the rows'
        count where smaller (the span of the rows: the loss is blind to the rest)."""
        g, d, rows = self.inputs.shape
        omega = torch.zeros(g, self.to_logits.shape[1], device=weight.device)
        traces = []
        for _, logits in self._chunks(weight):
            probs = logits.softmax(1)
            traces.append(1 - probs.square().sum(1))
            omega += probs.sum(2) @ self.to_logits.square() - (self.to_logits.T @ probs).square().sum(2)
        traces = torch.cat(traces, 1)
        scaled = torch.cat([self.inputs, self.inputs.new_ones(g, 1, rows)], 1)
        scaled *= (traces / traces.sum(1, keepdim=True).clamp(min=1e-30)).sqrt()[:, None]
        if rows > d + 1:
            moments, basis = _symmetric_eigh(torch.bmm(scaled, scaled.transpose(1, 2)).double())
        else:  # through the Gram matrix: its eigenvectors, mapped back, span the rows
            moments, basis = _symmetric_eigh(torch.bmm(scaled.transpose(1, 2), scaled).double())
            spanning = moments > 1e-10 * moments.amax(1, keepdim=True).clamp(min=1e-300)  # the rest map to zero
            moments = moments * spanning
            basis = torch.bmm(scaled.double(), basis) * (spanning / moments.clamp(min=1e-300).sqrt())[:, None]
        return (omega / rows).clamp(min=0), basis.float(), moments.clamp(min=0).float()

    def _chunks(self, weight: Tensor):
        """Logits of effective maps ``weight`` ``(G, C, D + 1)`` (bias last), in chunks of rows."""
        yield from _logits(weight[..., :-1], self.inputs, weight[..., -1], self.base)

    def minimise(self, weight: Tensor, bias: Tensor, penalty: Tensor, max_iter: int) -> tuple[Tensor, Tensor, int]:
        """L-BFGS on the modules' summed objectives, each its mean loss plus ``penalty / 2 |[A b]|^2`` (penalty
        ``(G,)``), from ``weight``, ``bias``; returns the optimum's weights, biases and the iterations used.

        The coordinates are rebuilt at the current point every ``REFRESH_ITERATIONS`` iterations: far from the
        start (a weak penalty on nearly separable images) the softmax's curvature shrinks by orders of magnitude.
        """
        affine = self.to_outputs.T @ torch.cat([weight, bias[..., None]], 2)  # (G, r, D + 1)
        used = 0
        while used < max_iter:
            limit = min(REFRESH_ITERATIONS, max_iter - used)
            affine, iterations = self._solve(affine, penalty, limit)
            used += iterations
            if iterations < limit:  # stopped at its tolerance
                break
        affine = self.to_outputs @ affine
        return affine[..., :-1].contiguous(), affine[..., -1].contiguous(), used

    def _solve(self, start: Tensor, penalty: Tensor, max_iter: int) -> tuple[Tensor, int]:
        """:meth:`minimise` in one set of coordinates, built at ``start`` ``(G, r, D + 1)``."""
        to_logits = self.to_logits
        curvatures, rotation, moments = self._curvature(to_logits @ start)
        curvature = curvatures[:, :, None] * moments[:, None, :] + penalty[:, None, None]
        scale = curvature.clamp(min=max(1e-8 * float(curvature.max()), 1e-30)).rsqrt()  # floor: no curvature, no penalty
        scaled = (start @ rotation / scale).requires_grad_()
        rows = self.inputs.shape[2]

        @torch.no_grad()
        def objective() -> Tensor:
            # Gradients by hand: autograd's bookkeeping cost more than the arithmetic on these small problems.
            coordinates = scaled * scale
            weight = to_logits @ coordinates @ rotation.transpose(1, 2)
            gradient, total = torch.zeros_like(weight), torch.zeros((), device=weight.device)
            for chunk, logits in self._chunks(weight):
                losses, logit_gradients = self.targets.losses_and_gradients(logits, self.images[chunk])
                total += losses.sum()
                gradient[..., :-1].baddbmm_(logit_gradients, self.inputs[:, :, chunk].transpose(1, 2))
                gradient[..., -1] += logit_gradients.sum(2)
            gradient = to_logits.T @ gradient @ rotation / rows + penalty[:, None, None] * coordinates
            scaled.grad = gradient * scale
            return total / rows + (penalty / 2 * coordinates.square().sum((1, 2))).sum()

        optimizer = torch.optim.LBFGS([scaled], lr=1, max_iter=max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
        optimizer.step(objective)
        return (scaled * scale).detach() @ rotation.transpose(1, 2), int(optimizer.state[scaled].get("n_iter", 0))


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
        raise OptionError(f"{n} fit images are too few to hold out a validation slice; fix --weight-decay instead")
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
        per_solve = max(1, SOLVE_PARAMETERS // max(1, sizes[members[0]]))  # 0: every input constant (a class token)
        plan += [members[i:i + per_solve] for i in range(0, len(members), per_solve)]
    return plan


@torch.no_grad()
def _fit_parts(lens: SavedLens, features: list[Tensor], blocks: list[int], images: Tensor | None = None
               ) -> list[tuple[Tensor, Tensor | None]]:
    """:meth:`SavedLens.fit_inputs` of each of ``blocks`` on ``images`` (every image where None)."""
    device = next(lens.parameters()).device
    return [lens.fit_inputs(features[k].to(device) if images is None else features[k].to(device)[images], k)
            for k in blocks]


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
    if not lens.decodes_linearly:
        split = (fit_rows, val_rows) if chosen_on_validation else None
        return _fit_through_decoder(lens, groups, features, targets, rows, split, settings, desc)
    # Inputs constant on the fit images of the module's standardisation group (dead units) standardise to 0 and
    # get weight 0 at the optimum: leaving them out is exact.
    columns = [module.varying.nonzero()[:, 0] for module, _ in groups]
    shapes = [(len(b), m.linear.out_features) for m, b in groups]
    basis = _output_basis(head, targets, fit_rows if chosen_on_validation else rows,
                          shapes[0][1] if head is None else len(head))
    stacks = _stacks(shapes, [len(c) for c in columns])
    width = {m: len(columns[stack[0]]) for stack in stacks for m in stack}  # a stack's inputs: its widest module's

    @torch.no_grad()  # the base logits go through the head's parameters
    def stacked(members: list[int], images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Standardised inputs and base logits of ``members`` on ``images``: ``(G, D, R)``, ``(G, C, R)``."""
        inputs, base = [], []
        for m in members:
            module, parts = groups[m][0], _fit_parts(lens, features, groups[m][1], images)
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
            problem = _Problem(*stacked(members, fit_rows), fit_rows, targets, basis)
            val_inputs, val_base = stacked(members, val_rows)
            weight = torch.zeros(len(members), shapes[members[0]][1], width[members[0]], device=device)
            bias = torch.zeros(len(members), shapes[members[0]][1], device=device)
            for p, wd in enumerate(grid):  # each solve starts from the previous (stronger) one's optimum
                weight, bias, _ = problem.minimise(weight, bias, torch.full((len(members),), wd, device=device),
                                                   settings.max_iter)
                # A module's validation loss: the mean over its blocks.
                losses = block_losses(targets, val_rows, val_inputs, val_base, head, weight, bias).mean(1).cpu()
                for i, m in enumerate(members):
                    validation[m, p] = losses[i]
                    weights[m][p] = weight[i].cpu()
                    biases[m][p] = bias[i].cpu()
                bar.update()
            del problem
        chosen = validation.argmin(1) if chosen_on_validation else torch.zeros(len(groups), dtype=torch.long)
        for members in plan:  # the chosen penalty, on every fit image, from the grid's solution
            inputs, base = stacked(members, rows)
            weight, bias, iterations = _Problem(inputs, base, rows, targets, basis).minimise(
                torch.stack([weights[m][chosen[m]] for m in members]).to(device),
                torch.stack([biases[m][chosen[m]] for m in members]).to(device),
                torch.tensor([grid[chosen[m]] for m in members], device=device), settings.max_iter)
            losses = block_losses(targets, rows, inputs, base, head, weight, bias).cpu()
            for i, m in enumerate(members):
                module, blocks = groups[m]
                with torch.no_grad():
                    module.linear.weight.zero_()
                    module.linear.weight[:, columns[m]] = weight[i, :, :len(columns[m])]
                    module.linear.bias.copy_(bias[i])
                record: dict = {"blocks": len(blocks)}
                if chosen_on_validation:
                    record["validation_loss_nats"] = {repr(wd): float(v) for wd, v in zip(grid, validation[m])}
                record |= {"weight_decay": grid[chosen[m]], "iterations": iterations}
                for j, k in enumerate(blocks):
                    records[k] = record | {"loss_nats": float(losses[i, j])}
            bar.update()
    return records



def _fit_through_decoder(lens: SavedLens, groups: list, features: list[Tensor], targets: _Targets, rows: Tensor,
                         split: tuple[Tensor, Tensor] | None, settings: FitSettings, desc: str) -> list[dict | None]:
    """:func:`fit_lens` for a lens whose logits are ``lens.decode(forwarded + translator(inputs))`` with any
    differentiable ``decode``: each module's penalised mean loss minimised by L-BFGS through autograd.

    ``split`` is ``(fit rows, validation rows)`` where the penalty is chosen on the grid, None for a fixed one.
    Modules with the same shape are solved stacked (their objectives are separable), a few at a time.
    """
    device = rows.device
    shapes = [(len(b), m.linear.in_features, m.linear.out_features) for m, b in groups]
    stacks = [[m for m in range(len(groups)) if shapes[m] == shape] for shape in dict.fromkeys(shapes)]
    plan = _solve_plan(stacks, [shape[1] * shape[2] for shape in shapes])

    def stacked(members: list[int], images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Standardised inputs ``(G, blocks * r, in)`` and what is forwarded ``(G, blocks * r, out)`` (or None)."""
        inputs, forwarded = [], []
        for m in members:
            module, parts = groups[m][0], _fit_parts(lens, features, groups[m][1], images)
            inputs.append(torch.cat([(x - module.mean) / module.scale for x, _ in parts]))
            forwarded.append(None if parts[0][1] is None else torch.cat([f for _, f in parts]))
        return torch.stack(inputs), None if forwarded[0] is None else torch.stack(forwarded)

    def chunk_losses(weight: Tensor, bias: Tensor, inputs: Tensor, forwarded: Tensor | None, images: Tensor):
        """Yields ``(rows, losses (G, r))`` over chunks of the stacked rows."""
        size = max(1, CHUNK_ELEMENTS // (len(weight) * max(weight.shape[1], lens.config.num_classes)))
        for start in range(0, inputs.shape[1], size):
            part = slice(start, start + size)
            hidden = torch.baddbmm(bias[:, None, :], inputs[:, part], weight.transpose(1, 2))
            if forwarded is not None:
                hidden = hidden + forwarded[:, part]
            yield part, targets.losses(lens.decode(hidden).transpose(1, 2), images[part])

    @torch.no_grad()
    def block_means(weight, bias, inputs, forwarded, images, blocks: int) -> Tensor:
        """Mean loss (nats) of each module on each of its blocks: ``(G, blocks)``."""
        losses = torch.cat([l for _, l in chunk_losses(weight, bias, inputs, forwarded, images)], 1)
        return losses.view(len(weight), blocks, -1).mean(2)

    def minimise(weight, bias, inputs, forwarded, images, penalty: Tensor) -> tuple[Tensor, Tensor, int]:
        weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        n = inputs.shape[1]
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=settings.max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def objective() -> Tensor:
            optimizer.zero_grad()
            total = torch.zeros((), device=device)
            for _, losses in chunk_losses(weight, bias, inputs, forwarded, images):  # backward per chunk: bounded
                loss = losses.sum() / n
                loss.backward()
                total += loss.detach()
            regulariser = (penalty / 2 * (weight.square().sum((1, 2)) + bias.square().sum(1))).sum()
            regulariser.backward()
            return total + regulariser.detach()

        optimizer.step(objective)
        return weight.detach(), bias.detach(), int(optimizer.state[weight].get("n_iter", 0))

    grid = sorted(settings.penalty_grid, reverse=True) if split is not None else [settings.weight_decay]
    records: list[dict | None] = [None] * len(features)
    with tqdm(total=len(plan) * (len(grid) * (split is not None) + 1), desc=desc + " (autograd)", unit="solve",
              dynamic_ncols=True) as bar:
        for members in plan:
            blocks, n_in, n_out = shapes[members[0]]
            weight = torch.zeros(len(members), n_out, n_in, device=device)
            bias = torch.zeros(len(members), n_out, device=device)
            validation = torch.zeros(len(members), len(grid))
            if split is not None:  # the grid, strong to weak, each solve from the previous optimum
                fit_rows, val_rows = split
                fit_inputs, fit_forwarded = stacked(members, fit_rows)
                val_inputs, val_forwarded = stacked(members, val_rows)
                solutions = []
                for p, wd in enumerate(grid):
                    weight, bias, _ = minimise(weight, bias, fit_inputs, fit_forwarded, fit_rows.repeat(blocks),
                                               torch.full((len(members),), wd, device=device))
                    validation[:, p] = block_means(weight, bias, val_inputs, val_forwarded, val_rows.repeat(blocks),
                                                   blocks).mean(1).cpu()
                    solutions.append((weight, bias))
                    bar.update()
                del fit_inputs, fit_forwarded, val_inputs, val_forwarded
                chosen = validation.argmin(1)
                weight = torch.stack([solutions[c][0][i] for i, c in enumerate(chosen.tolist())])
                bias = torch.stack([solutions[c][1][i] for i, c in enumerate(chosen.tolist())])
            else:
                chosen = torch.zeros(len(members), dtype=torch.long)
            inputs, forwarded = stacked(members, rows)  # the chosen penalty, on every fit image
            penalty = torch.tensor([grid[c] for c in chosen.tolist()], device=device)
            weight, bias, iterations = minimise(weight, bias, inputs, forwarded, rows.repeat(blocks), penalty)
            losses = block_means(weight, bias, inputs, forwarded, rows.repeat(blocks), blocks).cpu()
            del inputs, forwarded
            bar.update()
            for i, m in enumerate(members):
                module, module_blocks = groups[m]
                with torch.no_grad():
                    module.linear.weight.copy_(weight[i])
                    module.linear.bias.copy_(bias[i])
                record: dict = {"blocks": len(module_blocks), "solver": "autograd L-BFGS through the unembedding"}
                if split is not None:
                    record["validation_loss_nats"] = {repr(wd): float(v) for wd, v in zip(grid, validation[i])}
                record |= {"weight_decay": grid[chosen[i]], "iterations": iterations}
                for j, k in enumerate(module_blocks):
                    records[k] = record | {"loss_nats": float(losses[i, j])}
    return records


@dataclass(frozen=True)
class TunedLensRecipe:
    """``tuned-lens train``'s default recipe (tuned-lens 0.2.0), for the tuned and shared translators.

    Matched to ``tuned_lens/scripts/ingredients.py`` (``Optimizer``) and ``train_loop.py``: SGD with Nesterov
    momentum 0.9 at ``lr = lr_scale * (1 - momentum)`` (its undoing of PyTorch's 1 / (1 - momentum) gain), coupled
    weight decay 1e-3 on every translator parameter, ``steps`` = 250 with a linear decay to zero and no warm-up
    (``get_linear_schedule_with_warmup(opt, 0, 250)``), one gradient-norm clip at 1.0 over all the lens's
    parameters before each step, the per-block mean losses summed over blocks, KL to the model's output, and
    translators zero-initialised on the raw hidden state (no standardisation). ``images_per_step`` fit images
    take the place of its 2^18 tokens per step (drawn without replacement, reshuffled each pass, seeded). Its
    bfloat16 autocast of the lens forward is left out: float32 on every device.
    """

    steps: int = 250
    lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    clip: float = 1.0
    images_per_step: int = 1024
    seed: int = 0

    def optimizer(self, params) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr_scale * (1 - self.momentum), momentum=self.momentum,
                               nesterov=True, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (self.steps - step) / self.steps))

    def run(self, params: list[Tensor], loss_at: Callable[[int], Tensor]) -> None:
        """``steps`` optimiser steps on ``params``, the loss of step ``s`` given by ``loss_at(s)``, as
        tuned-lens's train loop takes them: backward, clip, step, zero the gradients, schedule."""
        optimizer = self.optimizer(params)
        schedule = self.scheduler(optimizer)
        for step in range(self.steps):
            loss_at(step).backward()
            torch.nn.utils.clip_grad_norm_(params, self.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            schedule.step()

    def to_dict(self) -> dict:
        return {"recipe": "tuned-lens", "optimizer": "SGD, Nesterov", "lr": self.lr_scale * (1 - self.momentum),
                "momentum": self.momentum, "weight_decay": self.weight_decay, "steps": self.steps,
                "schedule": "linear decay to 0, no warm-up", "grad_clip_norm": self.clip,
                "images_per_step": self.images_per_step, "standardised_inputs": False, "seed": self.seed}


def fit_by_recipe(lens: SavedLens, features: list[Tensor], labels: Tensor, final_logits: Tensor | None,
                  recipe: TunedLensRecipe = TunedLensRecipe(), desc: str = "fit") -> list[dict | None]:
    """Fit ``lens``'s translators by :class:`TunedLensRecipe` (KL to ``final_logits``, or CE to ``labels``); returns
    :func:`fit_lens`'s per-block records, with the final mean loss over every fit image."""
    device = next(lens.parameters()).device
    labels = labels.to(device)
    rows = torch.arange(len(labels), device=device)
    if final_logits is None:
        rows = rows[labels >= 0]
    targets = _Targets.of(labels, None if final_logits is None else final_logits.to(device).float())
    groups = lens.fit_groups()
    for module, _ in groups:  # the raw hidden state, zero-initialised: tuned-lens's translator
        module.standardize(torch.zeros_like(module.mean), torch.ones_like(module.scale))
        torch.nn.init.zeros_(module.linear.weight)
        torch.nn.init.zeros_(module.linear.bias)
    params = [p for module, _ in groups for p in module.parameters()]
    generator = torch.Generator().manual_seed(recipe.seed)
    per_pass = max(1, len(rows) // recipe.images_per_step)  # steps per pass over the fit images
    order = rows

    # What the translators read is fixed while they are fitted: computed once, on every image.
    prepared = {k: part for _, blocks in groups for k, part in zip(blocks, _fit_parts(lens, features, blocks))}

    def block_losses(module, blocks: list[int], images: Tensor) -> Tensor:
        """Mean loss (nats) of ``module`` on each of its blocks over ``images``: ``(blocks,)``."""
        means = []
        for k in blocks:
            inputs, forwarded = prepared[k]
            logits = lens.decode(lens.hidden(module, inputs[images], None if forwarded is None else forwarded[images]))
            means.append(targets.losses(logits.T[None], images)[0].mean())
        return torch.stack(means)

    def loss_at(step: int) -> Tensor:
        nonlocal order
        if step % per_pass == 0:  # a new pass over the fit images, in a new order
            order = rows[torch.randperm(len(rows), generator=generator).to(device)]
        start = (step % per_pass) * recipe.images_per_step
        images = order[start:start + recipe.images_per_step]
        return sum(block_losses(module, blocks, images).sum() for module, blocks in groups)

    with tqdm(total=1, desc=desc + f" (tuned-lens recipe, {recipe.steps} steps)", unit="fit",
              dynamic_ncols=True) as bar:
        lens.train()
        recipe.run(params, loss_at)
        lens.eval()
        bar.update()
    records: list[dict | None] = [None] * len(features)
    with torch.no_grad():
        chunk = max(1, CHUNK_ELEMENTS // max(lens.config.num_classes, *(m.linear.out_features for m, _ in groups)))
        for module, blocks in groups:
            totals = sum(block_losses(module, blocks, part) * len(part) for part in rows.split(chunk)) / len(rows)
            record = {"blocks": len(blocks), "solver": "tuned-lens recipe (SGD)", "weight_decay": recipe.weight_decay,
                      "steps": recipe.steps}
            for j, k in enumerate(blocks):
                records[k] = record | {"loss_nats": float(totals[j])}
    return records
