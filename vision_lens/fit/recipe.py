"""``--recipe tuned-lens``: a lens's translators fitted as ``tuned-lens train`` fits them, step for step.

One loop over the translators' parameters, whatever their shape: each step
takes ``images_per_step`` fit images, computes every block's inputs for them
(nothing is prepared for every image at once) and their loss through
``lens.decode``. Memory: one step's images' inputs and logits, plus the targets
(see ``targets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..lenses import SavedLens
from .inputs import fit_parts, lens_device
from .records import FitRecord
from .targets import ModelOutput, chunk_rows, targets_of


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

    def run(self, params: list[Tensor], loss_at: Callable[[int], Tensor],
            on_step: Callable[[], object] | None = None) -> None:
        """``steps`` optimiser steps on ``params``, the loss of step ``s`` given by ``loss_at(s)``, as
        tuned-lens's train loop takes them: backward, clip, step, zero the gradients, schedule; ``on_step()`` after
        each (a progress bar's)."""
        optimizer = self.optimizer(params)
        schedule = self.scheduler(optimizer)
        for step in range(self.steps):
            loss_at(step).backward()
            torch.nn.utils.clip_grad_norm_(params, self.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            schedule.step()
            if on_step is not None:
                on_step()

    def to_dict(self) -> dict:
        return {"recipe": "tuned-lens", "optimizer": "SGD, Nesterov", "lr": self.lr_scale * (1 - self.momentum),
                "momentum": self.momentum, "weight_decay": self.weight_decay, "steps": self.steps,
                "schedule": "linear decay to 0, no warm-up", "grad_clip_norm": self.clip,
                "images_per_step": self.images_per_step, "standardised_inputs": False, "seed": self.seed}



def fit_by_recipe(lens: SavedLens, features: list[Tensor], labels: Tensor, final_logits: Tensor | ModelOutput | None,
                  recipe: TunedLensRecipe | None = None, desc: str = "fit") -> list[FitRecord | None]:
    """Fit ``lens``'s translators by :class:`TunedLensRecipe` (KL to the model's output ``final_logits``, stored or
    a :class:`~vision_lens.fit.targets.ModelOutput`; or CE to ``labels`` where it is None); returns each block's
    record, with the final mean loss over every fit image."""
    recipe = recipe or TunedLensRecipe()
    device = lens_device(lens)
    labels = labels.to(device)
    rows = torch.arange(len(labels), device=device)
    if final_logits is None:
        rows = rows[labels >= 0]
    targets = targets_of(labels, final_logits, device)
    groups = lens.fit_groups()
    for k, (module, _) in enumerate(groups):  # the raw hidden state, at its start: tuned-lens's translator
        module.standardize(torch.zeros_like(module.mean), torch.ones_like(module.scale))
        module.reset(torch.Generator().manual_seed(recipe.seed + k))
    params = [p for module, _ in groups for p in module.parameters()]
    generator = torch.Generator().manual_seed(recipe.seed)
    per_pass = max(1, len(rows) // recipe.images_per_step)  # steps per pass over the fit images
    order = rows

    def block_losses(module, blocks: list[int], images: Tensor) -> Tensor:
        """Mean loss (nats) of ``module`` on each of its blocks over ``images``: ``(blocks,)``."""
        means = []
        for inputs, forwarded in fit_parts(lens, features, blocks, images):
            logits = lens.decode(lens.hidden(module, inputs, forwarded))
            means.append(targets.row_losses(logits, images).mean())
        return torch.stack(means)

    def loss_at(step: int) -> Tensor:
        nonlocal order
        if step % per_pass == 0:  # a new pass over the fit images, in a new order
            order = rows[torch.randperm(len(rows), generator=generator).to(device)]
        start = (step % per_pass) * recipe.images_per_step
        images = order[start:start + recipe.images_per_step]
        return sum(block_losses(module, blocks, images).sum() for module, blocks in groups)

    with tqdm(total=recipe.steps, desc=desc + " (tuned-lens recipe)", unit="step", dynamic_ncols=True) as bar:
        lens.train()
        recipe.run(params, loss_at, on_step=bar.update)
        lens.eval()
    records: list[FitRecord | None] = [None] * len(features)
    with torch.no_grad():
        chunk = chunk_rows(max(lens.config.num_classes, *(m.out_features for m, _ in groups)))
        totals: list = [0] * len(groups)
        for part in rows.split(chunk):  # every module on a chunk in turn: the model's output on it computed once
            for g, (module, blocks) in enumerate(groups):
                totals[g] = totals[g] + block_losses(module, blocks, part) * len(part)
        for (module, blocks), total in zip(groups, totals):
            for j, k in enumerate(blocks):
                records[k] = FitRecord(len(blocks), "recipe", recipe.weight_decay, recipe.steps,
                                       float(total[j] / len(rows)))
    return records
