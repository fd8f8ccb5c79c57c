"""What the lenses are fitted to, end to end: `--loss ce`, fit images without labels, and targets computed a chunk
of rows at a time (the memory of a fit stays flat in classes times rows)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder
from vision_lens.data import DataError
from vision_lens.fit import FitSettings, ModelOutput, TunedLensRecipe, fit_by_recipe, fit_lens
from vision_lens.fit import convex, targets
from vision_lens.lenses import build_lenses
from vision_lens.options import RunOptions
from vision_lens.pipeline import SplitFeatures, capture_split, fit_lenses, load_lenses, load_model, preflight, run
from vision_lens.readout import FeatureLayout


def tiny_split(rows: int = 120, unlabelled: int = 0):
    """cifar:resnet8's real features on random images, its logits, labels (the first ``unlabelled`` are -1)."""
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    layout = FeatureLayout.of(adapter.blocks, 1)
    images = torch.rand(rows, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), BlockRecorder(adapter, layout) as recorder:
        logits = adapter.logits(images) * 3
    labels = torch.randint(0, 10, (rows,), generator=torch.Generator().manual_seed(2))
    labels[:unlabelled] = -1
    return adapter, layout, SplitFeatures([p.clone() for p in recorder.pooled], logits, labels, {}, 10)


def options(**extra) -> RunOptions:
    return RunOptions(model="cifar:resnet8", weights="random", data="data", out="out", device="cpu", max_iter=30,
                      **extra)


def same_parameters(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.params.state_dict().values(), b.params.state_dict().values()))


@pytest.mark.unit
def test_fit_images_without_labels_fit_the_kinds_fitted_to_the_model_output_only():
    adapter, layout, split = tiny_split(unlabelled=120)
    lenses = fit_lenses(options(), adapter, layout, split)
    assert list(lenses) == ["tuned", "shared"]  # the probe needs labels: left out
    for name, lens in lenses.items():
        direct = build_lenses(adapter, layout, [name])[name]
        fit_lens(direct, split.features, split.labels, split.logits, options().fit_settings)
        assert same_parameters(lens, direct) and lens.config.fit["loss"] == "kl"
    with pytest.raises(DataError, match="no fit image maps to a model class, so --loss ce has no targets"):
        fit_lenses(options(loss="ce"), adapter, layout, split)


@pytest.mark.unit
def test_the_probe_is_fitted_on_the_labelled_fit_images_only():
    adapter, layout, split = tiny_split(unlabelled=30)
    lenses = fit_lenses(options(lenses=["linear_probe"]), adapter, layout, split)
    labelled = split.labels >= 0
    direct = build_lenses(adapter, layout, ["linear_probe"])["linear_probe"]
    fit_lens(direct, [f[labelled] for f in split.features], split.labels[labelled], None, options().fit_settings)
    assert same_parameters(lenses["linear_probe"], direct)  # the 30 unlabelled images changed nothing


@pytest.mark.integration
def test_loss_ce_fits_the_translators_to_the_labels(tmp_path, tiny_data):
    """`run --loss ce`: the tuned and shared lenses are fitted to the labels (each block's recorded loss is its CE on
    the fit images), under the default fit and the recipe alike; `--loss kl` fits them to the model's output."""
    fitted = {}
    for loss, recipe in (("ce", "optimum"), ("ce", "tuned-lens"), ("kl", "optimum")):
        opts = RunOptions(model="cifar:resnet8", weights="random", data=str(tiny_data), out=str(tmp_path / loss / recipe),
                          workers=0, max_iter=30, loss=loss, recipe=recipe, cache_dir=str(tmp_path / "cache"))
        out = run(opts)
        adapter, resolved = load_model(opts)
        layout = FeatureLayout.of(adapter.blocks, resolved.pool_grid)
        plan = preflight(resolved, adapter, (resolved.fit_split,), layout)[resolved.fit_split]
        split = capture_split(adapter, resolved, plan, layout)  # the run's cache, read back
        lenses = load_lenses(out, adapter)
        assert lenses["linear_probe"].config.fit["loss"] == "ce"
        for name in ("tuned", "shared"):
            lens = fitted[loss, recipe, name] = lenses[name]
            assert lens.config.fit["loss"] == loss and lens.config.fit["recipe"] == recipe
            with torch.no_grad():
                for k, block in enumerate(layout.blocks):
                    logits = lens(split.features[k], k)
                    own = F.cross_entropy(logits, split.labels) if loss == "ce" else F.kl_div(
                        logits.log_softmax(-1), split.logits.log_softmax(-1), log_target=True, reduction="batchmean")
                    # abs: at the last block the KL to the model is zero up to float32 rounding (about 1e-8)
                    assert lens.config.fit["blocks"][block]["loss_nats"] == pytest.approx(float(own), rel=1e-4, abs=1e-6)
    assert not same_parameters(fitted["ce", "optimum", "tuned"], fitted["kl", "optimum", "tuned"])


CONVERGED = FitSettings(max_iter=500, weight_decay=1e-2)  # each solve to its tolerance


