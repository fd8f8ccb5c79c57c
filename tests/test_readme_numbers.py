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
    bench = json.loads((REPO / "results" / "benchmark" / "cifar10-resnet20-cpu.json").read_text())
    text = " ".join((REPO / "README.md").read_text().split())  # line breaks as spaces
    assert f"floor {bench['floor_s']:.1f} s, pipeline {bench['pipeline_s']:.1f} s, **ratio {bench['ratio']:.2f}**" in text
    stages = bench["stages"]
    capture = stages["capture_fit_s"] + stages["capture_eval_s"]
    assert f"capture of both splits {capture:.1f} s ({capture / bench['floor_s']:.2f}x the floor" in text
    assert f"fitting the three lenses {stages['fit_lenses_s']:.1f} s" in text
    same = bench["linear_probe"]["same_penalty"]
    assert f"ours took {same['ours_fit_s']:.2f} s against {same['sklearn_fit_s']:.2f} s" in text
    assert f"**{same['speedup']:.1f}x faster**" in text
    better = sum(o > s for o, s in zip(same["ours_acc"], same["sklearn_acc"]))
    assert f"more accurate at {better} of the {len(same['ours_acc'])} blocks" in text
    small, large = bench["capture_peak_rss"]
    growth = large["peak_mb"] / small["peak_mb"] - 1
    assert f"{small['peak_mb']:,.0f} MiB for {small['images']:,} images and {large['peak_mb']:,.0f} MiB for " \
           f"{large['images']:,} (**{growth:+.1%}" in text.replace(" %", "%")
    rounds = large["peak_rounds_mb"]
    assert f"{len(rounds[0]) * large['images']:,} images in all, raised it to " + \
           " and ".join(f"{r[-1]:,.0f}" for r in rounds) + " MiB" in text


def test_quoted_batch256_benchmark_matches_its_json():
    bench = json.loads((REPO / "results" / "benchmark" / "cifar10-resnet20-cpu-batch256.json").read_text())
    default = json.loads((REPO / "results" / "benchmark" / "cifar10-resnet20-cpu.json").read_text())
    text = " ".join((REPO / "README.md").read_text().split())
    assert bench["batch_size"] == 256 and default["batch_size"] == 64
    capture = [b["stages"]["capture_fit_s"] + b["stages"]["capture_eval_s"] for b in (bench, default)]
    assert f"capture of both splits took {capture[0]:.1f} s against {capture[1]:.1f} s" in text
    small, large = bench["capture_peak_rss"]
    runs = " and ".join(f"{r:,.0f}" for r in small["peak_runs_mb"]) + ", " + \
        " and ".join(f"{r:,.0f}" for r in large["peak_runs_mb"])
    assert f"peaked at {small['peak_mb']:,.0f} MiB for {small['images']:,} images and {large['peak_mb']:,.0f} MiB " \
           f"for {large['images']:,} (runs {runs} MiB) and at " + \
           " and ".join(f"{r[-1]:,.0f}" for r in large["peak_rounds_mb"]) + " MiB after" in text
    growth = large["peak_mb"] / small["peak_mb"] - 1
    assert f"its growth, {growth:+.1%} here," in text.replace(" %", "%")
