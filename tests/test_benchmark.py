"""scripts/benchmark_pipeline.py: the floor is the fastest configuration it tried, every stage of the run is
measured where it runs (none is a remainder), the defaults stand in the committed benchmark, and the GPU
benchmark's driver (scripts/benchmark_gpu.sh, scripts/make_synthetic_images.py) runs end to end (tiny model and
data); the GPU path reads device tensors back to the host and waits for the GPU before each clock read (on
stand-ins: no GPU here). No test here asserts a speed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_lens import pipeline
from vision_lens.capture import default_batch_size, default_workers, loads_in_phases
from vision_lens.fit import PENALTY_GRID
from vision_lens.resources import devkit_synsets

from .conftest import REPO, load_script


def script_fixture(fixture: str, script: str):
    """A module-scoped fixture ``fixture``: scripts/<script>.py as a module."""
    return pytest.fixture(scope="module", name=fixture)(lambda: load_script(script))


benchmark = script_fixture("benchmark", "benchmark_pipeline")
timed_run = script_fixture("timed_run", "timed_run")
scaling = script_fixture("scaling", "benchmark_scaling")
render = script_fixture("render", "render_performance")


def tiny_args(benchmark, data: Path, *extra: str):
    return benchmark.parse_args(["--model", "cifar:resnet8", "--data", str(data), "--workers", "0", *extra])


@pytest.mark.integration
def test_the_floor_is_the_fastest_configuration_tried(benchmark, tiny_data, tmp_path):
    args = tiny_args(benchmark, tiny_data, "--floor-batch-sizes", "8", "32", "--floor-workers", "0", "1")
    adapter, opts = pipeline.load_model(benchmark.run_options(args, tmp_path / "out", tmp_path / "cache"))
    own = benchmark.FloorConfig("inside", opts.batch_size, opts.workers)
    configs = benchmark.floor_configs(args, own)
    # inside and before at 2 batch sizes and 2 worker counts, phased with workers only; and the pipeline's own.
    assert own in configs and len(configs) == 4 + 4 + 2 + 1
    selected = benchmark.selected_images(opts)
    # Times that put the fastest configuration neither first nor last: the winner is the minimum, not a position.
    seconds = {config: 1.0 + ((i + 4) * 7 % len(configs)) for i, config in enumerate(configs)}
    measured = []

    def measure(selected, adapter, config, precision):
        measured.append(config)
        return seconds.get(config, 0.0)  # the warm-up pass comes first; its time is not used

    search = benchmark.search_floor(selected, adapter, configs, own, "fp32", memory_mb=1e6, measure=measure)
    assert measured[1:] == configs + configs[::-1]  # after a warm-up pass, two rounds, the second reversed
    assert all(row["runs_s"] == [row["seconds"]] * 2 for row in search["configs"])
    assert [dataclasses.asdict(c) for c in configs] == [
        {k: row[k] for k in ("decode", "batch_size", "workers")} for row in search["configs"]]
    assert [row["seconds"] for row in search["configs"]] == list(seconds.values())
    fastest = min(seconds, key=seconds.get)
    assert fastest not in (configs[0], configs[-1])
    assert {k: search["winner"][k] for k in ("decode", "batch_size", "workers")} == dataclasses.asdict(fastest)
    assert search["pipeline_config"]["pipeline"] and sum(row["pipeline"] for row in search["configs"]) == 1
    assert search["images"] == 60 and search["winner"]["images_per_s"] == 60 / search["winner"]["seconds"]
    # A machine that speeds up as the search runs: each configuration keeps its fastest pass.
    calls = iter(range(1000))
    drifting = benchmark.search_floor(selected, adapter, configs, own, "fp32", memory_mb=1e6,
                                      measure=lambda *a: 1000.0 - next(calls))
    assert all(row["seconds"] == min(row["runs_s"]) < max(row["runs_s"]) for row in drifting["configs"])
    assert drifting["winner"]["seconds"] == min(row["seconds"] for row in drifting["configs"])
    # Real passes: every configuration timed, the winner their minimum; "before" left out past the memory bound.
    real = benchmark.search_floor(selected, adapter, [*configs[:2], *configs[4:6], own], own, "fp32", memory_mb=1e6)
    assert real["winner"]["seconds"] == min(row["seconds"] for row in real["configs"]) > 0
    bounded = benchmark.search_floor(selected, adapter, configs, own, "fp32", memory_mb=1e-3, measure=lambda *a: 1.0)
    skipped = [row for row in bounded["configs"] if "skipped" in row]
    assert skipped and all(row["decode"] == "before" and "seconds" not in row for row in skipped)
    assert bounded["winner"]["decode"] == "inside"


@pytest.mark.unit
def test_floor_workers_cover_none_to_every_core(benchmark):
    assert benchmark.default_floor_workers(2) == [0, 1, 2]
    assert benchmark.default_floor_workers(12) == [0, 1, 2, 4, 8, 12]


class FakeClock:
    """A clock that stands where the test puts it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_a_stage_holds_its_own_time_and_none_of_the_stages_inside_it(timed_run, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timed_run, "clock", clock)
    timer = timed_run.StageTimer()
    for now, stage, starting in [(0, "fit", True), (1, "solve", True), (3, "solve", False), (4, "solve", True),
                                 (5, "solve", False), (7, "fit", False), (7, "write", True), (9.5, "write", False)]:
        clock.now = now
        timer(stage, starting)
    assert timer.seconds == {"fit": 4.0, "solve": 3.0, "write": 2.5}
    assert timer.calls == {"fit": 1, "solve": 2, "write": 1}
    timer("outer", True)
    with pytest.raises(RuntimeError, match="stage 'inner' ended while 'outer' was under way"):
        timer("inner", False)


