"""scripts/benchmark_pipeline.py still sees every stage of the pipeline it times (tiny model and data)."""

from __future__ import annotations


import pytest

from vision_lens import pipeline
from vision_lens.fit import PENALTY_GRID

from .conftest import load_script


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark_pipeline")


def test_benchmark_times_every_stage_and_compares_the_probes(benchmark, tiny_data, tmp_path):
    args = benchmark.parse_args(["--model", "cifar:resnet8", "--data", str(tiny_data), "--workers", "0"])
    opts = benchmark.run_options(args, tmp_path / "out", tmp_path / "cache")
    timings, caches = benchmark.measure_pipeline(opts)
    assert (tmp_path / "out" / "aggregate_metrics.json").is_file()
    assert [len(caches[c].labels) for c in ("capture_fit", "capture_eval")] == [40, 20]
    stages = timings["stages"]
    assert set(stages) == {"capture_fit_s", "fit_lenses_s", "capture_eval_s", "evaluate_write_s", "setup_s"}
    assert all(s >= 0 for s in stages.values())
    assert sum(stages.values()) == pytest.approx(timings["pipeline_s"])
    twice = {"pipeline_s": 2 * timings["pipeline_s"], "stages": {k: 2 * v for k, v in stages.items()}}
    means = benchmark.mean_timings([1.0, 2.0, 3.0], [timings, twice])
    assert means["floor_s"] == 2.0 and means["pipeline_s"] == pytest.approx(1.5 * timings["pipeline_s"])
    assert means["ratio"] == pytest.approx(means["pipeline_s"] / 2.0)
    assert sum(means["stages"].values()) == pytest.approx(means["pipeline_s"])
    adapter = pipeline.load_model(opts)
    assert benchmark.measure_floor(benchmark.selected_images(opts), opts, adapter) > 0
    probes = benchmark.compare_linear_probes(opts, adapter, caches)
    assert probes["blocks"] == [b.name for b in adapter.blocks]
    same = probes["same_penalty"]
    assert same["weight_decay"] in PENALTY_GRID and same["speedup"] > 0
    for acc in (probes["search"]["acc"], same["ours_acc"], same["sklearn_acc"]):
        assert len(acc) == len(adapter.blocks) and all(0 <= a <= 1 for a in acc)
