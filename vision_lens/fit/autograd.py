"""Autograd L-BFGS: any translator through any differentiable unembedding, to its penalised optimum.

Where the unembedding is not affine (a final LayerNorm before the head, as in a
ViT or a language model) no head can be folded into the weights, and where a
translator is not affine (the low-rank lens) its problem is no longer convex.
There this solver minimises the same penalised objective as the convex solver
(each module's mean loss plus ``penalty / 2`` times its squared parameters),
with the same penalty choice, by full-batch L-BFGS on gradients from autograd
through ``lens.decode``. Modules of one shape are stacked and run side by side
(``Translator.stacked_forward``), a few at a time. It reaches the convex
solver's optimum where both apply (tested).

Memory: a solve holds its modules' standardised inputs and what the identity
path forwards, ``(G, rows, width)`` each; logits (and the targets' distribution,
see ``targets``) exist a chunk of rows at a time, the backward pass run per chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..lenses import SavedLens
from .inputs import fit_parts, lens_device
from .selection import Solver, State, solve_plan
from .targets import Targets, chunk_rows


class AutogradSolver(Solver):
    """The modules of ``lens`` on ``features``, each stack of equal shapes solved by one L-BFGS."""

    name = "autograd"

    def __init__(self, lens: SavedLens, features: list[Tensor], targets: Targets):
        self.lens, self.features, self.targets = lens, features, targets
        self.device = lens_device(lens)
        self.groups = lens.fit_groups()
        self.blocks = [blocks for _, blocks in self.groups]
        modules = [module for module, _ in self.groups]
        shapes = [(len(b), type(m.core), len(m.mean), tuple((n, p.shape) for n, p in m.core.named_parameters()))
                  for m, b in self.groups]
        found = [[m for m in range(len(modules)) if shapes[m] == shape] for shape in dict.fromkeys(shapes)]
        # A solve's size is its modules' matrix entries (biases aside).
        sizes = [sum(p.numel() for p in m.core.parameters() if p.dim() > 1) for m in modules]
        self._plan = solve_plan(found, sizes)
        self.outputs = [m.out_features for m in modules]

    def plan(self) -> list[list[int]]:
        return self._plan

    def start(self, members: list[int]) -> State:
        return self.groups[members[0]][0].stacked_parameters([self.groups[m][0] for m in members])

    @torch.no_grad()
    def problem(self, members: list[int], rows: Tensor) -> tuple:
        """Standardised inputs ``(G, blocks * r, in)``, what is forwarded ``(G, blocks * r, out)`` (or None), and
        each stacked row's row index."""
        inputs, forwarded = [], []
        for m in members:
            module, parts = self.groups[m][0], fit_parts(self.lens, self.features, self.groups[m][1], rows)
            inputs.append(torch.cat([module.standardized(x) for x, _ in parts]))
            forwarded.append(None if parts[0][1] is None else torch.cat([f for _, f in parts]))
        return (members, torch.stack(inputs), None if forwarded[0] is None else torch.stack(forwarded),
                rows.repeat(len(self.groups[members[0]][1])))

    def _chunk_losses(self, problem: tuple, state: State):
        """Yields ``losses (G, r)`` over chunks of the stacked rows."""
        members, inputs, forwarded, rows = problem
        module = self.groups[members[0]][0]
        size = chunk_rows(max(self.outputs[members[0]], self.lens.config.num_classes), len(members))
        for start in range(0, inputs.shape[1], size):
            part = slice(start, start + size)
            hidden = module.stacked_forward(state, inputs[:, part])
            if forwarded is not None:
                hidden = hidden + forwarded[:, part]
            yield self.targets.losses(self.lens.decode(hidden).transpose(1, 2), rows[part])

    def minimise(self, problem: tuple, state: State, penalty: Tensor, max_iter: int) -> tuple[State, int]:
        params = {name: value.clone().requires_grad_() for name, value in state.items()}
        first = next(iter(params.values()))
        rows = problem[1].shape[1]
        optimizer = torch.optim.LBFGS(list(params.values()), lr=1, max_iter=max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def objective() -> Tensor:
            optimizer.zero_grad()
            total = torch.zeros((), device=self.device)
            for losses in self._chunk_losses(problem, params):  # backward per chunk: memory bounded
                loss = losses.sum() / rows
                loss.backward()
                total += loss.detach()
            squares = [p.square().sum(tuple(range(1, p.dim()))) for p in params.values()]
            squared = squares[0]
            for more in squares[1:]:
                squared = squared + more
            regulariser = (penalty / 2 * squared).sum()
            regulariser.backward()
            return total + regulariser.detach()

        optimizer.step(objective)
        steps = int(optimizer.state[first].get("n_iter", 0))
        return {name: value.detach() for name, value in params.items()}, steps

    @torch.no_grad()
    def losses(self, problem: tuple, state: State) -> Tensor:
        losses = torch.cat(list(self._chunk_losses(problem, state)), 1)
        return losses.view(len(problem[0]), len(self.groups[problem[0][0]][1]), -1).mean(2)

    def write(self, members: list[int], state: State) -> None:
        for i, m in enumerate(members):
            self.groups[m][0].load_stacked(state, i)