class DeviceTensor(torch.Tensor):
    """A tensor that numpy cannot read, as a CUDA tensor: it must be copied to the host (``.cpu()``) first."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def numpy(self, *args, **kwargs):
        return self.__array__()

    def cpu(self, *args, **kwargs):
        return super().cpu(*args, **kwargs).as_subclass(torch.Tensor)


@pytest.mark.unit
def test_the_benchmark_copies_device_tensors_to_the_host_before_numpy_reads_them(benchmark):
    """A split's labels and logits live on the model's device (a GPU's memory under CUDA), its cached features on
    the host: the probe comparison reads both through ``host``."""
    labels = torch.tensor([2, -1, 0, 1]).as_subclass(DeviceTensor)
    with pytest.raises(TypeError, match="cpu"):
        np.asarray(labels)  # what the benchmark's GPU path once did
    on_device = torch.arange(8.0).reshape(4, 2).requires_grad_().as_subclass(DeviceTensor)
    on_host = np.arange(12.0).reshape(4, 3)
    cache = type("Split", (), {"labels": labels, "features": [on_device, on_host]})
    (device_rows, host_rows), kept = benchmark.labelled(cache)
    assert kept.tolist() == [2, 0, 1]  # the unlabelled image (-1) left out
    assert device_rows.tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]
    assert host_rows.tolist() == on_host[[0, 2, 3]].tolist()
    assert type(device_rows) is np.ndarray and benchmark.host(on_host) is on_host  # a host array is not copied


@pytest.mark.unit
def test_every_clock_read_waits_for_the_gpu_once_cuda_is_in_use(timed_run, monkeypatch):
    """CUDA queues work and returns: a stopwatch or a stage boundary that read the clock without
    ``torch.cuda.synchronize()`` would time the queueing. Here a stand-in torch records the order of events."""
    events = []
    cuda = type("Cuda", (), {"is_available": staticmethod(lambda: True), "initialized": True,
                             "synchronize": staticmethod(lambda: events.append("synchronize"))})
    cuda.is_initialized = staticmethod(lambda: cuda.initialized)
    monkeypatch.setitem(sys.modules, "torch", type("Torch", (), {"cuda": cuda}))
    monkeypatch.setattr(timed_run, "clock", lambda: events.append("clock") or 0.0)
    with timed_run.stopwatch():
        events.append("work")
    timer = timed_run.StageTimer()
    timer("fit", True)
    timer("fit", False)
    assert events == ["synchronize", "clock", "work", "synchronize", "clock"] + ["synchronize", "clock"] * 2
    events.clear()
    cuda.initialized = False  # CUDA present, never used by this process: nothing to wait for, and no context made
    with timed_run.stopwatch():
        pass
    assert events == ["clock", "clock"]


@pytest.mark.integration
def test_every_stage_of_a_run_is_reported_by_the_pipeline_and_measured(timed_run, tiny_data, tmp_path):
    """The pipeline's own stage callback, no function patched: each stage it declares is timed where it runs."""
    argv = ["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--out",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--max-iter", "5"]
    result = timed_run.timed_run(argv)
    assert result["exit"] == 0 and (tmp_path / "out" / "aggregate_metrics.json").is_file()
    stages, calls = result["stages"], result["calls"]
    declared = set(pipeline.STAGES) - {"fit_by_recipe"}  # the default fit: no recipe
    assert set(stages) == declared | {"import_torch_torchvision", "import_vision_lens", "main"}
    assert all(seconds > 0 for seconds in stages.values()), stages
    assert calls["fit_lens"] == 3 and calls["capture_fit"] == calls["capture_eval"] == calls["write_report"] == 1
    # The stages and the rest of the command (main) make up the whole: nothing is counted twice or lost.
    assert result["total_s"] == pytest.approx(sum(stages.values()), rel=1e-3)
    assert result["command_s"] == pytest.approx(sum(v for k, v in stages.items() if not k.startswith("import")))


@pytest.mark.unit
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is read from Linux's /proc")
def test_peak_memory_counts_a_blocks_own_allocations_each_time(timed_run):
    import torch

    def allocate():  # 64 KB tensors, under glibc's mmap threshold: their pages stay resident once freed
        tensors = [torch.ones(16_000) for _ in range(1600)]  # 100 MiB
        del tensors

    peaks = []
    for _ in range(2):
        with timed_run.peak_memory() as memory:
            allocate()
        peaks.append(memory["mb"])
    # The second block reuses no pages left over from the first: both see their own ~100 MiB.
    assert all(90 < peak < 130 for peak in peaks), peaks


@pytest.mark.unit
def test_summary_is_made_of_the_measured_passes(benchmark):
    runs = [{"command_s": c, "wall_s": w, "stages": {"capture_fit": f, "capture_eval": e, "fit_lens": 1.0}}
            for c, w, f, e in ((10.0, 14.0, 3.0, 2.0), (12.0, 16.0, 5.0, 2.0))]
    means = benchmark.summarise([4.0, 6.0, 5.0], [2.0, 4.0], runs)
    assert means["floor_s"] == 5.0 and means["pipeline_s"] == 11.0 and means["ratio"] == 11.0 / 5.0
    assert means["stages"] == {"capture_fit": 4.0, "capture_eval": 2.0, "fit_lens": 1.0}  # per stage, not a total
    assert means["capture"] == {"s": 6.0, "fraction_of_floor": 5.0 / 6.0}
    assert means["whole_run"] == {"wall_s": 15.0, "import_torch_torchvision_s": 3.0, "ratio": 15.0 / (5.0 + 3.0)}
    assert means["floor_runs_s"] == [4.0, 6.0, 5.0] and means["wall_runs_s"] == [14.0, 16.0]


@pytest.mark.integration
def test_the_probe_comparison_reads_a_runs_cache(benchmark, tiny_data, tmp_path):
    args = tiny_args(benchmark, tiny_data)
    pipeline.run(benchmark.run_options(args, tmp_path / "out", tmp_path / "cache"))
    adapter, opts = pipeline.load_model(benchmark.run_options(args, tmp_path / "out", tmp_path / "cache"))
    caches = benchmark.read_caches(adapter, opts)
    assert [len(caches[c].labels) for c in ("capture_fit", "capture_eval")] == [40, 20]
    probes = benchmark.compare_linear_probes(opts, adapter, caches)
    assert probes["blocks"] == [b.name for b in adapter.blocks]
    same = probes["same_penalty"]
    assert same["weight_decay"] in PENALTY_GRID and same["speedup"] > 0
    for acc in (probes["search"]["acc"], same["ours_acc"], same["sklearn_acc"]):
        assert len(acc) == len(adapter.blocks) and all(0 <= a <= 1 for a in acc)
    without = benchmark.compare_linear_probes(opts, adapter, caches, sklearn=False)
    assert set(without) == {"search", "blocks"} and len(without["search"]["acc"]) == len(without["blocks"])
    # The GPU path: a split's labels and logits live on the model's device, where numpy cannot read them.
    on_device = {stage: dataclasses.replace(split, logits=split.logits.as_subclass(DeviceTensor),
                                            labels=split.labels.as_subclass(DeviceTensor))
                 for stage, split in caches.items()}
    with pytest.raises(TypeError, match="Use Tensor.cpu"):
        np.asarray(on_device["capture_fit"].labels)  # as numpy refuses a CUDA tensor
    features, labels = benchmark.labelled(on_device["capture_fit"])
    assert np.array_equal(labels, caches["capture_fit"].labels.numpy()) and len(features) == len(adapter.blocks)
    assert benchmark.bytes_per_image(opts, adapter, on_device["capture_fit"]) == \
        benchmark.bytes_per_image(opts, adapter, caches["capture_fit"])
    searched = benchmark.compare_linear_probes(opts, adapter, on_device, sklearn=False)["search"]
    assert (searched["acc"], searched["weight_decay"]) == (without["search"]["acc"], without["search"]["weight_decay"])


class DeviceTensor(torch.Tensor):
    """A CPU tensor that numpy refuses as it refuses one on a GPU, until ``.cpu()`` copies it to the host: the
    benchmark's GPU path, on a machine without one."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


@pytest.mark.results
def test_the_committed_benchmark_backs_the_defaults():
    """The CPU defaults are the pipeline's line of the committed floor search, and measured there as the fastest
    way to stream the images (or close to it)."""
    bench = json.loads((REPO / "results" / "benchmark" / "cifar10-resnet20-cpu.json").read_text())
    if "floor_search" not in bench:
        pytest.skip("the committed benchmark predates the floor search; rerun it (docs/performance.md)")
    assert bench["usable_cores"] > 1  # the defaults for one core are no workers, and not measured
    assert (bench["batch_size"], bench["workers"]) == (default_batch_size("cpu"), default_workers("cpu"))
    own = bench["floor_search"]["pipeline_config"]
    decode = "phased" if loads_in_phases("cpu") else "inside"
    assert (own["decode"], own["batch_size"], own["workers"]) == (decode, bench["batch_size"], bench["workers"])
    configs = [row for row in bench["floor_search"]["configs"] if "seconds" in row]
    assert bench["floor_search"]["winner"]["seconds"] == min(row["seconds"] for row in configs)
    # Capture streams (memory flat in the images): its defaults are the fastest way of streaming the search
    # found, or within a tenth of it.
    assert own["seconds"] <= 1.1 * min(row["seconds"] for row in configs if row["decode"] in ("inside", "phased"))


@pytest.mark.integration
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
    env = {**os.environ, "DATA": str(data), "WORKERS": "0", "PYTHON": sys.executable, "MODEL_TIMEOUT": "3600",
           "FLOOR_OPTIONS": "--floor-batch-sizes 8 --floor-workers 0"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_gpu.sh"), str(out), "cifar:resnet8"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + (out / "resnet8-fp32.log").read_text()[-2000:]
    report = json.loads((out / "resnet8-fp32.json").read_text())
    assert (report["fit_images"], report["eval_images"], report["precision"]) == (20, 10, "fp32")
    assert len(report["floor_runs_s"]) == 2 and len(report["pipeline_runs_s"]) == len(report["wall_runs_s"]) == 1
    assert report["images_per_s"]["floor"] == pytest.approx(30 / report["floor_s"])
    search = report["floor_search"]
    assert [(row["decode"], row["batch_size"], row["workers"]) for row in search["configs"]] == [
        ("inside", 8, 0), ("before", 8, 0), ("inside", report["batch_size"], 0)]
    assert report["floor"] == {k: search["winner"][k] for k in ("decode", "batch_size", "workers")}
    assert report["whole_run"]["ratio"] == pytest.approx(
        report["whole_run"]["wall_s"] / (report["floor_s"] + report["whole_run"]["import_torch_torchvision_s"]))
    stages = report["stage_runs_s"][0]
    assert stages["capture_fit"] > 0 and stages["capture_eval"] > 0 and stages["fit_lens"] > 0
    assert sum(stages.values()) <= report["wall_runs_s"][0]  # measured inside the process its wall clock holds
    assert "same_penalty" not in report["linear_probe"]
    small, large = report["capture_peak_rss"]
    assert (small["images"], large["images"]) == (5, 20) and "peak_rounds_mb" not in small
    assert [len(rounds) for rounds in large["peak_rounds_mb"]] == [3]  # --rss-rounds, in each of --repeats (1)
    # Peaks after each round, in one process: a capture that kept memory would raise them round after round.
    assert all(r[2] - r[0] < 64 for r in large["peak_rounds_mb"]), large["peak_rounds_mb"]
    assert "torch" in (out / "environment.txt").read_text()
    assert "ratio" in done.stdout and "capture" in done.stdout
    # docs/performance.md renders this schema: the search's rows and the measured ratios.
    root = tmp_path / "docs-root"
    (root / "results" / "benchmark").mkdir(parents=True)
    (root / "results" / "benchmark" / "cifar10-resnet20-cpu.json").write_text(json.dumps(report))
    page = load_script("render_performance").render(root)
    assert f"**ratio {report['whole_run']['ratio']:.2f}**" in page
    assert f"**{report['capture']['fraction_of_floor']:.2f}** of the floor's images/s" in page
    assert page.count("| inside | 8 | 0 |") == 1 and "| before | 8 | 0 |" in page


def synthetic_points(scaling, base: dict, law) -> list[dict]:
    """Points on every axis whose costs follow ``law(point) -> seconds`` exactly."""
    args = scaling.parse_args(["--out", "x", "--base", *map(str, base.values()), "--images", "100", "400",
                               "--classes", "10", "1000", "--widths", "8", "64", "--blocks", "2", "8"])
    return [p | {"costs": {k: {"seconds": law(p), "peak_mb": 2.0 * p["images"]} for k in scaling.KINDS}}
            for p in scaling.axis_points(args)]


@pytest.mark.unit
def test_scaling_fits_each_axiss_exponent_and_carries_the_base_along_them(scaling):
    base = {"images": 200, "classes": 10, "width": 16, "blocks": 4}

    def law(p):
        return 0.5 * p["images"] ** 1.0 * p["classes"] ** 0.5 * p["width"] ** 2.0 * p["blocks"] ** 1.25

    points = synthetic_points(scaling, base, law)
    assert len(points) == 1 + 2 + 1 + 2 + 2  # the base once, then each axis's values that are not the base
    slopes = scaling.exponents(points, base)
    for axis, expected in (("images", 1.0), ("classes", 0.5), ("width", 2.0), ("blocks", 1.25)):
        assert slopes[axis]["default:tuned"]["seconds"] == pytest.approx(expected)
    assert slopes["images"]["evaluate"]["peak_mb"] == pytest.approx(1.0)
    assert slopes["width"]["evaluate"]["peak_mb"] == pytest.approx(0.0, abs=1e-9)
    far = {"images": 10_000, "classes": 1000, "width": 2048, "blocks": 17}
    base_point = next(p for p in points if all(p[a] == base[a] for a in scaling.AXES))
    assert scaling.predicted_seconds("default:tuned", far, base_point, slopes) == pytest.approx(law(far))


@pytest.mark.unit
def test_scaling_extrapolates_a_full_run_from_the_measurements(scaling):
    base = {"images": 200, "classes": 10, "width": 16, "blocks": 4}
    points = synthetic_points(scaling, base, lambda p: 1e-3 * p["images"] * p["width"])
    slopes = scaling.exponents(points, base)
    model = {"model": "m", "blocks": 4, "head_width": 32, "classes": 10, "probe_width": 16.0,
             "forward_flops": 4e9, "forward_s_per_image": 0.1, "decode_s_per_image": 0.01}
    args = scaling.parse_args(["--out", "x", "--fit-images", "400", "--eval-images", "1000", "--gpu-flops-bf16",
                               "1e12", "--gpu-flops-fp32", "1e11", "--gpu-host-cores", "4"])
    run = scaling.extrapolate(model, points, base, slopes, args, cpu_flops=1e10)
    assert run["cpu_s"]["capture"] == pytest.approx(1400 * 0.11)
    assert run["cpu_s"]["default:tuned"] == pytest.approx(1e-3 * 400 * 32)  # the head's width
    assert run["cpu_s"]["default:linear_probe"] == pytest.approx(1e-3 * 400 * 16)  # the blocks' width
    assert run["cpu_s"]["evaluate"] == pytest.approx(1e-3 * 1000 * 32)  # on the eval images
    assert run["gpu_s"]["capture"] == pytest.approx(max(1400 * 4e9 / 1e12, 1400 * 0.01 / 4))
    assert run["gpu_s"]["default:tuned"] == pytest.approx(run["cpu_s"]["default:tuned"] * 1e10 / 1e11)
    parts = ("capture", "default:tuned", "default:shared", "default:linear_probe", "evaluate")
    assert run["cpu_run_s"]["default"] == pytest.approx(sum(run["cpu_s"][k] for k in parts))


@pytest.mark.integration
def test_scaling_measures_every_kind_on_synthetic_features_and_renders(scaling, render, tmp_path):
    out = tmp_path / "results" / "benchmark"
    report = scaling.main(["--quick", "--out", str(out / "scaling-cpu.json"), "--figure", str(out / "scaling.png")])
    assert json.loads((out / "scaling-cpu.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "scaling.png").stat().st_size > 0
    assert len(report["points"]) == len(scaling.axis_points(scaling.parse_args(["--out", "x", "--quick"])))
    for point in report["points"]:
        assert set(point["costs"]) == set(scaling.KINDS)
        assert all(cost["seconds"] > 0 for cost in point["costs"].values())
        recipe = point["costs"]["recipe:tuned"]
        assert recipe["steps"] == 2 and recipe["seconds_250_steps"] == pytest.approx(recipe["seconds"] * 125)
    assert set(report["exponents"]) == set(scaling.AXES) and report["seconds"] > 0
    page = render.render(tmp_path)
    assert "## Scaling" in page and "Not measured yet" in page  # the pipeline JSON is not in tmp_path
    first = report["points"][0]["costs"]["evaluate"]["seconds"]
    assert render.seconds(first) in page


@pytest.mark.results
def test_docs_performance_is_rendered_from_the_committed_json(render):
    assert (REPO / "docs" / "performance.md").read_text() == render.render(), (
        "docs/performance.md is stale: run scripts/render_performance.py")
