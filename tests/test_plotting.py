"""The plotting API on real CIFAR ResNet runs: what is drawn must equal what the JSON says."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from vision_lens import plotting
from vision_lens.artifacts import load_results
from vision_lens.adapters import create_adapter
from vision_lens.adapters.weights import CIFAR10_CLASSES
from vision_lens.capture import BlockRecorder
from vision_lens.lenses import TunedLens, build_lenses
from vision_lens.readout import FeatureLayout

from .conftest import CIFAR, RESNET20, require_shared

pytestmark = pytest.mark.shared


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def raw_aggregate(run_dir) -> dict:
    return json.loads((run_dir / "aggregate_metrics.json").read_text())


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def with_undefined_first_block(run: plotting.RunResults) -> plotting.RunResults:
    """A copy of ``run`` as if block 0 had no identity path: its logit lens and transfers are null."""
    run = copy.deepcopy(run)
    for metric in run.aggregate["logit"].values():
        metric["layer_0"] = None
    for table in run.aggregate["tuned"]["layer_transfer"].values():
        for i in table:
            if i != "layer_0":
                table[i]["layer_0"] = table["layer_0"][i] = None
    return run


@pytest.mark.integration
def test_layerwise_block_axis_draws_the_json(resnet20_run):
    aggregate = raw_aggregate(resnet20_run)
    run = load_results(resnet20_run)
    ax = plotting.layerwise(run, "acc")
    lines = lines_by_label(ax)
    assert set(lines) == {"tuned lens", "shared tuned lens", "logit lens", "linear probe", "model output", "chance (1/10)"}
    for lens_type in ("tuned", "shared", "logit", "linear_probe"):
        y = lines[plotting.lens_label(lens_type)].get_ydata()
        assert np.allclose(y, [aggregate[lens_type]["acc"][f"layer_{k}"] for k in range(10)])
    assert lines["model output"].get_ydata()[0] == aggregate["baseline"]["acc"]["final"]
    assert [t.get_text() for t in ax.get_xticklabels()] == run.block_names
    assert ax.get_ylabel() == "top-1 accuracy"


@pytest.mark.integration
def test_layerwise_undefined_values_are_gaps_not_zeros(resnet20_run):
    run = with_undefined_first_block(load_results(resnet20_run))
    y = lines_by_label(plotting.layerwise(run, "ce"))["logit lens"].get_ydata()
    assert np.isnan(y[0]) and not np.isnan(y[1:]).any()


@pytest.mark.integration
def test_layerwise_relative_depth_puts_two_depths_on_0_to_1(resnet20_run, resnet32_run):
    ax = plotting.layerwise([resnet20_run, resnet32_run], "kl", x="relative_depth", lens_types=("tuned",))
    lines = lines_by_label(ax)
    assert set(lines) == {"tuned lens · cifar:resnet20", "tuned lens · cifar:resnet32"}
    for name, blocks in (("cifar:resnet20", 10), ("cifar:resnet32", 16)):
        x = lines[f"tuned lens · {name}"].get_xdata()
        assert len(x) == blocks and x[0] == 0 and x[-1] == 1 and np.all(np.diff(x) > 0)
    assert "relative depth" in ax.get_xlabel()
    assert lines["tuned lens · cifar:resnet20"].get_color() != lines["tuned lens · cifar:resnet32"].get_color()


@pytest.mark.integration
def test_layerwise_rejects_unknown_axis_and_metric(resnet20_run):
    with pytest.raises(ValueError, match="x must be one of"):
        plotting.layerwise(resnet20_run, "acc", x="depth")
    with pytest.raises(ValueError, match="known metrics"):
        plotting.layerwise(resnet20_run, "perplexity")


@pytest.mark.integration
def test_transfer_heatmap_rows_are_translators_and_nulls_are_hatched(resnet20_run):
    run = with_undefined_first_block(load_results(resnet20_run))
    penalty = run.aggregate["tuned"]["layer_transfer"]["penalty"]
    ax = plotting.transfer_heatmap(run, "penalty")
    cells = ax.collections[0].get_array().reshape(10, 10)
    for i in range(10):
        for j in range(10):
            value = penalty[f"layer_{i}"][f"layer_{j}"]
            # Undefined cells are masked (drawn as the hatched background), never zero.
            assert (cells.mask[i, j] if value is None else cells[i, j] == pytest.approx(value))
    assert cells.mask.sum() == 18
    assert ax.patch.get_hatch() == "///"
    assert "hatched: undefined" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == run.block_names
    assert ax.get_ylabel() == "translator of block i" and ax.get_xlabel() == "evaluated on block j"


def expected_penalty_by_distance(aggregate: dict) -> list[float]:
    """Straight from the JSON: mean of penalty[layer_i][layer_j] over defined cells with |i - j| = d."""
    penalty = aggregate["tuned"]["layer_transfer"]["penalty"]
    blocks = len(penalty)
    means = []
    for d in range(blocks):
        cells = [penalty[f"layer_{i}"][f"layer_{j}"] for i in range(blocks) for j in range(blocks) if abs(i - j) == d]
        cells = [c for c in cells if c is not None]
        means.append(sum(cells) / len(cells) if cells else np.nan)
    return means


@pytest.mark.integration
def test_penalty_vs_distance_equals_a_direct_computation(resnet20_run, resnet32_run):
    ax = plotting.penalty_vs_distance([resnet20_run, resnet32_run])
    lines = lines_by_label(ax)
    for run_dir, name in ((resnet20_run, "cifar:resnet20"), (resnet32_run, "cifar:resnet32")):
        expected = expected_penalty_by_distance(raw_aggregate(run_dir))
        assert np.allclose(lines[name].get_ydata(), expected)
        assert list(lines[name].get_xdata()) == list(range(len(expected)))
    assert lines["cifar:resnet20"].get_ydata()[0] == 0  # a translator on its own block costs nothing


@pytest.mark.integration
def test_penalty_vs_distance_ignores_null_cells(resnet20_run):
    run = with_undefined_first_block(load_results(resnet20_run))
    y = plotting.penalty_vs_distance(run).get_lines()[0].get_ydata()
    assert np.allclose(y, expected_penalty_by_distance(run.aggregate), equal_nan=True)
    assert np.isnan(y[9]) and not np.isnan(y[:9]).any()  # |i - j| = 9 only links block 0, which is undefined


@pytest.mark.integration
def test_penalty_vs_distance_leaves_out_a_run_without_transfers(resnet20_run):
    """A run where no translator reads another block (e.g. an Inception) gets no line and no legend entry."""
    run = load_results(resnet20_run)
    closed = copy.deepcopy(run)
    closed.name = "no shared space"
    for table in closed.aggregate["tuned"]["layer_transfer"].values():
        for i, row in table.items():
            for j in row:
                row[j] = row[j] if i == j else None
    ax = plotting.penalty_vs_distance([run, closed])
    assert set(lines_by_label(ax)) == {"cifar:resnet20"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cifar:resnet20"]


@pytest.fixture(scope="module")
def resnet20():
    require_shared()  # module fixtures run before the per-test marker check
    return create_adapter("cifar:resnet20", weights=str(RESNET20))


@pytest.mark.integration
def test_prediction_trajectory_logit_lens_ends_at_the_model_output(resnet20):
    image = min((CIFAR / "test" / "ship").glob("*.png"))
    logit = build_lenses(resnet20, FeatureLayout.of(resnet20.blocks, 1), ("logit",))["logit"]  # the logit lens is never saved
    ax = plotting.prediction_trajectory(resnet20, logit, image, k=3)
    cells = ax.collections[0].get_array().reshape(11, 3)
    with torch.no_grad(), BlockRecorder(resnet20, logit.layout) as recorder:
        output = resnet20.logits(resnet20.transform(Image.open(image).convert("RGB"))[None]).softmax(-1)[0]
        read_outs = [logit(features, k).softmax(-1)[0] for k, features in enumerate(recorder.pooled)]
    top = output.topk(3)
    # A row per block in forward order, each the lens's own read-out there, then the model's output.
    for row, probabilities in zip(cells, read_outs + [output], strict=True):
        assert np.allclose(row, probabilities.topk(3).values.numpy(), atol=1e-6)
    assert np.all(np.diff(cells, axis=1) <= 0)  # ranks are sorted
    texts = [t.get_text() for t in ax.texts]
    assert texts[-3:] == [f"{CIFAR10_CLASSES[c]}\n{p:.2f}" for c, p in zip(top.indices.tolist(), top.values.tolist())]
    assert [t.get_text() for t in ax.get_yticklabels()] == [b.name for b in resnet20.blocks] + ["model output"]
    assert len(ax.figure.axes) == 3  # the input image, the heatmap and its colour bar


@pytest.mark.integration
def test_prediction_trajectory_tuned_lens_from_a_run(resnet20, resnet20_run):
    lens = TunedLens.load(resnet20_run / "lenses" / "tuned", resnet20)
    image = min((CIFAR / "test" / "cat").glob("*.png"))
    ax = plotting.prediction_trajectory(resnet20, lens, image)
    cells = ax.collections[0].get_array().reshape(11, 5)
    assert not cells.mask.any()
    assert np.all(cells.sum(axis=1) <= 1 + 1e-6) and np.all(np.diff(cells, axis=1) <= 0)
    assert "tuned lens" in ax.get_title()
    names = {t.get_text().split("\n")[0] for t in ax.texts}
    assert names <= set(CIFAR10_CLASSES)


@pytest.mark.integration
def test_prediction_trajectory_hatches_blocks_where_the_lens_is_undefined(resnet20):
    logit = build_lenses(resnet20, FeatureLayout.of(resnet20.blocks, 1), ("logit",))["logit"]
    del logit.paths["1"]  # as if block 1 had no identity path to the head
    image = min((CIFAR / "test" / "cat").glob("*.png"))
    ax = plotting.prediction_trajectory(resnet20, logit, image)
    cells = ax.collections[0].get_array().reshape(11, 5)
    assert cells.mask[1].all() and not cells.mask[[0, *range(2, 11)]].any()
    assert "undefined: no identity path" in [t.get_text() for t in ax.texts]
    assert ax.patch.get_hatch() == "///"


@pytest.mark.unit
def test_importing_plotting_leaves_the_matplotlib_backend_alone():
    """Notebooks keep their inline backend: the package draws into Figure objects instead of switching."""
    code = ("import matplotlib; matplotlib.use('svg'); import vision_lens.plotting, vision_lens.pipeline; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    subprocess.run([sys.executable, "-c", code], check=True)
