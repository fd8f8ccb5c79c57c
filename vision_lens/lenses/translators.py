"""Translators: the trainable maps of a lens, each a function of standardised inputs.

A translator standardises its inputs (``mean`` and ``scale``, set once from the
fit images, see ``SavedLens.standardization_groups``) and applies its ``core``,
the module whose parameters fitting optimises. The fitters need nothing else of
it: :meth:`Translator.stacked_forward` runs the cores of several translators of
one shape side by side (``torch.func``), so autograd L-BFGS and tuned-lens's SGD
recipe fit any core. :class:`AffineTranslator` is the affine one, which the
convex solver fits directly.

Standardising conditions L-BFGS well and makes the L2 penalty treat input
channels alike; it leaves the map affine in the raw inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Translator(nn.Module):
    """``x -> core((x - mean) / scale)``, starting at zero output: a tuned lens starts as the logit lens, and weight
    decay pulls towards it."""

    def __init__(self, n_in: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        # Which inputs vary on the fit images: the convex solver leaves the rest out. Fitting sets it, so it is not
        # saved (a buffer only to move with the module between devices).
        self.register_buffer("varying", torch.ones(n_in, dtype=torch.bool), persistent=False)

    @property
    def core(self) -> nn.Module:
        """The module of the parameters that fitting optimises, applied to standardised inputs."""
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        with torch.no_grad():
            return self.core(self.mean.new_zeros(1, len(self.mean))).shape[-1]

    @torch.no_grad()
    def standardize(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs by ``mean`` and ``std``; a constant input channel (std ~ 0) keeps scale 1."""
        self.varying.copy_(std > 1e-6 * std.max().clamp(min=1e-12))
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(self.varying, std, torch.ones_like(std)))

    def standardized(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.core(self.standardized(x))

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """The start of a fit: zero output (``generator`` seeds whatever a core needs at random to leave zero)."""
        for p in self.core.parameters():
            p.zero_()

    def stacked_forward(self, params: dict[str, Tensor], inputs: Tensor) -> Tensor:
        """The cores of ``G`` translators shaped like this one, side by side: ``params`` are their parameters
        stacked along a first axis (as :meth:`stacked_parameters` gives them), ``inputs`` ``(G, R, in)``
        standardised; returns ``(G, R, out)``."""
        core = self.core

        def one(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return torch.func.functional_call(core, p, (x,))

        return torch.func.vmap(one)(params, inputs)

    @staticmethod
    def stacked_parameters(translators: list["Translator"]) -> dict[str, Tensor]:
        """The cores' parameters stacked along a new first axis, by name (detached copies)."""
        names = [name for name, _ in translators[0].core.named_parameters()]
        return {name: torch.stack([dict(t.core.named_parameters())[name].detach() for t in translators])
                for name in names}

    @torch.no_grad()
    def load_stacked(self, params: dict[str, Tensor], index: int) -> None:
        """Set this translator's core to entry ``index`` of stacked ``params``."""
        for name, p in self.core.named_parameters():
            p.copy_(params[name][index])


class AffineTranslator(Translator):
    """An affine map on standardised inputs, ``x -> A (x - mean) / scale + b``, zero-initialised.

    Translators that are applied to other blocks (transfer, sharing) all use one standardisation, so that a
    translator meets another block's features in the coordinates it was fitted in.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in)
        self.linear = nn.Linear(n_in, n_out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def core(self) -> nn.Linear:
        return self.linear

    def stacked_forward(self, params: dict[str, Tensor], inputs: Tensor) -> Tensor:
        # One batched product (what torch.func's default would do in several steps).
        return torch.baddbmm(params["bias"][:, None, :], inputs, params["weight"].transpose(1, 2))
