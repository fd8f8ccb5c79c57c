"""`vision-lens frontier`: the transfer penalty along a sweep of L2 strengths, each point a direct fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vision_lens import analysis
from vision_lens.cli import main
from vision_lens.analysis import summarise_transfer
from vision_lens.artifacts import read_manifest
from vision_lens.frontier import FRONTIER_STRENGTHS


def _run(tmp_path, data, name, *extra):
    out = tmp_path / name
    code = main(["run", "--model", "cifar:resnet14", "--weights", "random", "--data", str(data), "--out", str(out),
                 "--workers", "0", "--max-iter", "30", "--cache-dir", str(tmp_path / "cache"), *extra])
    assert code == 0
    return out


@pytest.mark.unit
def test_the_default_sweep_spans_1e_6_to_1_in_half_decades():
    assert FRONTIER_STRENGTHS[0] == 1e-6 and FRONTIER_STRENGTHS[-1] == 1.0 and len(FRONTIER_STRENGTHS) == 13
    assert np.allclose(np.diff(np.log10(FRONTIER_STRENGTHS)), 0.5, atol=2e-3)


@pytest.mark.integration
def test_a_frontier_point_equals_a_direct_fit_at_that_strength(tmp_path, tiny_data, monkeypatch):
    run = _run(tmp_path, tiny_data, "run")
    assert json.loads((run / "run.json").read_text())["options"]["cache_dir"] == str(tmp_path / "cache")
    # Without --cache-dir the frontier reads the run's cache, as run.json records it, not the default one.
    monkeypatch.setenv("VISION_LENS_CACHE", str(tmp_path / "default-cache"))
    assert main(["frontier", str(run), "--strengths", "0.01", "0.1"]) == 0
    assert not (tmp_path / "default-cache").exists()  # preflight would have created its features/ folder
    frontier = json.loads((run / "frontier.json").read_text())
    assert [p["weight_decay"] for p in frontier["points"]] == [0.01, 0.1]
    direct = _run(tmp_path, tiny_data, "direct", "--weight-decay", "0.01")
    expected = summarise_transfer(analysis.as_results(direct)[0])
    point = frontier["points"][0]
    assert None not in (point["neighbour_penalty_within_stage"], point["neighbour_penalty_across_stage"])
    for key in ("own_ce", "neighbour_penalty_within_stage", "neighbour_penalty_across_stage", "shared_gap"):
        assert point[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert point["penalty_by_distance"] == pytest.approx(expected["penalty_by_distance"])
    # The two strengths are different fits, and the run's own (chosen-per-block) fit is recorded beside them.
    assert frontier["points"][1]["own_ce"] != point["own_ce"]
    assert frontier["run_fit"] == summarise_transfer(analysis.as_results(run)[0])
    # frontier.json is the package's file: listed in the run's manifest, so a rerun with --overwrite replaces it.
    assert "frontier.json" in read_manifest(run)["files"]
    _run(tmp_path, tiny_data, "run", "--overwrite")
    assert not (run / "frontier.json").exists()


@pytest.mark.integration
def test_the_frontier_figure_draws_the_sweep_and_marks_both_fits(tmp_path, tiny_data):
    import matplotlib.pyplot as plt

    from vision_lens.plotting import penalty_frontier

    run = _run(tmp_path, tiny_data, "run")
    recipe = _run(tmp_path, tiny_data, "recipe", "--recipe", "tuned-lens")
    assert main(["frontier", str(run), "--strengths", "0.001", "0.1", "--cache-dir", str(tmp_path / "cache")]) == 0
    ax = penalty_frontier([run], [recipe])
    frontier = json.loads((run / "frontier.json").read_text())
    curve = ax.get_lines()[0]
    assert list(curve.get_xdata()) == [p["own_ce"] for p in frontier["points"]]
    assert list(curve.get_ydata()) == [p["penalty_by_distance"]["1"] for p in frontier["points"]]
    own, star = ax.get_lines()[1], ax.get_lines()[2]
    assert own.get_xdata()[0] == frontier["run_fit"]["own_ce"]
    assert star.get_marker() == "*" and star.get_xdata()[0] == summarise_transfer(analysis.as_results(recipe)[0])["own_ce"]
    plt.close("all")
    with pytest.raises(FileNotFoundError, match="vision-lens frontier"):
        penalty_frontier([recipe])
