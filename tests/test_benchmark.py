"""scripts/benchmark_pipeline.py still sees every stage of the pipeline it times, and the GPU benchmark's
driver (scripts/benchmark_gpu.sh, scripts/make_synthetic_images.py) runs end to end (tiny model and data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vision_lens import pipeline
from vision_lens.fit import PENALTY_GRID
from vision_lens.resources import devkit_synsets

from .conftest import REPO, load_script


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark_pipeline")


def test_benchmark_times_every_stage_and_compares_the_probes(benchmark, tiny_data, tmp_path):
    args = benchmark.parse_args(["--model", "cifar:resnet8", "--data", str(tiny_data), "--workers", "0",
                                 "--batch-size", "16"])
    opts = benchmark.run_options(args, tmp_path / "out", tmp_path / "cache")
    timings, caches = benchmark.measure_pipeline(opts)
    assert (tmp_path / "out" / "aggregate_metrics.json").is_file()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["options"]["batch_size"] == 16
    assert [len(caches[c].labels) for c in ("capture_fit", "capture_eval")] == [40, 20]
    stages = timings["stages"]
    assert set(stages) == {"capture_fit_s", "fit_lenses_s", "capture_eval_s", "evaluate_write_s", "setup_s"}
    # Every stage was timed around work it did; setup_s, the rest of the total, is positive only if the timed
    # stages do not overlap.
    assert all(s > 0 for s in stages.values())
    twice = {"pipeline_s": 2 * timings["pipeline_s"], "stages": {k: 2 * v for k, v in stages.items()}}
    means = benchmark.mean_timings([1.0, 2.0, 3.0], [timings, twice])
    assert means["floor_s"] == 2.0 and means["pipeline_s"] == pytest.approx(1.5 * timings["pipeline_s"])
    assert means["ratio"] == pytest.approx(means["pipeline_s"] / 2.0)
    assert means["stages"] == pytest.approx({k: 1.5 * v for k, v in stages.items()})  # per stage, not a total
    adapter = pipeline.load_model(opts)
    assert benchmark.measure_floor(benchmark.selected_images(opts), opts, adapter) > 0
    probes = benchmark.compare_linear_probes(opts, adapter, caches)
    assert probes["blocks"] == [b.name for b in adapter.blocks]
    same = probes["same_penalty"]
    assert same["weight_decay"] in PENALTY_GRID and same["speedup"] > 0
    for acc in (probes["search"]["acc"], same["ours_acc"], same["sklearn_acc"]):
        assert len(acc) == len(adapter.blocks) and all(0 <= a <= 1 for a in acc)


def test_probe_comparison_can_leave_scikit_learn_out(benchmark, tiny_data, tmp_path):
    args = benchmark.parse_args(["--model", "cifar:resnet8", "--data", str(tiny_data), "--workers", "0",
                                 "--no-sklearn"])
    opts = benchmark.run_options(args, tmp_path / "out", tmp_path / "cache")
    _, caches = benchmark.measure_pipeline(opts)
    probes = benchmark.compare_linear_probes(opts, pipeline.load_model(opts), caches, args.sklearn)
    assert set(probes) == {"search", "blocks"} and len(probes["search"]["acc"]) == len(probes["blocks"])


def test_gpu_benchmark_script_runs_end_to_end_on_synthetic_jpegs(tmp_path):
    """scripts/benchmark_gpu.sh as a device session would run it, on a tiny model and data, on the CPU."""
    data = tmp_path / "synthetic"
    make = [sys.executable, str(REPO / "scripts" / "make_synthetic_images.py"), "--classes", "10", "--size", "32",
            "--fit-per-class", "2", "--eval-per-class", "1", "--workers", "1"]
    written = json.loads(subprocess.run([*make, "--out", str(data)], capture_output=True, text=True,
                                        check=True).stdout)
    assert written["images"] == 30 and written["mean_bytes"] > 0
    subprocess.run([*make, "--out", str(tmp_path / "again")], capture_output=True, text=True, check=True)
    synsets = [synset for synset, _ in devkit_synsets()[:10]]
    assert {p.name for p in (data / "train").iterdir()} == set(synsets)
    first = Path("val", synsets[0], "0.JPEG")
    assert (data / first).read_bytes() == (tmp_path / "again" / first).read_bytes()  # seeded
    refused = subprocess.run([*make, "--out", str(data)], capture_output=True, text=True)
    assert refused.returncode == 2 and f"--out {data} exists" in refused.stderr

    out = tmp_path / "gpu"
    env = {**os.environ, "DATA": str(data), "WORKERS": "0", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_gpu.sh"), str(out), "cifar:resnet8"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + (out / "resnet8-fp32.log").read_text()[-2000:]
    report = json.loads((out / "resnet8-fp32.json").read_text())
    assert (report["fit_images"], report["eval_images"], report["precision"]) == (20, 10, "fp32")
    assert len(report["floor_runs_s"]) == 2 and len(report["pipeline_runs_s"]) == 1
    assert report["images_per_s"]["floor"] == pytest.approx(30 / report["floor_s"])
    assert "same_penalty" not in report["linear_probe"]
    small, large = report["capture_peak_rss"]
    assert (small["images"], large["images"]) == (5, 20) and "peak_rounds_mb" not in small
    assert [len(rounds) for rounds in large["peak_rounds_mb"]] == [3]  # --rss-rounds, in each of --repeats (1)
    # Peaks after each round, in one process: a capture that kept memory would raise them round after round.
    assert all(r[2] - r[0] < 64 for r in large["peak_rounds_mb"]), large["peak_rounds_mb"]
    assert "torch" in (out / "environment.txt").read_text()
    assert "ratio" in done.stdout
