"""What the figures add beside the numbers: intervals, chance, pair counts, clipping, labels, the report's layout.

On a synthetic run (``conftest.write_synthetic_run``), so no ../shared assets are needed.
"""

from __future__ import annotations

from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text

from vision_lens import analysis, plotting
from vision_lens.adapters import create_adapter
from vision_lens.artifacts import load_results
from vision_lens.cli import main
from vision_lens.compare import compare
from vision_lens.lenses import build_lenses
from vision_lens.readout import FeatureLayout
from vision_lens.report import render_report

from .conftest import write_image_folder, write_synthetic_run
from .test_compare import TUNED_LENS_EVAL


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "synthetic")


@pytest.mark.unit
def test_layerwise_draws_bands_chance_and_the_eval_split(synthetic):
    run = load_results(synthetic)
    ax = plotting.layerwise(run, "acc", lens_types=("tuned",))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and bands[0].get_label() == "95% bootstrap interval"
    low, high = analysis.interval_values(run.intervals["tuned"]["acc"])
    band_y = bands[0].get_paths()[0].vertices[:, 1]
    assert band_y.min() == pytest.approx(low.min()) and band_y.max() == pytest.approx(high.max())
    chance = [line for line in ax.get_lines() if line.get_label() == "chance (1/10)"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(0.1) and chance[0].get_linestyle() == ":"
    assert ax.get_xlabel() == "block (evaluated on the test split, 400 images)"
    assert plotting.layerwise(run, "ce").get_ylabel() == "cross-entropy (bits per image)"


@pytest.mark.unit
def test_layerwise_skips_chance_and_bands_where_the_run_does_not_record_them(synthetic):
    run = load_results(synthetic)
    run.run.pop("num_classes")
    run.intervals = None
    ax = plotting.layerwise(run, "acc")
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert not [line for line in ax.get_lines() if line.get_label().startswith("chance")]


@pytest.mark.unit
def test_transfer_heatmap_clips_at_the_95th_percentile_prints_values_and_marks_stages(synthetic):
    run = load_results(synthetic)
    matrix = analysis.transfer_matrix(run, "penalty")
    ax = plotting.transfer_heatmap(run)
    mesh = ax.collections[0]
    assert mesh.get_clim()[1] == pytest.approx(np.nanpercentile(matrix, 95))
    assert mesh.get_clim()[1] < np.nanmax(matrix)
    assert mesh.colorbar.extend == "max" and "clipped at the 95th percentile" in mesh.colorbar.ax.get_ylabel()
    assert "bits per image" in mesh.colorbar.ax.get_ylabel()
    values = [t.get_text() for t in ax.texts]
    assert len(values) == 99  # every defined cell, not the undefined (3, 9)
    assert values[:2] == [f"{matrix[0, 0]:.1f}", f"{matrix[0, 1]:.1f}"]
    horizontal = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_ydata()[0] == line.get_ydata()[1])
    assert horizontal == [1, 4, 7]  # stem | layer1 | layer2 | layer3


@pytest.mark.unit
def test_penalty_vs_distance_stages_error_bars_and_pair_counts(synthetic):
    run = load_results(synthetic)
    ax = plotting.penalty_vs_distance(run, stages=True)
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    profiles = analysis.penalty_profiles(run)
    within, across = lines["synthetic:resnet20 · within stage"], lines["synthetic:resnet20 · across stages"]
    assert np.allclose(within.get_ydata(), profiles["within_stage"].mean, equal_nan=True)
    assert np.allclose(across.get_ydata(), profiles["across_stage"].mean, equal_nan=True)
    assert within.get_linestyle() == "-" and across.get_linestyle() == "--"
    error_bars = [c for c in ax.collections if c.get_segments()]
    segments = np.concatenate([c.get_segments() for c in error_bars])
    low, high = profiles["within_stage"].low[1], profiles["within_stage"].high[1]
    assert any(np.allclose(s[:, 1], [low, high]) and s[0, 0] == 1 for s in segments)
    (counts_ax,) = [a for a in ax.figure.axes if a.get_label() == "block pairs"]
    heights = [bar.get_height() for bar in counts_ax.patches]
    assert heights == [*profiles["within_stage"].pairs, *profiles["across_stage"].pairs]
    assert heights[1:3] == [12, 6]
    assert "translator" in ax.get_title()

    relative = plotting.penalty_vs_distance(run, relative=True, pair_counts=False)
    assert np.allclose(relative.get_lines()[0].get_xdata(), np.arange(10) / 9)
    assert len(relative.figure.axes) == 1


@pytest.mark.integration
def test_compare_takes_labels_and_keeps_text_legible(synthetic, tmp_path):
    fig = compare([synthetic, TUNED_LENS_EVAL], labels=["ResNet-20 (synthetic)", "toy GPT-2"])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["ResNet-20 (synthetic)", "toy GPT-2"]
    assert not any("bits" in text for text in legend)  # the panels are unitless, so is the legend
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= 8
    with pytest.raises(ValueError, match="one --label per input"):
        compare([synthetic, TUNED_LENS_EVAL], labels=["only one"])
    out = tmp_path / "compare.png"
    assert main(["compare", str(synthetic), str(TUNED_LENS_EVAL), "--label", "A", "--label", "B", "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.unit
def test_prediction_trajectory_names_the_file_and_the_true_label(tmp_path):
    root = write_image_folder(tmp_path / "test", classes=2, per_class=1)
    image = root / "class_1" / "000.png"
    model = create_adapter("cifar:resnet20", weights="random")
    logit = build_lenses(model, FeatureLayout.of(model.blocks, 1), ("logit",))["logit"]
    ax = plotting.prediction_trajectory(model, logit, image, k=3)
    image_ax = ax.figure.axes[0]
    assert image_ax.get_title() == "000.png\ntrue label: class_1" and image_ax.get_images()
    ax = plotting.prediction_trajectory(model, logit, image, k=3, label="cat", ax=plt.subplots()[1])
    assert ax.get_xlabel() == "000.png, true label: cat"
    (tmp_path / "notes.txt").write_text("a file beside the folders: tmp_path is no ImageFolder root")
    assert plotting.image_folder_label(tmp_path / "test" / "000.png") is None


class Wrappers(HTMLParser):
    """The class of the element around each table, and the note under the title."""

    def __init__(self, page: str):
        super().__init__()
        self.open: list[str] = []
        self.around_tables: dict[str, str] = {}
        self.notes = 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.around_tables[attrs.get("class")] = self.open[-1]
        if tag == "p" and attrs.get("class") == "note":
            self.notes += 1
        self.open.append(attrs.get("class") or tag)

    def handle_endtag(self, tag):
        self.open.pop()


@pytest.mark.unit
def test_report_tables_scroll_in_their_own_box_and_the_note_is_shown(synthetic):
    page = render_report(synthetic, note="the digits demo: a smoke test, not a result")
    parts = Wrappers(page)
    assert parts.around_tables == {"metrics": "scroll", "provenance": "scroll"}
    assert ".scroll { overflow-x: auto; max-width: 100%; }" in page
    assert parts.notes == 1 and "the digits demo: a smoke test, not a result" in page
    assert Wrappers(render_report(synthetic)).notes == 0
