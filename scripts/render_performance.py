#!/usr/bin/env python
"""Render docs/performance.md from the benchmark JSON under results/benchmark/ (every number in it comes from
there; tests/test_benchmark.py checks that the committed page is what this renders from the committed JSON).

    python scripts/render_performance.py            # writes docs/performance.md
    python scripts/render_performance.py --check    # exit 1 if docs/performance.md differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "performance.md"
PIPELINE = "results/benchmark/cifar10-resnet20-cpu.json"
SCALING = "results/benchmark/scaling-cpu.json"
SCALING_FIGURE = "results/benchmark/scaling-cpu.png"
PIPELINE_COMMAND = """OMP_NUM_THREADS=2 python scripts/benchmark_pipeline.py --model cifar:resnet20 \\
  --weights ../shared/weights/cifar10-resnets/resnet20-12fca82f.th \\
  --data ../shared/data/cifar10 --fit-limit 10000 --eval-limit 10000 \\
  --rss-sizes 10000 50000 > results/benchmark/cifar10-resnet20-cpu.json"""
SCALING_COMMAND = """OMP_NUM_THREADS=2 python scripts/benchmark_scaling.py --out results/benchmark/scaling-cpu.json \\
  --figure results/benchmark/scaling-cpu.png"""
CAPTURE_TARGET, RUN_TARGET = 0.85, 1.5
STAGE_NAMES = {
    "import_torch_torchvision": "import torch, torchvision", "import_vision_lens": "import the package (beyond torch)",
    "main": "command line", "run": "run (between stages)", "_prepare_output": "prepare --out",
    "load_model": "load the model", "preflight": "preflight checks", "capture_fit": "capture, fit split",
    "capture_eval": "capture, eval split", "fit_lens": "lens fits (default)", "fit_by_recipe": "lens fits (recipe)",
    "train": "train (building, checking, saving lenses)", "evaluate_lenses": "metrics and bootstrap intervals",
    "write_results": "write the result files", "save_run_figures": "figures", "write_report": "report.html",
    "prepare_output": "prepare --out", "save_lenses": "save the lenses",
    "evaluate": "evaluate (loading lenses, marking complete)",
}
KIND_NAMES = {"default:tuned": "tuned (default)", "default:shared": "shared (default)",
              "default:linear_probe": "probe", "recipe:tuned": "tuned (recipe)", "recipe:shared": "shared (recipe)",
              "evaluate": "evaluate"}


def seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def verdict(value: float, target: float, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    return f"target {'≥' if at_least else '≤'} {target}: **{'met' if met else 'not met'}**"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def pipeline_section(bench: dict | None) -> list[str]:
    lines = ["## The run against its floor", "", "Measured by", "", "```bash", PIPELINE_COMMAND, "```", "",
             "(55 minutes on the 2 otherwise idle cores that wrote the committed JSON, most of it the floor "
             "search and the memory subprocesses; the floor's passes there ran at about 600 images/s, where an "
             "earlier day's ran at 900: time it only against itself, in one run)."]
    if bench is None:
        return lines + ["", f"Not measured yet: `{PIPELINE}` is missing."]
    lines += ["", f"`{PIPELINE}`: {bench['model']}, {bench['fit_images']:,} fit and {bench['eval_images']:,} eval "
              f"images, {bench['device']}, {bench['torch_threads']} torch threads, torch {bench['versions']['torch']}."]
    if "floor_search" not in bench:
        return lines + ["", f"This JSON predates the floor search and the whole-run measurement (issue 22): floor "
                            f"{bench['floor_s']:.1f} s, pipeline {bench['pipeline_s']:.1f} s, ratio "
                            f"{bench['ratio']:.2f}, its floor the pipeline's own loader configuration. Rerun the "
                            "command above, then this script."]
    search, capture, whole = bench["floor_search"], bench["capture"], bench["whole_run"]
    winner = search["winner"]
    rows = []
    for row in search["configs"]:
        marks = [m for m, on in (("**floor**", row is winner or row == winner), ("the pipeline's", row["pipeline"]))
                 if on]
        timed = [seconds(row["seconds"]), f"{row['images_per_s']:,.0f}"] if "seconds" in row else [row["skipped"], ""]
        rows.append([row["decode"], str(row["batch_size"]), str(row["workers"]), *timed, ", ".join(marks)])
    lines += ["", "### The floor: the fastest plain pass found", "",
              f"Every configuration passed the {search['images']:,} images through the model with no hooks, once "
              f"in each of {search.get('rounds', 1)} rounds (the second in reverse order), and keeps its fastest "
              "pass (`inside`: the loader decodes while the model runs; `before`: every image decoded first; "
              "`phased`: the workers decode a chunk while the model waits, as capture does on the CPU).", ""]
    lines += table(["decode", "batch", "workers", "seconds", "images/s", ""], rows)
    floor_runs = ", ".join(f"{s:.1f}" for s in bench["floor_runs_s"])
    lines += ["", f"The winner, passed again between the runs: **floor {bench['floor_s']:.1f} s** "
                  f"(passes {floor_runs} s)."]
    lines += ["", "### Capture and the whole run", "",
              f"- **Capture** of both splits: {capture['s']:.1f} s, **{capture['fraction_of_floor']:.2f}** of the "
              f"floor's images/s ({verdict(capture['fraction_of_floor'], CAPTURE_TARGET, True)}), at the pipeline's "
              f"defaults ({bench['batch_size']} images per batch, {bench['workers']} workers); decoding, hashing, "
              "pooling in the hooks, the cache's writes and loading it included.",
              f"- **The whole `vision-lens run`**, wall clock of its process: {whole['wall_s']:.1f} s, against the "
              f"floor plus `python -c \"import torch, torchvision\"` ({bench['floor_s']:.1f} + "
              f"{whole['import_torch_torchvision_s']:.1f} s): **ratio {whole['ratio']:.2f}** "
              f"({verdict(whole['ratio'], RUN_TARGET, False)}).",
              f"- Without the process's imports: pipeline {bench['pipeline_s']:.1f} s, {bench['ratio']:.2f} times "
              "the floor.", "", "Each stage, measured inside the run (exclusive of the stages it calls; means of "
              f"{len(bench['wall_runs_s'])} runs):", ""]
    stage_rows = [[STAGE_NAMES.get(k, k), seconds(v), f"{v / whole['wall_s']:.0%}"]
                  for k, v in sorted(bench["stages"].items(), key=lambda item: -item[1])]
    outside = whole["wall_s"] - sum(bench["stages"].values())
    stage_rows.append(["interpreter start and exit (the rest of the wall clock)", seconds(outside),
                       f"{outside / whole['wall_s']:.0%}"])
    lines += table(["stage", "seconds", "of the run"], stage_rows)
    probe = bench["linear_probe"]
    if "same_penalty" in probe:
        same = probe["same_penalty"]
        lines += ["", f"Linear probe at one penalty for every block ({same['weight_decay']:g}): ours "
                      f"{same['ours_fit_s']:.2f} s, scikit-learn's `LogisticRegression` {same['sklearn_fit_s']:.2f} s "
                      f"({same['speedup']:.1f}x)."]
    peaks = ", ".join(f"{p['peak_mb']:,.0f} MiB for {p['images']:,} images" for p in bench["capture_peak_rss"])
    lines += ["", f"Capture's peak memory: {peaks}."]
    rounds = next((p["peak_rounds_mb"] for p in bench["capture_peak_rss"] if "peak_rounds_mb" in p), None)
    if rounds:
        lines[-1] += " Capturing the largest again in one process: " + "; ".join(
            " → ".join(f"{v:,.0f}" for v in r) + " MiB" for r in rounds) + "."
    return lines


def scaling_section(scaling: dict | None) -> list[str]:
    lines = ["## Scaling: lens fits and evaluation, and a full ImageNet run", "", "Measured by", "", "```bash",
             SCALING_COMMAND, "```", ""]
    if scaling is None:
        return lines + ["It prints every point as it is measured.", "", f"Not measured yet: `{SCALING}` is missing."]
    lines += [f"It prints every point as it is measured. The committed run took {scaling['seconds'] / 60:.1f} minutes "
              f"on {scaling['machine']['cores']} quiet cores, most of it the largest classes and widths."]
    base = scaling["base"]
    machine = scaling["machine"]
    lines += ["", f"`{SCALING}`, figure [{Path(SCALING_FIGURE).name}](../{SCALING_FIGURE}). On {machine['cores']} cores "
                  f"({machine['torch_threads']} torch threads), synthetic features; every axis varied from "
                  + ", ".join(f"{a} {v:,}" for a, v in base.items())
                  + f"; the tuned-lens recipe measured for {scaling['recipe_steps']} of its 250 steps and "
                  "scaled to 250 (every step is the same work).", "", "### Measured", ""]
    kinds = list(KIND_NAMES)
    rows = []
    for point in scaling["points"]:
        costs = point["costs"]
        cells = [seconds(costs[k].get("seconds_250_steps", costs[k]["seconds"])) for k in kinds]
        peak = max((c["peak_mb"] for c in costs.values() if c["peak_mb"] is not None), default=None)
        rows.append([f"{point[a]:,}" for a in base] + cells + ["" if peak is None else f"{peak:,.0f}"])
    lines += table([*base, *(KIND_NAMES[k] for k in kinds), "peak MiB"], rows)
    lines += ["", "Growth exponents (slope of log seconds against log axis value; peak memory in brackets):", ""]
    rows = []
    for axis, by_kind in scaling["exponents"].items():
        cells = []
        for k in kinds:
            slope = by_kind[k]
            cell = f"{slope['seconds']:.2f}" if "seconds" in slope else "—"
            cells.append(cell + (f" ({slope['peak_mb']:.2f})" if "peak_mb" in slope else ""))
        rows.append([axis, *cells])
    lines += table(["axis", *(KIND_NAMES[k] for k in kinds)], rows)
    if scaling["models"]:
        lines += ["", "Per model, on this machine (random weights; one 224x224 image):", ""]
        lines += table(["model", "blocks", "head width", "forward GFLOP", "forward s/image", "decode s/image"],
                       [[m["name"], str(m["blocks"]), str(m["head_width"]), f"{m['forward_flops'] / 1e9:.1f}",
                         f"{m['forward_s_per_image']:.3f}", f"{m['decode_s_per_image']:.4f}"]
                        for m in scaling["models"]])
    if scaling["extrapolated"]:
        gpu = scaling["gpu"]
        first = scaling["extrapolated"][0]
        lines += ["", f"### Extrapolated: a full run, {first['fit_images']:,} fit and {first['eval_images']:,} eval "
                      "images, 1,000 classes", "",
                  "Not measured: the base times above carried along every axis by its exponent, and capture from the "
                  "per-model measurements. GPU: capture at the larger of its FLOPs at the GPU's bfloat16 rate and "
                  f"its decoding on {gpu['host_cores']} cores; fits and evaluation at this CPU's times times its "
                  f"float32 matrix-product rate ({machine['cpu_matmul_flops'] / 1e9:.0f} GFLOP/s, measured) over "
                  "the GPU's float32 rate: lower bounds. The GPU's rates: bfloat16, "
                  f"{gpu['flops_bf16_source']}; float32, {gpu['flops_fp32_source']}.", ""]
        rows = []
        for e in scaling["extrapolated"]:
            for device in ("cpu", "gpu"):
                s = e[f"{device}_s"]
                fits = sum(s[f"default:{t}"] for t in ("tuned", "shared", "linear_probe"))
                recipe = s["default:linear_probe"] + s["recipe:tuned"] + s["recipe:shared"]
                rows.append([e["name"], "this CPU" if device == "cpu" else "one GPU", seconds(s["capture"]),
                             seconds(fits), seconds(recipe), seconds(s["evaluate"]),
                             seconds(e[f"{device}_run_s"]["default"]),
                             seconds(e[f"{device}_run_s"]["tuned-lens recipe"])])
        lines += table(["model", "on", "capture", "fits (default)", "fits (recipe)", "evaluate", "run (default)",
                        "run (recipe)"], rows)
    return lines


def render(root: Path = REPO) -> str:
    """The page, from the JSON under ``root`` (missing files are said to be)."""

    def read(relative: str) -> dict | None:
        path = root / relative
        return json.loads(path.read_text()) if path.is_file() else None

    lines = ["# Performance", "",
             "Generated by `scripts/render_performance.py` from the benchmark JSON under `results/benchmark/`; do "
             "not edit by hand. Every number below is measured unless its section says it is extrapolated.", ""]
    lines += pipeline_section(read(PIPELINE)) + [""] + scaling_section(read(SCALING))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/performance.md is not what renders")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        same = PAGE.is_file() and PAGE.read_text() == page
        print("docs/performance.md is up to date" if same else "docs/performance.md differs; rerun this script")
        return 0 if same else 1
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
