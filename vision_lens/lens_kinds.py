"""The lens-kind registry: what each kind of lens is, declared once, read by every stage.

A kind declares what it is fitted to, whether its translators transfer between blocks, which fitters
can fit it, and how it is named and drawn. The command line (``--lenses``, ``compare --lens-types``),
the fitting loop, evaluation, the figures, ``compare``, the frontier and ``run.json`` read these
declarations; none of them names a kind. The lens math lives in the class named by
``implementation`` (``vision_lens.lenses``), imported on first use: this module loads no torch, so
that ``vision-lens --help`` answers at once.

A new kind is one file in ``vision_lens/lenses/`` plus one ``register_lens_kind`` call below (a kind
outside the package calls it when its module is imported); see docs/development.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import OptionError

# The fitters, by name (vision_lens.fit). "convex" is the fast path, for an affine translator read through an
# affine head; "autograd" takes any differentiable head and any translator; "recipe" is tuned-lens's trainer.
SOLVERS = {
    "convex": "batched convex solver: L-BFGS in preconditioned coordinates (affine translator, affine head)",
    "autograd": "L-BFGS with autograd gradients through any differentiable unembedding, over any translator",
    "recipe": "tuned-lens train's default recipe: SGD with Nesterov momentum, 250 steps, weight decay 1e-3",
}
# What a kind is fitted to: the model's output distribution (KL, as tuned-lens; the labels under --loss ce), the
# labels always, or nothing (the logit lens has no parameters).
FITTED_TO = ("output", "labels", None)


@dataclass(frozen=True)
class LensKind:
    """One kind of lens, as every stage sees it.

    Attributes:
        name: the key in ``aggregate_metrics.json``, ``lenses/<name>/`` and ``--lenses``.
        label: its name in legends and tables.
        style: its matplotlib line style where several lenses share a colour.
        implementation: ``"module:Class"`` under ``vision_lens``, the ``SavedLens`` subclass that holds its math.
        fitted_to: ``"output"`` (the model's output distribution: KL, or the labels under ``--loss ce``),
            ``"labels"``, or None (nothing to fit).
        transfers: its translators live in one space, so each is evaluated on every other block too
            (``layer_transfer``).
        solvers: the fitters that can fit it (``SOLVERS``); the contract tests check each one against a
            reference optimum.
        default: fitted by ``train`` and ``run`` unless ``--lenses`` names the kinds (for a kind with nothing to
            fit: evaluated by every run).
        description: one line, for ``--help`` and the docs.
    """

    name: str
    label: str
    style: str
    implementation: str
    fitted_to: str | None
    transfers: bool
    solvers: tuple[str, ...]
    default: bool = True
    description: str = ""

    @property
    def fitted(self) -> bool:
        return self.fitted_to is not None

    def lens_class(self) -> type:
        """The class that implements the kind (imports its module, and torch)."""
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module, __package__), name)

    def optimum_solver(self, decodes_linearly: bool) -> str:
        """The fitter of the default fit (each module at its held-out optimum): the convex fast path where this
        kind allows it and the lens decodes through an affine head, else autograd."""
        if decodes_linearly and "convex" in self.solvers:
            return "convex"
        if "autograd" in self.solvers:
            return "autograd"
        raise OptionError(f"the {self.name} lens declares no fitter for this head (solvers: "
                          f"{', '.join(self.solvers) or 'none'}); register it with 'autograd' among its solvers")


_KINDS: dict[str, LensKind] = {}


def register_lens_kind(kind: LensKind) -> LensKind:
    """Add ``kind`` to the registry; a name taken, an unknown solver or target is refused (ValueError)."""
    if kind.name in _KINDS:
        raise ValueError(f"lens kind {kind.name!r} is registered already ({_KINDS[kind.name].implementation})")
    unknown = [s for s in kind.solvers if s not in SOLVERS]
    if unknown or kind.fitted_to not in FITTED_TO or (kind.fitted and not kind.solvers):
        raise ValueError(f"lens kind {kind.name!r}: solvers must be among {', '.join(SOLVERS)} (got "
                         f"{', '.join(kind.solvers) or 'none'}) and fitted_to one of {FITTED_TO}")
    _KINDS[kind.name] = kind
    return kind


def lens_kinds() -> list[LensKind]:
    """Every registered kind, in registration order (the order of the result files and the figures)."""
    return list(_KINDS.values())


def lens_kind(name: str) -> LensKind:
    """The kind registered as ``name``; an OptionError naming the registered ones otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise OptionError(f"no lens kind {name!r}; the kinds are {', '.join(_KINDS)}") from None


def kind_names(names=None) -> list[str]:
    """``names`` (checked) in registry order; None: the kinds that ``train`` and ``run`` fit by default."""
    if names is None:
        return [k.name for k in _KINDS.values() if k.default and k.fitted]
    wanted = {lens_kind(name).name for name in names}
    return [name for name in _KINDS if name in wanted]


register_lens_kind(LensKind(
    "tuned", "tuned lens", "-", ".lenses.tuned:TunedLens", "output", transfers=True,
    solvers=("convex", "autograd", "recipe"),
    description="an affine translator per block, residual around the identity path, then the model's unembedding"))
register_lens_kind(LensKind(
    "shared", "shared tuned lens", "-.", ".lenses.shared:SharedTunedLens", "output", transfers=False,
    solvers=("convex", "autograd", "recipe"),
    description="one affine translator for every block with an identity path (the test of a shared stream)"))
register_lens_kind(LensKind(
    "logit", "logit lens", "--", ".lenses.logit:LogitLens", None, transfers=False, solvers=(),
    description="the model's unembedding applied to what the identity path carries from the block"))
register_lens_kind(LensKind(
    "linear_probe", "linear probe", ":", ".lenses.probe:LinearProbe", "labels", transfers=False,
    solvers=("convex", "autograd"),
    description="softmax regression on the whole block, trained on the labels (Alain & Bengio)"))
register_lens_kind(LensKind(
    "low_rank", "low-rank tuned lens", (0, (3, 1, 1, 1, 1, 1)), ".lenses.low_rank:LowRankTunedLens", "output",
    transfers=True, solvers=("autograd", "recipe"), default=False,
    description="a tuned lens whose translators have rank at most 16 (not convex: fitted by autograd or the recipe)"))
