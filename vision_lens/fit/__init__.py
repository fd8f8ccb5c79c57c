"""Lens fitting on cached features, generic over a lens's translators.

A lens is fitted to its targets (:mod:`.targets`: the model's output or the
labels) by one of the fitters its kind declares (``lens_kinds.SOLVERS``):

* :func:`fit_lens`, the default: every module to its penalised optimum, the
  penalty chosen per module on a validation slice of the fit split
  (:mod:`.selection`, one routine for every solver), by the convex solver
  (:mod:`.convex`, the fast path for affine translators through an affine head)
  or by autograd L-BFGS (:mod:`.autograd`, any translator, any differentiable
  head);
* :func:`fit_by_recipe`: tuned-lens's own recipe (:mod:`.recipe`).

Every fit leaves a :class:`FitRecord` per block. Memory stays flat in the
number of classes times rows: targets and logits are computed a chunk of rows
at a time (see :mod:`.targets` and each solver's docstring).
"""

from __future__ import annotations

from .optimum import fit_lens
from .recipe import TunedLensRecipe, fit_by_recipe
from .records import PENALTY_GRID, FitRecord, FitSettings
from .selection import validation_split
from .targets import ModelOutput

__all__ = ["PENALTY_GRID", "FitRecord", "FitSettings", "ModelOutput", "TunedLensRecipe", "fit_by_recipe",
           "fit_lens", "validation_split"]
