#!/usr/bin/env python
"""How the cost of lens fitting and evaluation grows, measured on synthetic features, and what a full ImageNet
run would cost, extrapolated from it; writes JSON (``--out``) and a figure (``--figure``).

**Measured** (``points``): on synthetic features of a model that exists only as its readout (every block
``width`` channels with an identity path into a linear head of ``classes`` outputs; features that separate the
classes more with depth, the head's outputs the KL target), the seconds and the peak resident memory above the
start (``peak_mb``, Linux) of

* ``default:tuned``, ``default:shared``, ``default:linear_probe``: ``fit_lens`` as the pipeline fits each lens
  (the penalty chosen per module on a held-out fifth of the fit images, then refitted);
* ``recipe:tuned``, ``recipe:shared``: ``fit_by_recipe`` (``--recipe tuned-lens``), run for ``--recipe-steps``
  of its steps (every step is the same work, so the recipe's 250 take ``250 / recipe_steps`` times as long:
  ``seconds_250_steps``, scaled, not measured);
* ``evaluate``: ``evaluate_lenses`` with the transfer tables and the bootstrap intervals, as a run evaluates,
  on as many held-out images as were fitted on;

varying one axis at a time from ``--base`` (fit images, classes, width, blocks). ``exponents`` are the slopes of
log seconds (and log peak memory) against log axis value, by least squares over each axis's points.

**Measured** (``models``): per ImageNet model (``--models``), the FLOPs of one 224x224 forward pass (counted by
``torch.utils.flop_counter``), the seconds per image of its forward pass at ``--forward-batch`` images per
batch (after one warm-up batch) and of decoding and transforming one typical JPEG (500x375, made here) with the
model's own preprocessing, on this machine; its readout (blocks, head width, classes) from its adapter.

**Extrapolated** (``extrapolated``): a full run of each model, 10,000 fit and 50,000 eval images (``--fit-images``,
``--eval-images``):

* on this CPU: capture as decode plus forward per image (loader in the main process, the CPU default), every fit
  and the evaluation from the measured base times times ``(value / base) ** exponent`` over the four axes (the
  tuned and shared translators work in the head's width, the probe in the blocks' mean width);
* on one GPU: capture at the larger of its forward FLOPs at ``--gpu-flops-bf16`` (bfloat16 capture) and its
  decoding spread over ``--gpu-host-cores``; the fits and the evaluation (float32) at this CPU's times scaled by
  ``cpu_matmul_flops / --gpu-flops-fp32`` (``cpu_matmul_flops`` a float32 matrix product measured here): lower
  bounds, since no network runs at a large matrix product's rate. The defaults are an H200's: bf16 788 TFLOP/s,
  measured on an 8192^3 product on this workplace's H200 machine (.library/device/KINDS.md, 2026-10-28); fp32
  67 TFLOP/s, the datasheet's, not measured; 16 host cores, the lent machine's.

Sizes for 2 cores: the defaults take about 9 minutes there (``seconds`` in the JSON; ``--quick``: seconds, for
the tests). Example::

    OMP_NUM_THREADS=2 python scripts/benchmark_scaling.py --out results/benchmark/scaling-cpu.json \\
        --figure results/benchmark/scaling-cpu.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timed_run, beside this file
from timed_run import peak_memory, stopwatch  # noqa: E402

from vision_lens import __version__  # noqa: E402
from vision_lens.adapters.base import ModelAdapter, create_adapter  # noqa: E402
from vision_lens.fit import FitSettings, TunedLensRecipe, fit_by_recipe, fit_lens  # noqa: E402
from vision_lens.lenses import build_lenses  # noqa: E402
from vision_lens.metrics import evaluate_lenses  # noqa: E402
from vision_lens.readout import Block, FeatureLayout, IdentityPath  # noqa: E402
from vision_lens.threads import limit_torch_threads, usable_cores  # noqa: E402

AXES = ("images", "classes", "width", "blocks")
DEFAULT_FITS = ("tuned", "shared", "linear_probe")
RECIPE_FITS = ("tuned", "shared")
KINDS = (*(f"default:{t}" for t in DEFAULT_FITS), *(f"recipe:{t}" for t in RECIPE_FITS), "evaluate")
RECIPE_STEPS = TunedLensRecipe().steps
MODELS = {"ResNet-50": "torchvision:resnet50", "GoogLeNet": "torchvision:googlenet",
          "ViT-B/16": "timm:vit_base_patch16_224"}
GPU_FLOPS_BF16 = 788e12
GPU_FLOPS_BF16_SOURCE = ("8192^3 bf16 matrix product on one H200, 788 TFLOP/s (measured by this workplace, "
                         ".library/device/KINDS.md, 2026-10-28)")
GPU_FLOPS_FP32 = 67e12
GPU_FLOPS_FP32_SOURCE = "H100/H200 SXM datasheet, plain fp32, 67 TFLOP/s (not measured)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--figure", default=None, help="figure file to write (.png, .pdf; default: none)")
    parser.add_argument("--base", type=int, nargs=4, default=[2000, 10, 256, 4], metavar=("IMAGES", "CLASSES",
                        "WIDTH", "BLOCKS"), help="the point every axis varies from (default: 2000 10 256 4)")
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 2000, 4000, 8000], help="fit images")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000], help="classes")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 2048], help="feature widths")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8, 16], help="blocks")
    parser.add_argument("--recipe-steps", type=int, default=25,
                        help=f"steps of the tuned-lens recipe measured (of its {RECIPE_STEPS}; default: 25)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS),
                        help="ImageNet models to extrapolate (default: all)")
    parser.add_argument("--forward-batch", type=int, default=8, help="images per timed forward pass (default: 8)")
    parser.add_argument("--fit-images", type=int, default=10_000, help="fit images of the extrapolated run")
    parser.add_argument("--eval-images", type=int, default=50_000, help="eval images of the extrapolated run")
    parser.add_argument("--gpu-flops-bf16", type=float, default=GPU_FLOPS_BF16,
                        help="the GPU's bfloat16 rate (default: an H200's, measured; see above)")
    parser.add_argument("--gpu-flops-fp32", type=float, default=GPU_FLOPS_FP32,
                        help="the GPU's float32 rate (default: an H200's datasheet value)")
    parser.add_argument("--gpu-host-cores", type=int, default=16, help="CPU cores that decode for the GPU")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one small model (for the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.base, args.images, args.classes = [64, 3, 8, 2], [32, 64], [3, 6]
        args.widths, args.blocks = [8, 16], [2, 3]
        args.recipe_steps, args.models, args.forward_batch = 2, [], 2
    return args


class SyntheticModel(ModelAdapter):
    """A model that exists only as its readout: ``blocks`` blocks of ``width`` channels, each with the identity
    as its path into the head's space, and a linear head of ``classes`` outputs."""

    def __init__(self, classes: int, width: int, blocks: int, head: Tensor):
        self.name, self.weights_id = f"synthetic:{blocks}x{width}-{classes}", "synthetic"
        self.class_names = [str(c) for c in range(classes)]
        self.blocks = [Block(f"block{k}", f"block{k}", width, IdentityPath.identity(width), stage=f"stage{k}")
                       for k in range(blocks)]
        self._unembed = nn.Linear(width, classes)
        with torch.no_grad():
            self._unembed.weight.copy_(head)
            self._unembed.bias.zero_()
        self.model = self._unembed  # the whole "network": the last block's features to logits

    @property
    def unembed(self) -> nn.Module:
        return self._unembed

    @property
    def transform(self):
        raise NotImplementedError("a synthetic model takes features, not images")



