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
def test_an_interrupted_frontier_resumes_from_the_strengths_it_finished(tmp_path, tiny_data, monkeypatch):
    """A sweep stopped at its second strength keeps the first in frontier.partial.json; the rerun refits only the
    second, gives the uninterrupted sweep's points and removes the file. A partial sweep of another run is ignored."""
    import shutil

    import vision_lens.frontier as frontier_module

    run = _run(tmp_path, tiny_data, "run")
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    strengths = (0.01, 0.1)
    expected = json.loads(frontier_module.frontier(twin, strengths).read_text())
    fit, fitted = frontier_module.fit_lens, []

    def fit_then_stop(lens, *args, desc, **kwargs):
        if desc.endswith(" at 0.1"):
            raise KeyboardInterrupt  # as Ctrl-C or a killed job would stop it
        fitted.append(desc)
        return fit(lens, *args, desc=desc, **kwargs)

    monkeypatch.setattr(frontier_module, "fit_lens", fit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        frontier_module.frontier(run, strengths)
    partial = json.loads((run / "frontier.partial.json").read_text())
    assert [p["weight_decay"] for p in partial["points"]] == [0.01] and not (run / "frontier.json").exists()

    def counted(lens, *args, desc, **kwargs):
        fitted.append(desc)
        return fit(lens, *args, desc=desc, **kwargs)

    fitted.clear()
    monkeypatch.setattr(frontier_module, "fit_lens", counted)
    resumed = json.loads(frontier_module.frontier(run, strengths).read_text())
    assert fitted == ["fit tuned at 0.1", "fit shared at 0.1"]  # the first strength is not refitted
    for got, want in zip(resumed["points"], expected["points"], strict=True):
        assert got["penalty_by_distance"] == pytest.approx(want["penalty_by_distance"])
        assert {k: v for k, v in got.items() if k != "penalty_by_distance"} == pytest.approx(
            {k: v for k, v in want.items() if k != "penalty_by_distance"})
    assert resumed["command"] == f"vision-lens frontier {run} --strengths 0.01 0.1"
    assert not (run / "frontier.partial.json").exists()
    # A partial sweep left by an earlier run in this folder (another run.json) is not this run's: all refitted.
    (run / "frontier.partial.json").write_text(json.dumps(partial | {"run_id": "0" * 64}))
    fitted.clear()
    frontier_module.frontier(run, strengths)
    assert len(fitted) == 4


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
