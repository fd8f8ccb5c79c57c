"""The README's per-block table is the committed JSON: the two cannot drift apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LENSES = {"tuned": "tuned", "shared": "shared", "logit": "logit", "probe": "linear_probe"}
METRICS = {"acc": "acc", "ce": "ce", "kl": "kl"}


def readme_table(after: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table after the line that contains ``after``: header cells and body rows."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    rows = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[0], [r for r in rows[2:]]


def test_resnet20_table_matches_the_committed_results():
    header, rows = readme_table("### Committed results: ResNet-20 on CIFAR-10")
    aggregate = json.loads((REPO / "results" / "cifar10-resnet20" / "aggregate_metrics.json").read_text())
    layers = json.loads((REPO / "results" / "cifar10-resnet20" / "layers.json").read_text())
    layer_of = {block: layer for layer, block in layers.items()}
    assert header[0] == "block" and [r[0].strip("`") for r in rows] == list(layers.values())
    checked = 0
    for column, name in enumerate(header[1:], start=1):
        lens, metric = name.split()
        for row in rows:
            value = aggregate[LENSES[lens]][METRICS[metric.lower()]][layer_of[row[0].strip("`")]]
            assert row[column] == f"{value:.3f}", (row[0], name)
            checked += 1
    assert checked >= 10 * 6


@pytest.mark.parametrize("run, page", [
    ("cifar10-resnet20", "README.md"), ("cifar10-resnet32", "README.md"), ("cifar10-resnet44", "README.md"),
    ("cifar10-inceptionv1", "README.md"), ("cifar10-resnet20-random-init", "results/README.md"),
    ("cifar10-inceptionv1-random-init", "results/README.md"),
])
def test_quoted_baseline_accuracy_matches(run, page):
    text = (REPO / page).read_text()
    baseline = json.loads((REPO / "results" / run / "aggregate_metrics.json").read_text())["baseline"]["acc"]["final"]
    assert f"{baseline:.4f}" in text
    assert re.search(rf"results/{run}", text)


def test_quoted_benchmark_matches_its_json():
    """The README's headline of the committed benchmark; every other number of it is in docs/performance.md,
    which tests/test_benchmark.py checks is rendered from the same JSON."""
    bench = json.loads((REPO / "results" / "benchmark" / "cifar10-resnet20-cpu.json").read_text())
    text = " ".join((REPO / "README.md").read_text().split())  # line breaks as spaces
    assert f"floor {bench['floor_s']:.1f} s, pipeline {bench['pipeline_s']:.1f} s, **ratio {bench['ratio']:.2f}**" in text
    if "whole_run" in bench:  # since the floor search (issue 22): the two targets, as measured
        assert (f"capture at {bench['capture']['fraction_of_floor']:.2f} of the floor's images/s, the whole run "
                f"**{bench['whole_run']['ratio']:.2f}** times the floor and the import of torch") in text