@dataclass
class Problem:
    """Synthetic fit and eval features of one point (see :func:`synthetic_problem`)."""

    model: SyntheticModel
    layout: FeatureLayout
    features: list[Tensor]
    labels: Tensor
    logits: Tensor
    eval_features: list[Tensor]
    eval_labels: Tensor
    eval_logits: Tensor


def synthetic_problem(images: int, classes: int, width: int, blocks: int, seed: int = 0) -> Problem:
    """Features ``s_k * mean[label] + noise`` at block k (``s_k`` rising to 1 at the last block) for ``images`` fit
    and as many eval images, the head reading the class means, its logits on the last block the KL target."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, width, generator=generator)
    model = SyntheticModel(classes, width, blocks, means / math.sqrt(width))

    def split(n: int):
        labels = torch.randint(classes, (n,), generator=generator)
        features = [(k + 1) / blocks * means[labels] + torch.randn(n, width, generator=generator)
                    for k in range(blocks)]
        with torch.no_grad():
            logits = model.unembed(features[-1])
        return features, labels, logits

    layout = FeatureLayout.of(model.blocks, 1)
    return Problem(model, layout, *split(images), *split(images))


def measure(fn) -> dict:
    """``fn()``'s seconds and peak memory above the start (MiB)."""
    with peak_memory() as memory, stopwatch() as elapsed:
        fn()
    return {"seconds": elapsed["s"], "peak_mb": memory["mb"]}


