"""Contract tests over the lens-kind registry: every registered kind, with every solver it declares.

Each kind is checked on a tiny random model's real features (cifar:resnet8, whose head is affine, and
cifar:preact_resnet8, whose head is a LayerNorm then a linear layer): every declared optimum solver reaches
the optimum that a direct optimisation of the lens's own forward pass with torch reaches, the recipe is
tuned-lens's SGD on the lens's parameters, every kind that reads the unembedding starts as the logit lens,
and every kind round-trips through save and load. A kind added to the registry is picked up here.
"""

from __future__ import annotations

import copy
import json
import functools

import pytest
import torch
import torch.nn.functional as F

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder
from vision_lens.fit import FitSettings, TunedLensRecipe, fit_by_recipe, fit_lens
from vision_lens.lens_kinds import LensKind, lens_kind, lens_kinds, register_lens_kind
from vision_lens.lenses import Lens, LensFolderError, build_lenses, load_lens
from vision_lens.readout import FeatureLayout


# Each optimum solver on the head it is for: the convex one through ResNet-8's linear head, autograd through the
# pre-activation ResNet-8's LayerNorm and linear head (not convex there).
MODELS = {"convex": "cifar:resnet8", "autograd": "cifar:preact_resnet8"}
WEIGHT_DECAY = 1e-2


@functools.lru_cache(maxsize=None)
def problem(model: str, rows: int = 128, grid: int = 1):
    """A random-init model, its blocks' pooled features on random images, its logits, and labels (a few -1)."""
    adapter = create_adapter(model, weights="random", seed=0)
    layout = FeatureLayout.of(adapter.blocks, grid)
    images = torch.rand(rows, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), BlockRecorder(adapter, layout) as recorder:
        logits = adapter.logits(images)
    labels = logits.argmax(-1)  # a target a lens can learn, with some noise and a few unlabelled images
    noisy = torch.rand(rows, generator=torch.Generator().manual_seed(2)) < 0.2
    labels[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=torch.Generator().manual_seed(3))
    labels[:9] = -1  # unlabelled images: no target for a label-trained fit
    return adapter, layout, [p.clone() for p in recorder.pooled], logits * 3, labels


