"""The one penalty choice, for every solver: each module's L2 strength chosen on held-out fit images.

No single strength suits every block and lens (the wide late blocks overfit at
strengths the early ones need). So for every module the penalty is chosen from
a grid on a validation slice of the *fit* split (never the eval split), and the
module is then refitted on the whole fit split at the chosen strength. The grid
is swept from strong to weak, each solve warm-started from the previous optimum:
one joint solve of all penalties from zero converged too slowly on small fit
splits, where the weak penalties are ill-conditioned.

A solver (:class:`Solver`) fits several modules side by side (their objectives
are separable) and is seen here only through its methods; the convex solver and
autograd L-BFGS are two.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import OptionError
from .records import FitRecord, FitSettings

SOLVE_PARAMETERS = 2**24  # per solve; L-BFGS keeps about 45 copies (history 20)

State = dict[str, Tensor]  # the parameters of the modules of one solve, stacked along a first axis


class Solver(abc.ABC):
    """Fits the modules of a lens (``lens.fit_groups()``, by index) several at a time."""

    name: str
    device: torch.device
    blocks: list[list[int]]  # each module's blocks

    @abc.abstractmethod
    def plan(self) -> list[list[int]]:
        """The modules of each solve, in order."""

    @abc.abstractmethod
    def start(self, members: list[int]) -> State:
        """Where the first solve of ``members`` starts (their start: the logit lens where they have a path)."""

    @abc.abstractmethod
    def problem(self, members: list[int], rows: Tensor):
        """``members``' data on ``rows``, for :meth:`minimise` and :meth:`losses`."""

    @abc.abstractmethod
    def minimise(self, problem, state: State, penalty: Tensor, max_iter: int) -> tuple[State, int]:
        """Each module's mean loss plus ``penalty / 2`` times its squared parameters (``penalty`` ``(G,)``),
        minimised from ``state``; the optimum and the optimiser's steps."""

    @abc.abstractmethod
    def losses(self, problem, state: State) -> Tensor:
        """Mean loss (nats) of each module on each of its blocks: ``(G, blocks)``."""

    @abc.abstractmethod
    def write(self, members: list[int], state: State) -> None:
        """Set the modules to ``state``."""


def validation_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of ``range(n)`` into (fit rows, validation rows), both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise OptionError(f"{n} fit images are too few to hold out a validation slice; fix --weight-decay instead")
    return order[n_val:].sort().values, order[:n_val].sort().values


def solve_plan(stacks: list[list[int]], sizes: list[int]) -> list[list[int]]:
    """The modules of each solve: a stack, split to keep each solve within ``SOLVE_PARAMETERS`` (``sizes``:
    parameters per module; a module over the budget is solved alone)."""
    plan = []
    for members in stacks:
        per_solve = max(1, SOLVE_PARAMETERS // max(1, sizes[members[0]]))  # 0: every input constant (a class token)
        plan += [members[i:i + per_solve] for i in range(0, len(members), per_solve)]
    return plan


def fit_at_chosen_penalty(solver: Solver, rows: Tensor, split: tuple[Tensor, Tensor] | None, settings: FitSettings,
                          blocks: int, desc: str) -> list[FitRecord | None]:
    """Fit every module of ``solver``: at the strength chosen on ``split`` (fit rows, validation rows) from
    ``settings.penalty_grid``, or at ``settings.weight_decay`` where ``split`` is None; then on every row of
    ``rows``. Returns each of the lens's ``blocks`` blocks' record (None where no module is fitted on it)."""
    device = solver.device
    grid = sorted(settings.penalty_grid, reverse=True) if split is not None else [settings.weight_decay]
    plan = solver.plan()
    records: list[FitRecord | None] = [None] * blocks
    with tqdm(total=len(plan) * (len(grid) * (split is not None) + 1), desc=desc, unit="solve",
              dynamic_ncols=True) as bar:
        for members in plan:
            state, validation = solver.start(members), None
            chosen = [0] * len(members)
            if split is not None:  # the grid, strong to weak, each solve from the previous (stronger) one's optimum
                problem, held = solver.problem(members, split[0]), solver.problem(members, split[1])
                solutions, scores = [], []
                for wd in grid:
                    state, _ = solver.minimise(problem, state, torch.full((len(members),), wd, device=device),
                                               settings.max_iter)
                    scores.append(solver.losses(held, state).mean(1).cpu())  # a module's: the mean over its blocks
                    solutions.append({name: value.cpu() for name, value in state.items()})
                    bar.update()
                del problem, held
                validation = torch.stack(scores, 1)
                chosen = validation.argmin(1).tolist()
                state = {name: torch.stack([solutions[c][name][i] for i, c in enumerate(chosen)]).to(device)
                         for name in state}
            problem = solver.problem(members, rows)  # the chosen penalty, on every fit image
            state, steps = solver.minimise(problem, state, torch.tensor([grid[c] for c in chosen], device=device),
                                           settings.max_iter)
            losses = solver.losses(problem, state).cpu()
            del problem
            solver.write(members, state)
            bar.update()
            for i, m in enumerate(members):
                scored = None if validation is None else {repr(wd): float(v) for wd, v in zip(grid, validation[i])}
                for j, k in enumerate(solver.blocks[m]):
                    records[k] = FitRecord(len(solver.blocks[m]), solver.name, grid[chosen[i]], steps,
                                           float(losses[i, j]), scored)
    return records