def measure_point(images: int, classes: int, width: int, blocks: int, recipe_steps: int) -> dict:
    """Every kind of :data:`KINDS` at one point of the axes."""
    problem = synthetic_problem(images, classes, width, blocks)
    model, layout = problem.model, problem.layout
    fitted = build_lenses(model, layout, DEFAULT_FITS)
    settings = FitSettings()
    costs = {}
    for lens_type, lens in fitted.items():
        target = None if lens_type == "linear_probe" else problem.logits
        costs[f"default:{lens_type}"] = measure(
            lambda: fit_lens(lens, problem.features, problem.labels, target, settings, lens_type))
    recipe = TunedLensRecipe(steps=recipe_steps)
    for lens_type, lens in build_lenses(model, layout, RECIPE_FITS).items():
        cost = measure(lambda: fit_by_recipe(lens, problem.features, problem.labels, problem.logits, recipe,
                                             lens_type))
        costs[f"recipe:{lens_type}"] = cost | {"steps": recipe_steps,
                                               "seconds_250_steps": cost["seconds"] * RECIPE_STEPS / recipe_steps}
    lenses = build_lenses(model, layout, ("logit",)) | fitted
    stages = [b.stage for b in model.blocks]
    costs["evaluate"] = measure(lambda: evaluate_lenses(
        lenses, problem.eval_features, problem.eval_logits, problem.eval_labels, intervals=True,
        block_stages=stages))
    return {"images": images, "classes": classes, "width": width, "blocks": blocks, "costs": costs}


def axis_points(args: argparse.Namespace) -> list[dict]:
    """The points to measure: the base, and each axis's values with the others at the base; each once."""
    base = dict(zip(AXES, args.base))
    values = {"images": args.images, "classes": args.classes, "width": args.widths, "blocks": args.blocks}
    points = [base]
    for axis in AXES:
        points += [base | {axis: v} for v in values[axis] if base | {axis: v} not in points]
    return points


def exponents(points: list[dict], base: dict) -> dict:
    """Per axis and kind, the least-squares slope of log seconds and of log peak memory against log axis value
    over the points on that axis (the others at the base)."""
    out: dict = {}
    for axis in AXES:
        on_axis = [p for p in points if all(p[a] == base[a] for a in AXES if a != axis)]
        x = np.log([p[axis] for p in on_axis])
        out[axis] = {}
        for kind in KINDS:
            entry = {}
            for field in ("seconds", "peak_mb"):
                y = [p["costs"][kind][field] for p in on_axis]
                usable = [(xi, math.log(yi)) for xi, yi in zip(x, y) if yi is not None and yi > 0]
                if len({xi for xi, _ in usable}) >= 2:
                    entry[field] = float(np.polyfit(*zip(*usable), 1)[0])
            out[axis][kind] = entry
    return out


