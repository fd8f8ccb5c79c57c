"""The convex fast path: affine translators through an affine head, every module at every penalty side by side.

Each module (a translator, or a probe's softmax regression) is an affine map on
standardised features, followed by a fixed affine head (the model's unembedding;
none for the probe) and a softmax: a convex problem. The modules' problems are
separable, so L-BFGS minimises their sum at once and each module reaches the
optimum it would reach alone. Modules with the same outputs are stacked
(narrower inputs padded with zeros, which leaves each optimum as it is), so one
batched matrix product per pass serves them all, and logits are computed as
``x (U A)^T``, never in the head's wider input space. Each solve runs in
coordinates scaled by a Kronecker model of its Hessian (see :class:`_Problem`),
which takes it to its tolerance in tens of iterations. ``SOLVE_PARAMETERS``
bounds how many parameters one solve holds, so that ImageNet-sized translators
are solved a few at a time.

Memory: a solve holds its modules' standardised inputs ``(G, D, rows)`` and, with
an identity path, the logit lens's logits ``(G, C, rows)`` of its rows; the
logits of a pass are computed ``CHUNK_ELEMENTS`` at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lenses import SavedLens
from .inputs import fit_parts, lens_device
from .selection import Solver, State, solve_plan
from .targets import CHUNK_ELEMENTS, Targets

REFRESH_ITERATIONS = 25  # L-BFGS iterations between rebuilds of a solve's coordinates
STACK_FILL = 0.75  # modules stack when their active inputs are within this fraction of the stack's widest


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
def block_losses(targets: Targets, images: Tensor, inputs: Tensor, base: Tensor | None, head: Tensor | None,
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


def _output_basis(head: Tensor | None, targets: Targets, images: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """``head = to_logits @ to_outputs.T``, ``to_logits`` ``(C, r)`` and ``to_outputs`` ``(out, r)`` with orthonormal
    columns along span(V) (``head = U S V^T``; no head: the identity), rotated to the eigenvectors of the softmax's
    curvature at the mean target over ``images``, as seen through ``U S``."""
    if head is None:
        left = right = torch.eye(classes, device=targets.device, dtype=torch.float64)
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

    def __init__(self, inputs: Tensor, base: Tensor | None, images: Tensor, targets: Targets,
                 basis: tuple[Tensor, Tensor]):
        self.inputs, self.base, self.targets, self.rows = inputs, base, targets, images
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



def stacks(shapes: list[tuple[int, int]], active: list[int]) -> list[list[int]]:
    """Modules solved stacked: equal (blocks, outputs) and active input counts of at least ``STACK_FILL`` times
    the stack's largest, the others padded with zero inputs; largest first."""
    found: list[list[int]] = []
    for shape in dict.fromkeys(shapes):
        for m in sorted((m for m, s in enumerate(shapes) if s == shape), key=lambda m: -active[m]):
            if found and shapes[found[-1][0]] == shape and active[m] >= STACK_FILL * active[found[-1][0]]:
                found[-1].append(m)
            else:
                found.append([m])
    return found


class ConvexSolver(Solver):
    """The modules of ``lens`` (affine translators; the logits affine in their outputs) on ``features``, solved
    by :class:`_Problem`. ``basis_rows``: the rows whose mean target rotates the output basis (the rows that
    choose the penalty)."""

    name = "convex"

    def __init__(self, lens: SavedLens, features: list[Tensor], targets: Targets, basis_rows: Tensor):
        self.lens, self.features, self.targets = lens, features, targets
        self.device = lens_device(lens)
        self.groups = lens.fit_groups()
        self.blocks = [blocks for _, blocks in self.groups]
        self.head = None if lens.head is None else lens.head.weight.detach()
        # Inputs constant on the fit images of the module's standardisation group (dead units) standardise to 0
        # and get weight 0 at the optimum: leaving them out is exact.
        self.columns = [module.varying.nonzero()[:, 0] for module, _ in self.groups]
        self.shapes = [(len(b), m.core.out_features) for m, b in self.groups]
        self.basis = _output_basis(self.head, targets, basis_rows,
                                   self.shapes[0][1] if self.head is None else len(self.head))
        found = stacks(self.shapes, [len(c) for c in self.columns])
        self.width = {m: len(self.columns[stack[0]]) for stack in found for m in stack}  # a stack's widest
        self._plan = solve_plan(found, [self.shapes[m][1] * self.width[m] for m in range(len(self.groups))])

    def plan(self) -> list[list[int]]:
        return self._plan

    def start(self, members: list[int]) -> State:
        out, width = self.shapes[members[0]][1], self.width[members[0]]
        return {"weight": torch.zeros(len(members), out, width, device=self.device),
                "bias": torch.zeros(len(members), out, device=self.device)}

    @torch.no_grad()  # the base logits go through the head's parameters
    def problem(self, members: list[int], rows: Tensor) -> "_Problem":
        """Standardised inputs ``(G, D, R)`` and base logits ``(G, C, R)`` of ``members`` on ``rows``."""
        inputs, base = [], []
        for m in members:
            module, parts = self.groups[m][0], fit_parts(self.lens, self.features, self.groups[m][1], rows)
            on, pad = self.columns[m], self.width[m] - len(self.columns[m])
            inputs.append(torch.cat([F.pad((x[:, on] - module.mean[on]) / module.scale[on], (0, pad)).T
                                     for x, _ in parts], 1))
            base.append([self.lens.base_logits(f) for _, f in parts])
        if base[0][0] is None:
            return _Problem(torch.stack(inputs), None, rows, self.targets, self.basis)
        base = torch.stack([torch.cat([f.expand(len(rows), -1).T for f in fs], 1) for fs in base])
        return _Problem(torch.stack(inputs), base, rows, self.targets, self.basis)

    def minimise(self, problem: "_Problem", state: State, penalty: Tensor, max_iter: int) -> tuple[State, int]:
        weight, bias, steps = problem.minimise(state["weight"], state["bias"], penalty, max_iter)
        return {"weight": weight, "bias": bias}, steps

    def losses(self, problem: "_Problem", state: State) -> Tensor:
        return block_losses(self.targets, problem.rows, problem.inputs, problem.base, self.head, state["weight"],
                            state["bias"])

    @torch.no_grad()
    def write(self, members: list[int], state: State) -> None:
        for i, m in enumerate(members):
            linear, columns = self.groups[m][0].core, self.columns[m]
            linear.weight.zero_()
            linear.weight[:, columns] = state["weight"][i, :, :len(columns)]
            linear.bias.copy_(state["bias"][i])
