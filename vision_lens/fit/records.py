"""How a lens is fitted (``FitSettings``) and what is recorded of each fit (``FitRecord``, one type for every solver)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PENALTY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class FitSettings:
    """How every lens is fitted to its optimum.

    Attributes:
        max_iter: L-BFGS iterations per solve, of the convex solver and of autograd alike (each solve stops
            earlier at its tolerance).
        weight_decay: a fixed L2 strength; None chooses it per module from
            ``penalty_grid`` on a held-out ``validation_fraction`` of the fit images.
        seed: seeds the validation slice, and the start of a translator that starts at random (low-rank).
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


@dataclass(frozen=True)
class FitRecord:
    """One module's fit, the same for every solver (``lenses/<kind>/config.json`` holds one per block).

    Attributes:
        blocks: the blocks the module is fitted on (1 for a per-block translator, every block with an identity
            path for the shared lens).
        solver: the fitter (``lens_kinds.SOLVERS``): ``convex``, ``autograd`` or ``recipe``.
        weight_decay: the L2 strength of the final fit (chosen on the grid, fixed, or the recipe's).
        steps: optimiser steps of the final fit: L-BFGS iterations (of the solve shared by the modules solved
            together), or the recipe's SGD steps.
        loss_nats: the final mean loss on every fit image of this block (nats, without the penalty).
        validation_loss_nats: the mean validation loss at each grid strength (by ``repr`` of the strength), where
            the strength was chosen on the grid; else None.
    """

    blocks: int
    solver: str
    weight_decay: float
    steps: int
    loss_nats: float
    validation_loss_nats: dict[str, float] | None = None

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        if self.validation_loss_nats is None:
            del record["validation_loss_nats"]
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "FitRecord":
        """A record as ``to_dict`` wrote it (older folders' records are upgraded on reading, see ``schema``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})