def predicted_seconds(kind: str, point: dict, base_point: dict, slopes: dict) -> float:
    """The base point's seconds of ``kind`` carried to ``point`` along every axis by its exponent (extrapolated)."""
    seconds = base_point["costs"][kind].get("seconds_250_steps", base_point["costs"][kind]["seconds"])
    for axis in AXES:
        seconds *= (point[axis] / base_point[axis]) ** slopes[axis][kind].get("seconds", 1.0)
    return seconds


@torch.no_grad()
def measure_model(name: str, forward_batch: int) -> dict:
    """One ImageNet model's readout, forward FLOPs per image, and seconds per image of its forward pass and of
    decoding and transforming a typical JPEG, on this machine (random weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    adapter = create_adapter(name, weights="random")
    jpeg = io.BytesIO()
    rng = np.random.default_rng(0)
    pixels = (np.linspace(0, 255, 500)[None, :, None] * rng.uniform(0.5, 1, (375, 1, 3))).astype(np.uint8)
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=90)

    def decode():
        with Image.open(io.BytesIO(jpeg.getvalue())) as image:
            return adapter.transform(image.convert("RGB"))

    x = decode()[None]
    with FlopCounterMode(display=False) as counter:
        adapter.logits(x)
    with stopwatch() as decoding:
        batch = torch.stack([decode() for _ in range(forward_batch)])
    adapter.logits(batch)  # warm-up
    with stopwatch() as forward:
        adapter.logits(batch)
    layout = FeatureLayout.of(adapter.blocks, 1)
    return {
        "model": name, "blocks": len(adapter.blocks), "head_width": adapter.head_dim, "classes": adapter.num_classes,
        "probe_width": float(np.mean(layout.channels)) * layout.slots,  # what the probe reads per block
        "forward_flops": counter.get_total_flops(), "forward_s_per_image": forward["s"] / forward_batch,
        "decode_s_per_image": decoding["s"] / forward_batch,
    }


def matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``size``-cubed matrix product on this CPU (the best of ``repeats``, after a warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        with stopwatch() as elapsed:
            a @ b
        best = min(best, elapsed["s"])
    return 2 * size**3 / best


def extrapolate(model: dict, points: list[dict], base: dict, slopes: dict, args, cpu_flops: float) -> dict:
    """A full run of ``model`` on this CPU and on one GPU (see the module docstring)."""
    base_point = next(p for p in points if all(p[a] == base[a] for a in AXES))
    images = args.fit_images + args.eval_images
    readout = {"classes": model["classes"], "blocks": model["blocks"]}
    cpu = {"capture": images * (model["decode_s_per_image"] + model["forward_s_per_image"])}
    for kind in KINDS:
        width = model["probe_width"] if kind.endswith("linear_probe") else model["head_width"]
        point = readout | {"width": width, "images": args.eval_images if kind == "evaluate" else args.fit_images}
        cpu[kind] = predicted_seconds(kind, point, base_point, slopes)
    gpu = {"capture": max(images * model["forward_flops"] / args.gpu_flops_bf16,
                          images * model["decode_s_per_image"] / args.gpu_host_cores)}
    gpu |= {kind: cpu[kind] * cpu_flops / args.gpu_flops_fp32 for kind in KINDS}
    default = ["capture", *(f"default:{t}" for t in DEFAULT_FITS), "evaluate"]
    recipe = ["capture", "default:linear_probe", *(f"recipe:{t}" for t in RECIPE_FITS), "evaluate"]
    return {
        "model": model["model"], "fit_images": args.fit_images, "eval_images": args.eval_images,
        "cpu_s": cpu, "gpu_s": gpu,
        "cpu_run_s": {"default": sum(cpu[k] for k in default), "tuned-lens recipe": sum(cpu[k] for k in recipe)},
        "gpu_run_s": {"default": sum(gpu[k] for k in default), "tuned-lens recipe": sum(gpu[k] for k in recipe)},
    }


def draw(report: dict, path: str) -> None:
    """Seconds (top) and peak memory (bottom) of every kind against each axis, log-log, measured points only."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    from vision_lens.plotting import palette

    base = report["base"]
    fig = Figure(figsize=(4 * len(AXES), 7))
    axes = fig.subplots(2, len(AXES))
    for column, axis in enumerate(AXES):
        on_axis = sorted((p for p in report["points"] if all(p[a] == base[a] for a in AXES if a != axis)),
                         key=lambda p: p[axis])
        for colour, kind in zip(palette(len(KINDS)), KINDS):
            x = [p[axis] for p in on_axis]
            slope = report["exponents"][axis][kind]
            for row, field in enumerate(("seconds", "peak_mb")):
                y = [p["costs"][kind][field] for p in on_axis]
                if all(v is not None and v > 0 for v in y):
                    label = f"{kind} (slope {slope[field]:.2f})" if field in slope else kind
                    axes[row, column].loglog(x, y, "-o", ms=3, color=colour, label=label)
        for row, name in enumerate(("seconds", "peak memory above the start (MiB)")):
            axes[row, column].set_xlabel(f"{axis} (others at {', '.join(f'{a} {base[a]}' for a in AXES if a != axis)})",
                                         fontsize=8)
            axes[row, column].set_ylabel(name)
            axes[row, column].grid(alpha=0.3, which="both")
            # Ticks at the measured values: log axes' minor labels (2x10^3, 3x10^3, ...) overlap.
            axes[row, column].set_xticks([p[axis] for p in on_axis], [f"{p[axis]:,}" for p in on_axis])
            axes[row, column].xaxis.set_minor_locator(NullLocator())
            if axes[row, column].get_lines():
                axes[row, column].legend(fontsize=6, frameon=False)
    fig.suptitle("Lens fits and evaluation on synthetic features, measured on "
                 f"{report['machine']['cores']} cores ({report['machine']['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = limit_torch_threads()
    base = dict(zip(AXES, args.base))
    measure_point(images=32, classes=3, width=8, blocks=2, recipe_steps=1)  # warm-up (first calls), untimed
    points = []
    for point in axis_points(args):
        points.append(measure_point(**point, recipe_steps=args.recipe_steps))
        print(f"[scaling] {json.dumps(points[-1])}", file=sys.stderr)
    slopes = exponents(points, base)
    models = [measure_model(MODELS[name], args.forward_batch) | {"name": name} for name in args.models]
    cpu_flops = matmul_flops()
    report = {
        "machine": {"cores": usable_cores(), "torch_threads": threads, "device": "cpu",
                    "processor": platform.processor() or platform.machine(), "cpu_matmul_flops": cpu_flops},
        "base": base, "recipe_steps": args.recipe_steps, "points": points, "exponents": slopes, "models": models,
        "gpu": {"flops_bf16": args.gpu_flops_bf16, "flops_bf16_source": GPU_FLOPS_BF16_SOURCE
                if args.gpu_flops_bf16 == GPU_FLOPS_BF16 else "given on the command line",
                "flops_fp32": args.gpu_flops_fp32, "flops_fp32_source": GPU_FLOPS_FP32_SOURCE
                if args.gpu_flops_fp32 == GPU_FLOPS_FP32 else "given on the command line",
                "host_cores": args.gpu_host_cores},
        "extrapolated": [extrapolate(m, points, base, slopes, args, cpu_flops) | {"name": m["name"]} for m in models],
        "versions": {"vision_lens": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "seconds": time.perf_counter() - started,  # this whole benchmark, figure aside
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.figure:
        draw(report, args.figure)
    return report


if __name__ == "__main__":
    main()
