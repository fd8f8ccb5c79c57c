"""scripts/benchmark_pipeline.py still sees every stage of the pipeline it times (tiny model and data)."""

from __future__ import annotations

import importlib.util

import pytest

from vision_lens import pipeline

from .conftest import REPO


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_pipeline", REPO / "scripts" / "benchmark_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    adapter = pipeline.load_model(opts)
    assert benchmark.measure_floor(opts, adapter) > 0
    probes = benchmark.compare_linear_probes(opts, adapter, caches)
    assert [p["block"] for p in probes] == [b.name for b in adapter.blocks]
    assert all(0 <= p["ours_acc"] <= 1 and 0 <= p["sklearn_acc"] <= 1 for p in probes)