def loss(logits: torch.Tensor, final: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """The mean fitting loss (nats): KL(model || lens) with ``final``, else cross-entropy."""
    if final is None:
        return F.cross_entropy(logits, labels)
    return F.kl_div(logits.log_softmax(-1), final.log_softmax(-1), log_target=True, reduction="batchmean")


def objective(lens, module, blocks, features, final, labels, rows, wd) -> torch.Tensor:
    """A module's penalised objective through the lens's own forward pass: its blocks' mean loss on ``rows`` plus
    ``wd / 2`` times its squared parameters."""
    fitted = sum(loss(lens(features[k][rows], k), None if final is None else final[rows], labels[rows])
                 for k in blocks) / len(blocks)
    return fitted + wd / 2 * sum(p.square().sum() for p in module.core.parameters())


def direct_optimum(lens, features, final, labels, rows, wd, from_start: bool = True) -> list[float]:
    """Each module of a copy of ``lens`` (standardised as fitted; reset to its start, or where it was fitted)
    minimised alone by torch's L-BFGS through the lens's forward pass, far past convergence: each module's
    objective there."""
    alone = copy.deepcopy(lens)
    if from_start:
        alone.reset(0)
    values = []
    for module, blocks in alone.fit_groups():
        params = list(module.core.parameters())
        optimizer = torch.optim.LBFGS(params, max_iter=1000, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                      tolerance_change=1e-14, history_size=50)

        def closure():
            optimizer.zero_grad()
            value = objective(alone, module, blocks, features, final, labels, rows, wd)
            value.backward()
            return value

        optimizer.step(closure)
        values.append(float(closure().detach()))
    return values


# (Fitted to the labels instead, under --loss ce, the lenses go through the same solvers: tests/test_fitting_targets.py.)
OPTIMUM_CASES = [(kind.name, solver, MODELS[solver], kind.fitted_to) for kind in lens_kinds() for solver in kind.solvers
                 if solver in MODELS]


@pytest.mark.contract
@pytest.mark.parametrize("kind, solver, model, target", OPTIMUM_CASES)
def test_every_declared_solver_reaches_the_reference_optimum(kind, solver, model, target):
    """Where the problem is convex (an affine translator through an affine head) the fit is no worse than the
    direct solve from the start; where it is not (a LayerNorm head, a low-rank translator), a direct solve from the
    fit cannot improve it (a fit short of an optimum fails either way)."""
    adapter, layout, features, logits, labels = problem(model)
    lens = build_lenses(adapter, layout, [kind])[kind]
    final = logits if target == "output" else None
    rows = torch.arange(len(labels)) if final is not None else torch.nonzero(labels >= 0)[:, 0]
    records = fit_lens(lens, features, labels, final, FitSettings(max_iter=500, weight_decay=WEIGHT_DECAY),
                       solver=solver)
    convex = lens.decodes_linearly and "convex" in lens_kind(kind).solvers
    reference = direct_optimum(lens, features, final, labels, rows, WEIGHT_DECAY, from_start=convex)
    with torch.no_grad():
        for (module, blocks), best in zip(lens.fit_groups(), reference):
            ours = float(objective(lens, module, blocks, features, final, labels, rows, WEIGHT_DECAY))
            # To float32 precision.
            assert ours <= best + 1e-5 * max(1.0, abs(best)), (kind, solver, blocks, ours, best)
            for k in blocks:  # the record holds that fit: its solver, strength and loss on the fit rows
                record = records[k]
                assert (record.solver, record.weight_decay, record.blocks) == (solver, WEIGHT_DECAY, len(blocks))
                own = float(loss(lens(features[k][rows], k), None if final is None else final[rows], labels[rows]))
                assert record.loss_nats == pytest.approx(own, rel=1e-4, abs=1e-5)
    assert all(records[k] is None for k in range(len(features))
               if not any(k in blocks for _, blocks in lens.fit_groups()))


@pytest.mark.contract
def test_the_shared_lens_reaches_the_reference_optimum_of_every_block_at_once():
    """The shared lens's one translator minimises the mean loss over every block with a path (here every block),
    by both solvers: the optimum of that one objective, not of any one block's."""
    adapter, layout, features, logits, labels = problem("cifar:resnet8")
    rows = torch.arange(len(labels))
    fitted = {}
    for solver in ("convex", "autograd"):
        lens = fitted[solver] = build_lenses(adapter, layout, ["shared"])["shared"]
        fit_lens(lens, features, labels, logits, FitSettings(max_iter=500, weight_decay=WEIGHT_DECAY), solver=solver)
    ((module, blocks),) = fitted["convex"].fit_groups()
    assert blocks == list(range(len(adapter.blocks)))
    (best,) = direct_optimum(fitted["convex"], features, logits, labels, rows, WEIGHT_DECAY)
    with torch.no_grad():
        for lens in fitted.values():
            ((translator, _),) = lens.fit_groups()
            assert float(objective(lens, translator, blocks, features, logits, labels, rows, WEIGHT_DECAY)) <= best + 1e-5
        tuned = build_lenses(adapter, layout, ["tuned"])["tuned"]
        fit_lens(tuned, features, labels, logits, FitSettings(max_iter=500, weight_decay=WEIGHT_DECAY))
        own = [float(objective(tuned, tuned.params[k], [k], features, logits, labels, rows, WEIGHT_DECAY))
               for k in blocks]
        shared = [float(objective(fitted["convex"], module, [k], features, logits, labels, rows, WEIGHT_DECAY))
                  for k in blocks]
    # Each block's own translator does better on its block than the one shared by all: sharing has a price.
    assert all(o <= s + 1e-5 for o, s in zip(own, shared)) and sum(own) < sum(shared) - 1e-3


RECIPE_KINDS = [kind.name for kind in lens_kinds() if "recipe" in kind.solvers]


@pytest.mark.contract
@pytest.mark.parametrize("kind", RECIPE_KINDS)
def test_the_recipe_is_tuned_lens_sgd_on_the_lens_parameters(kind):
    """fit_by_recipe against the recipe's SGD run directly on the lens's parameters, the loss through its forward."""
    adapter, layout, features, logits, labels = problem("cifar:resnet8")
    recipe = TunedLensRecipe(steps=12, images_per_step=64, seed=3)
    fitted = build_lenses(adapter, layout, [kind])[kind]
    reference = copy.deepcopy(fitted)
    records = fit_by_recipe(fitted, features, labels, logits, recipe)
    groups = reference.fit_groups()
    for k, (module, _) in enumerate(groups):  # raw inputs, every translator at its seeded start
        module.standardize(torch.zeros_like(module.mean), torch.ones_like(module.scale))
        module.reset(torch.Generator().manual_seed(recipe.seed + k))
    rows, generator = torch.arange(len(labels)), torch.Generator().manual_seed(recipe.seed)
    per_pass, order = len(rows) // recipe.images_per_step, rows

    def loss_at(step):
        nonlocal order
        if step % per_pass == 0:
            order = rows[torch.randperm(len(rows), generator=generator)]
        images = order[(step % per_pass) * recipe.images_per_step:][:recipe.images_per_step]
        return sum(loss(reference(features[k][images], k), logits[images], labels[images])
                   for _, blocks in groups for k in blocks)

    recipe.run([p for module, _ in groups for p in module.parameters()], loss_at)
    for a, b in zip(fitted.params.parameters(), reference.params.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert {(r.solver, r.steps, r.weight_decay) for r in records if r} == {("recipe", 12, recipe.weight_decay)}


DECODING_KINDS = [kind.name for kind in lens_kinds() if kind.fitted and issubclass(kind.lens_class(), Lens)]


@pytest.mark.contract
@pytest.mark.parametrize("kind", DECODING_KINDS)
@pytest.mark.parametrize("model", ["cifar:resnet8", "cifar:preact_resnet8"])
def test_every_kind_that_reads_the_unembedding_starts_as_the_logit_lens(kind, model):
    adapter, layout, features, _, _ = problem(model, grid=2)
    lenses = build_lenses(adapter, layout, [kind, "logit"])
    lens, logit = lenses[kind], lenses["logit"]
    for seed in (None, 5):  # as built, and as every fit starts it (reset)
        if seed is not None:
            lens.reset(seed)
        with torch.no_grad():
            for k in range(len(adapter.blocks)):
                assert torch.equal(lens(features[k], k), logit(features[k], k)), (kind, k)


@pytest.mark.contract
@pytest.mark.parametrize("kind", [kind.name for kind in lens_kinds()])
def test_every_kind_round_trips_through_save_and_load(kind, tmp_path):
    adapter, layout, features, _, _ = problem("cifar:resnet8", grid=2)
    lens = build_lenses(adapter, layout, [kind])[kind]
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module, _ in lens.fit_groups():
            for p in module.core.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
            module.standardize(torch.randn(len(module.mean), generator=generator),
                               torch.rand(len(module.mean), generator=generator) + 0.5)
    lens.config.fit = {"loss": "kl", "blocks": {name: None for name in layout.blocks}}
    lens.save(tmp_path / kind)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["config.json", "params.pt"]
    loaded = load_lens(tmp_path / kind, adapter, kind)
    assert type(loaded) is type(lens) and loaded.config == lens.config and loaded.layout == layout
    state, again = lens.params.state_dict(), loaded.params.state_dict()
    assert list(state) == list(again) and all(torch.equal(state[k], again[k]) for k in state)
    with torch.no_grad():
        for k in range(len(adapter.blocks)):
            a, b = lens(features[k], k), loaded(features[k], k)
            assert (a is None and b is None) or torch.equal(a, b)
    other = next(k.name for k in lens_kinds() if k.name != kind)
    with pytest.raises(LensFolderError, match=f"holds a '{kind}' lens, not '{other}'"):
        load_lens(tmp_path / kind, adapter, other)
    with pytest.raises(LensFolderError, match="was fitted on"):
        load_lens(tmp_path / kind, create_adapter("cifar:resnet8", weights="random", seed=1), kind)


@pytest.mark.unit
def test_the_registry_refuses_a_taken_name_and_an_unknown_solver():
    with pytest.raises(ValueError, match="'tuned' is registered already"):
        register_lens_kind(lens_kind("tuned"))
    with pytest.raises(ValueError, match="solvers must be among convex, autograd, recipe"):
        register_lens_kind(LensKind("sketch", "sketch", "-", ".lenses.tuned:TunedLens", "output", True, ("sgd",)))
    with pytest.raises(Exception, match="no lens kind 'sketch'; the kinds are tuned, shared, logit"):
        lens_kind("sketch")


@pytest.mark.contract
def test_the_command_line_and_the_figures_read_the_registry():
    from vision_lens import plotting
    from vision_lens.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    lenses = next(a for a in subcommands["run"]._actions if a.dest == "lenses")
    assert lenses.choices == [k.name for k in lens_kinds() if k.fitted]
    lens_types = next(a for a in subcommands["compare"]._actions if a.dest == "lens_types")
    assert lens_types.choices == [k.name for k in lens_kinds()]
    for kind in lens_kinds():
        assert (plotting.lens_label(kind.name), plotting.lens_style(kind.name)) == (kind.label, kind.style)
    assert plotting.default_lens_types()[:len(lens_kinds())] == [k.name for k in lens_kinds()]


@pytest.mark.integration
@pytest.mark.integration
def test_a_kind_fitted_only_when_asked_goes_through_run_eval_and_the_frontier(tmp_path, tiny_data):
    """`--lenses tuned low_rank`: the low-rank lens is fitted (by autograd: its kind declares no convex solver),
    saved, evaluated with its transfer matrix (it transfers), read back by `eval`, and refitted by the frontier."""
    from vision_lens.cli import main

    common = ["--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--workers", "0",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", *common, "--max-iter", "5", "--lenses", "low_rank", "tuned", "--out", str(tmp_path / "r")]) == 0
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["options"]["lenses"] == ["tuned", "low_rank"] and set(run["fit"]) == {"tuned", "low_rank"}
    assert {r["solver"] for r in run["fit"]["low_rank"]["blocks"].values()} == {"autograd"}
    aggregate = json.loads((tmp_path / "r" / "aggregate_metrics.json").read_text())
    assert list(aggregate) == ["tuned", "logit", "low_rank", "baseline"]  # registry order
    assert "layer_transfer" in aggregate["low_rank"] and "layer_transfer" not in aggregate["logit"]
    assert main(["eval", *common, "--lens", str(tmp_path / "r"), "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "aggregate_metrics.json").read_text())
    assert evaluated["low_rank"] == aggregate["low_rank"]
    assert main(["frontier", str(tmp_path / "r"), "--strengths", "0.1"]) == 0
    (point,) = json.loads((tmp_path / "r" / "frontier.json").read_text())["points"]
    assert point["weight_decay"] == 0.1 and point["shared_gap"] is None  # no shared lens was fitted