def chunked(monkeypatch, elements: int) -> None:
    """Targets never kept whole, and logits held ``elements`` at a time."""
    monkeypatch.setattr(targets, "DENSE_ELEMENTS", 0)
    monkeypatch.setattr(targets, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(convex, "CHUNK_ELEMENTS", elements)


@pytest.mark.unit
@pytest.mark.parametrize("solver", ["convex", "autograd", "recipe"])
def test_targets_computed_a_chunk_at_a_time_give_the_fit_of_the_whole_distribution(solver, monkeypatch):
    adapter, layout, split = tiny_split()

    def fit():
        lens = build_lenses(adapter, layout, ["tuned"])["tuned"]
        if solver == "recipe":
            fit_by_recipe(lens, split.features, split.labels, split.logits, TunedLensRecipe(steps=5, images_per_step=32))
        else:
            fit_lens(lens, split.features, split.labels, split.logits, CONVERGED, solver=solver)
        return lens

    whole = fit()
    chunked(monkeypatch, 10 * 16)  # 16 rows of 10 classes per chunk: 8 chunks of the 120 rows
    # The same optimum (the sums of the chunks are rounded in another order, so not bit for bit).
    for a, b in zip(whole.params.parameters(), fit().params.parameters()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.unit
def test_no_fitter_asks_for_the_model_output_of_more_rows_than_a_chunk(monkeypatch):
    """With the targets per chunk, the model's output is computed a chunk of rows at a time (never rows x classes
    at once): here recomputed on demand through the unembedding from the last block, as a model whose logits do
    not fit in memory would give them, and the fits are those of the stored logits."""
    adapter, layout, split = tiny_split()
    last = len(layout.blocks) - 1
    logit_lens = build_lenses(adapter, layout, ["logit"])["logit"]
    with torch.no_grad():
        stored = logit_lens(split.features[last], last)
    torch.testing.assert_close(stored, split.logits / 3)  # the last block's logit lens is the model's output
    asked = []
    through = ModelOutput.through(lambda hidden: logit_lens(hidden, last), split.features[last], 10)
    recording = ModelOutput(lambda rows: asked.append(len(rows)) or through.logits(rows), len(stored), 10)
    chunked(monkeypatch, 10 * 16)
    for solver in ("convex", "autograd"):
        lenses = [build_lenses(adapter, layout, ["tuned"])["tuned"] for _ in range(2)]
        fit_lens(lenses[0], split.features, split.labels, stored, CONVERGED, solver=solver)
        fit_lens(lenses[1], split.features, split.labels, recording, CONVERGED, solver=solver)
        for a, b in zip(*(lens.params.parameters() for lens in lenses)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    recipe = TunedLensRecipe(steps=3, images_per_step=24)
    fit_by_recipe(build_lenses(adapter, layout, ["shared"])["shared"], split.features, split.labels, recording, recipe)
    assert asked and max(asked) <= max(16, recipe.images_per_step), max(asked)


@pytest.mark.unit
def test_the_translators_inputs_are_computed_per_step_under_the_recipe(monkeypatch):
    """The recipe prepares no block's inputs for every fit image at once: each step computes its images' only."""
    from vision_lens.fit import recipe as recipe_module

    adapter, layout, split = tiny_split()
    seen = []
    original = recipe_module.fit_parts
    monkeypatch.setattr(recipe_module, "fit_parts",
                        lambda lens, features, blocks, rows: seen.append(len(rows)) or original(lens, features, blocks, rows))
    steps = TunedLensRecipe(steps=4, images_per_step=32)
    fit_by_recipe(build_lenses(adapter, layout, ["tuned"])["tuned"], split.features, split.labels, split.logits, steps)
    assert seen[:4 * 4] == [32] * 16  # 4 steps, 4 translators each: 32 images at a time
    assert max(seen) <= targets.chunk_rows(10)  # then the final losses, a chunk of rows at a time


@pytest.mark.unit
def test_the_recipe_asks_for_the_model_output_once_per_step_whatever_the_number_of_blocks(monkeypatch):
    """Every translator of a step is scored on the same rows, so the model's output on them, recomputed through the
    unembedding where it is not kept whole, is computed once per step, not once per block."""
    adapter, layout, split = tiny_split()
    last = len(layout.blocks) - 1
    logit_lens = build_lenses(adapter, layout, ["logit"])["logit"]
    asked = []
    through = ModelOutput.through(lambda hidden: logit_lens(hidden, last), split.features[last], 10)
    recording = ModelOutput(lambda rows: asked.append(len(rows)) or through.logits(rows), len(split.labels), 10)
    monkeypatch.setattr(targets, "DENSE_ELEMENTS", 0)  # never kept whole
    recipe = TunedLensRecipe(steps=4, images_per_step=32)
    lens = build_lenses(adapter, layout, ["tuned"])["tuned"]
    assert len(lens.fit_groups()) > 1
    fit_by_recipe(lens, split.features, split.labels, recording, recipe)
    assert asked[:recipe.steps] == [32] * recipe.steps and 32 not in asked[recipe.steps:]  # then the final losses
