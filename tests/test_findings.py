"""results/README.md's tables are what scripts/summarise_results.py computes from the committed run folders."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO, load_script

FINDINGS = REPO / "results" / "README.md"


@pytest.fixture(scope="module")
def summarise():
    return load_script("summarise_results")


def test_depth_block_is_the_nearest_block_ties_deeper(summarise):
    assert [summarise.depth_block(10, d) for d in summarise.DEPTHS] == [2, 5, 7, 9]
    assert [summarise.depth_block(12, d) for d in summarise.DEPTHS] == [3, 6, 8, 11]
    assert summarise.depth_block(1, 0.5) == 0


def test_results_readme_tables_are_recomputed_from_the_committed_runs(summarise):
    text = FINDINGS.read_text()
    command = re.search(r"python scripts/summarise_results\.py --findings ((?:results/\S+ ?)+)", text)
    assert command, "results/README.md must print the command that makes its tables"
    runs = [REPO / r for r in command.group(1).split()]
    assert {r.name for r in runs} >= {"cifar10-resnet20", "cifar10-resnet32", "cifar10-resnet44", "cifar10-inceptionv1",
                                      "cifar10-resnet20-random-init", "cifar10-inceptionv1-random-init"}
    tables = summarise.findings(summarise.analysis.as_results(runs)).split("\n\n")
    assert len(tables) == 4
    for table in tables:
        assert table in text, f"results/README.md lacks this table (rerun the command):\n{table}"
