"""The default fit: every module of a lens at its penalised optimum, the penalty chosen on held-out fit images."""

from __future__ import annotations

import torch
from torch import Tensor

from ..lenses import SavedLens
from .autograd import AutogradSolver
from .convex import ConvexSolver
from .inputs import lens_device, standardize
from .records import FitRecord, FitSettings
from .selection import fit_at_chosen_penalty, validation_split
from .targets import ModelOutput, targets_of


def fit_lens(
    lens: SavedLens,
    features: list[Tensor],
    labels: Tensor,
    final_logits: Tensor | ModelOutput | None = None,
    settings: FitSettings | None = None,
    desc: str = "fit",
    solver: str | None = None,
) -> list[FitRecord | None]:
    """Fit ``lens``; returns for each block the record of its fit (None where nothing was fitted).

    With ``final_logits`` (the model's logits, ``(images, classes)``, or a
    :class:`~vision_lens.fit.targets.ModelOutput` that computes them) the loss
    is KL(model output || lens), as tuned-lens trains; otherwise cross-entropy
    against ``labels`` (images labelled ``-1`` are left out). Each module of
    ``lens.fit_groups()`` is fitted on the mean loss of its blocks (one block
    for a per-block translator, all of them for a shared one), with the
    penalty ``weight_decay / 2 * |params|^2``, from its start (``reset``).
    ``solver`` is one of the kind's declared solvers (``convex`` or
    ``autograd``); by default the convex fast path where it applies
    (``LensKind.optimum_solver``).
    """
    settings = settings or FitSettings()
    solver = solver or lens.kind.optimum_solver(lens.decodes_linearly)
    if solver not in lens.kind.solvers or solver not in ("convex", "autograd") or (
            solver == "convex" and not lens.decodes_linearly):
        raise ValueError(f"the {lens.lens_type} lens cannot be fitted to its optimum by {solver!r} here (its "
                         f"solvers: {', '.join(lens.kind.solvers)}; convex needs an affine head)")
    device = lens_device(lens)
    labels = labels.to(device)
    rows = torch.arange(len(labels), device=device)
    if final_logits is None:  # label-trained: unlabelled images (label -1) carry no target
        rows = rows[labels >= 0]
    targets = targets_of(labels, final_logits, device)
    split = None
    if settings.weight_decay is None:
        fit_part, val_part = validation_split(len(rows), settings.validation_fraction, settings.seed)
        split = rows[fit_part.to(device)], rows[val_part.to(device)]
    lens.reset(settings.seed)
    # Statistics of the rows that choose the penalty: the validation rows stay unseen until scored.
    standardize(lens, features, rows if split is None else split[0])
    if solver == "convex":
        fitter = ConvexSolver(lens, features, targets, rows if split is None else split[0])
    else:
        fitter = AutogradSolver(lens, features, targets)
    return fit_at_chosen_penalty(fitter, rows, split, settings, len(features),
                                 desc if solver == "convex" else f"{desc} ({solver})")
