"""results/README.md's tables are what scripts/summarise_results.py computes from the committed run folders."""

from __future__ import annotations

import pytest

from .conftest import REPO, findings_runs, load_script

FINDINGS = REPO / "results" / "README.md"
RESIDUAL = ("resnet20", "resnet32", "resnet44", "preact-resnet20")  # the trained models with transfer


@pytest.fixture(scope="module")
def summarise():
    return load_script("summarise_results")


def test_depth_block_is_the_nearest_block_ties_deeper(summarise):
    assert [summarise.depth_block(10, d) for d in summarise.DEPTHS] == [2, 5, 7, 9]
    assert [summarise.depth_block(12, d) for d in summarise.DEPTHS] == [3, 6, 8, 11]
    assert summarise.depth_block(1, 0.5) == 0


def test_results_readme_tables_are_recomputed_from_the_committed_runs(summarise):
    text = FINDINGS.read_text()
    runs = findings_runs()
    expected = {f"cifar10-{m}{suffix}" for m in RESIDUAL for suffix in ("", "-tuned-lens-recipe")}
    expected |= {"cifar10-inceptionv1", "cifar10-resnet20-random-init", "cifar10-inceptionv1-random-init"}
    assert {r.name for r in runs} >= expected
    tables = summarise.findings(summarise.analysis.as_results(runs)).split("\n\n")
    assert len(tables) == 7
    for table in tables:
        assert table in text, f"results/README.md lacks this table (rerun the command):\n{table}"


def test_distance_growth_is_the_penalty_at_two_over_one(summarise):
    assert summarise.distance_growth({"0": 0.0, "1": 2.0, "2": 3.0, "3": None}) == 1.5
    assert summarise.distance_growth({"2": 1.0, "1": 4.0}) == 0.25


def committed_runs(suffix: str = "") -> list:
    """The committed residual runs (trained weights) whose folder ends with ``suffix``."""
    from vision_lens import analysis

    names = [f"cifar10-{m}{suffix}" for m in RESIDUAL]
    return analysis.as_results([REPO / "results" / n for n in names if (REPO / "results" / n / "run.json").is_file()])


def test_the_verdicts_of_results_readme_hold_in_the_committed_runs(summarise):
    """Section 2's verdicts: the default fits' within-stage neighbours cost more than the own CE, tuned-lens's recipe
    less, and along every frontier the penalty crosses below the own CE while distance 2 costs more than distance 1."""
    default, recipe = committed_runs(), committed_runs("-tuned-lens-recipe")
    assert len(default) == len(recipe) == 4
    assert all(summarise.neighbour_ratio(run) > 1 for run in default)
    assert all(summarise.neighbour_ratio(run) < 1 for run in recipe)
    for run in default:
        points = summarise.frontier_points(run)
        assert min(summarise.point_ratio(p) for p in points) < 1, run.name
        assert min(summarise.distance_growth(p["penalty_by_distance"]) for p in points) > 1, run.name
