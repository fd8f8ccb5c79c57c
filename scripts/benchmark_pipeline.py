#!/usr/bin/env python
"""The whole pipeline against its floor, in one process and one run; prints JSON.

* ``floor_s``: a plain DataLoader (the same decoding, transforms, batch size and
  workers) and a forward pass with no hooks, the input sent to the device as capture
  sends it (pinned memory, ``channels_last`` on CUDA, ``--precision``), over the fit
  and the eval images (the
  folders are scanned once, before anything is timed; the pipeline's scan counts in
  its setup).
* ``pipeline_s``: ``pipeline.run`` with a fresh feature cache, and its stages:
  capture of the fit split, fitting the lenses, capture of the eval split,
  evaluation and writing (metrics, figures, report); ``setup_s`` is the rest
  (loading the model, preparing the output folder).
* The two alternate, ``--repeats`` pipeline runs each between two floor passes
  (floor, pipeline, floor, pipeline, ..., floor; every time in
  ``floor_runs_s`` and ``pipeline_runs_s``), and ``floor_s``, ``pipeline_s`` and
  the stages are means, so that neither side gains from when it ran or from the
  state the other leaves. ``ratio = pipeline_s / floor_s``; ``images_per_s`` is
  the fit and eval images over each mean.
  The stages are timed by wrapping ``pipeline.train``, ``pipeline.evaluate`` and
  ``pipeline.capture_split``, which ``pipeline.run`` must reach through the module.
* ``linear_probe``: our linear probe on every block as the pipeline fits it (the
  penalty chosen per block on a held-out slice, then the refit), and ours against
  scikit-learn's ``LogisticRegression`` at one penalty for every block (the same loss,
  L2 strength and iteration limit; scikit-learn on the raw features with its bias
  unpenalised, ours on standardised features), on the cached fit features, scored on
  the cached eval features: fit times and accuracies (``--no-sklearn`` leaves
  scikit-learn out: at ImageNet's 1,000 classes it takes minutes per block).
* ``capture_peak_rss``: the peak resident memory of the main process while it
  captures the fit split, at two sizes (``--rss-sizes``; default a quarter of the fit
  images, and all of them), each in a fresh subprocess so the peaks do not mix (DataLoader workers,
  separate processes, are not counted). The sizes alternate, ``--repeats`` times each; ``peak_mb``
  is the mean of the peaks in ``peak_runs_mb``. The largest size's subprocess then captures it
  again, into fresh caches, up to ``--rss-rounds`` times in all, and ``peak_rounds_mb`` holds its
  peak after each round: glibc's heap behind torch's activations fragments as images pass and
  plateaus, at a height that differs between runs and grows with the batch size (``--batch-size``;
  capture returns the free heap every 16 batches, which lowers it), so whether memory grows with
  the number of images shows best within one process.
* ``capture_bytes_per_image``: what storing every block's full output would take per
  image, against the pooled features and logits that capture keeps.

Neither pays the process's one-off imports: the package (with matplotlib and
seaborn) is imported and the model loaded once before either is timed. From a
shell they take about 3.5 s, of which torch and torchvision, which a plain pass
needs too, take 3.4 s. Both meet a warm page cache: every selected image file
is read once before anything is timed (here, reading the 20k CIFAR files took
3.3 s from disk and 0.4 s from the page cache). On the 2-core development
machine one floor pass over the same 20k CIFAR images took from 17.7 to 30.8 s
within one evening, which is why the two sides alternate. Example::

    python scripts/benchmark_pipeline.py --model cifar:resnet20 \\
        --weights ../shared/weights/cifar10-resnets/resnet20-12fca82f.th \\
        --data ../shared/data/cifar10 --fit-limit 10000 --eval-limit 10000 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vision_lens import __version__, pipeline
from vision_lens.capture import backbone_logits, input_memory_format
from vision_lens.data import ImageFolderSource, ImageSource, TransformedSubset, open_split, select
from vision_lens.fit import fit_lens
from vision_lens.lenses import LensConfig, LinearProbe
from vision_lens.readout import FeatureLayout
from vision_lens.options import RunOptions, default_cache_dir
from vision_lens.threads import limit_torch_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar:resnet20", help="model as family:arch (default: cifar:resnet20)")
    parser.add_argument("--weights", default="random", help="checkpoint path, 'pretrained' or 'random' (default)")
    parser.add_argument("--data", required=True, help="dataset root with one ImageFolder per split, as for `vision-lens run`")
    parser.add_argument("--fit-split", default="train", help="split folder of the fit images (default: train)")
    parser.add_argument("--eval-split", default="test", help="split folder of the eval images (default: test)")
    parser.add_argument("--fit-limit", type=int, default=None, help="fit images (default: the whole fit split)")
    parser.add_argument("--eval-limit", type=int, default=None, help="eval images (default: the whole eval split)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (default: 2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass, for capture and the floor alike (default: capture's, "
                             "64 on the CPU and 256 on a GPU)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="backbone precision of the floor and of capture (default: fp32)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="pipeline runs, each between two floor passes (default: 2)")
    parser.add_argument("--sklearn", action=argparse.BooleanOptionalAction, default=True,
                        help="compare the linear probe with scikit-learn's (default: yes; at ImageNet's 1,000 "
                             "classes scikit-learn takes minutes per block)")
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=None,
                        help="fit-split sizes whose capture peak memory is measured (default: a quarter and all "
                             "of the fit images)")
    parser.add_argument("--rss-rounds", type=int, default=3,
                        help="captures of the largest --rss-sizes in one process, each into a fresh cache, with "
                             "the peak after each (default: 3)")
    # Internal: the subprocess that measures the peak memory of capture.
    parser.add_argument("--capture-rss-of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--capture-rounds", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_options(args: argparse.Namespace, out: Path, cache_dir: Path) -> RunOptions:
    """The options of the measured run: a fresh cache; torchvision downloads stay in the usual place."""
    # A timing tool on synthetic images in synset folders: matched by position, so that any model with as many
    # outputs as there are folders can be timed (for an ImageNet model on all 1000 synsets, that is by name too).
    return RunOptions(
        match_classes_by_position=True,
        model=args.model, weights=args.weights, data=args.data, out=str(out), fit_split=args.fit_split,
        eval_split=args.eval_split, fit_limit=args.fit_limit, eval_limit=args.eval_limit, workers=args.workers,
        batch_size=args.batch_size, precision=args.precision, cache_dir=str(cache_dir),
        download_root=str(Path(default_cache_dir()) / "datasets"),
    )


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def stopwatch():
    """Yields a dict whose ``"s"`` holds the elapsed seconds once the block is left."""
    synchronize()
    elapsed = {"s": None}
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        synchronize()
        elapsed["s"] = time.perf_counter() - start


@contextmanager
def timed_stages(opts: RunOptions):
    """Wrap the pipeline's stage functions; yields {stage: seconds} and {capture stage: SplitFeatures}.

    Times are exclusive: a capture that runs inside ``train`` counts as capture, not as fitting,
    whether ``run`` captures the splits itself or leaves it to ``train`` and ``evaluate``.
    """
    seconds: dict[str, float] = {}
    caches: dict[str, object] = {}
    originals = {name: getattr(pipeline, name) for name in ("train", "evaluate", "capture_split")}
    nested: list[float] = []  # per active wrapped call, the time spent in wrapped calls inside it

    def wrapped(name, fn):
        def call(*args, **kwargs):
            nested.append(0.0)
            with stopwatch() as elapsed:
                result = fn(*args, **kwargs)
            inner = nested.pop()
            if nested:
                nested[-1] += elapsed["s"]
            stage = name
            if name == "capture_split":
                split = args[2] if len(args) > 2 else kwargs["split"]
                stage = "capture_fit" if split == opts.fit_split else "capture_eval"
                caches[stage] = result
            seconds[stage] = seconds.get(stage, 0.0) + elapsed["s"] - inner
            return result

        return call

    for name, fn in originals.items():
        setattr(pipeline, name, wrapped(name, fn))
    try:
        yield seconds, caches
    finally:
        for name, fn in originals.items():
            setattr(pipeline, name, fn)


def selected_images(opts: RunOptions) -> list[tuple[ImageSource, np.ndarray]]:
    """The source and the selected indices of the fit split, then of the eval split, as the pipeline selects them."""
    selected = []
    for split, limit in ((opts.fit_split, opts.fit_limit), (opts.eval_split, opts.eval_limit)):
        source = open_split(opts.data, split, opts.download_root)
        selected.append((source, select(len(source), limit, opts.seed)))
    return selected


def warm_page_cache(selected: list[tuple[ImageSource, np.ndarray]]) -> None:
    """Read every selected image file once, so that neither side is timed reading from disk."""
    for source, indices in selected:
        for index in indices if isinstance(source, ImageFolderSource) else ():
            Path(source.paths[index]).read_bytes()


def mean(values: list[float | None]) -> float | None:
    """The mean; None if any value is (a measurement this platform does not give)."""
    return None if None in values else sum(values) / len(values)


def mean_timings(floor_runs: list[float], pipeline_runs: list[dict]) -> dict:
    """``floor_s``, ``pipeline_s`` and the stages as means over the runs (each run's time kept), and ``ratio``."""
    floor_s = mean(floor_runs)
    pipeline_s = mean([run["pipeline_s"] for run in pipeline_runs])
    stages = {stage: mean([run["stages"][stage] for run in pipeline_runs]) for stage in pipeline_runs[0]["stages"]}
    return {"floor_s": floor_s, "pipeline_s": pipeline_s, "stages": stages, "ratio": pipeline_s / floor_s,
            "floor_runs_s": floor_runs, "pipeline_runs_s": [run["pipeline_s"] for run in pipeline_runs]}


def measure_pipeline(opts: RunOptions) -> tuple[dict, dict]:
    """``pipeline.run`` once, with its stage breakdown; returns (timings, caches by stage)."""
    with timed_stages(opts) as (seconds, caches), stopwatch() as total:
        pipeline.run(opts)

    stages = {
        "capture_fit_s": seconds["capture_fit"],
        "fit_lenses_s": seconds["train"],
        "capture_eval_s": seconds["capture_eval"],
        "evaluate_write_s": seconds["evaluate"],
        "setup_s": total["s"] - sum(seconds.values()),  # model loading and the checks before capture
    }
    return {"pipeline_s": total["s"], "stages": stages}, caches


@torch.no_grad()
def measure_floor(selected: list[tuple[ImageSource, np.ndarray]], opts: RunOptions, adapter) -> float:
    """Decode, transform and forward the ``selected`` images with no hooks and nothing kept.

    The input goes to the device as capture sends it (pinned memory, memory layout, precision).
    """
    memory_format = input_memory_format(adapter.device)
    with stopwatch() as elapsed:
        for source, indices in selected:
            dataset = TransformedSubset(source, indices, adapter.transform)
            loader = DataLoader(dataset, batch_size=opts.batch_size, num_workers=opts.workers,
                                pin_memory=adapter.device.type == "cuda")
            for images, _ in loader:
                backbone_logits(adapter, images, memory_format, opts.precision == "bf16")
    return elapsed["s"]


def labelled(cache) -> tuple[list[np.ndarray], np.ndarray]:
    """Every block's features, and the labels, of the images that have a model class."""
    labels = np.asarray(cache.labels)
    keep = labels >= 0
    return [np.asarray(f)[keep] for f in cache.features], labels[keep]


def compare_linear_probes(opts: RunOptions, adapter, caches: dict, sklearn: bool = True) -> dict:
    """Our linear probe on every block against scikit-learn's ``LogisticRegression`` on the same cached features.

    ``search``: ours as the pipeline fits it (the penalty chosen per block on a held-out slice, then the refit).
    ``same_penalty``: ours and scikit-learn at one penalty for every block (a median of the chosen ones) and
    the same iteration limit; scored on the cached eval features. Only with ``sklearn``.
    """
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    x_fit, y_fit = labelled(caches["capture_fit"])
    x_eval, y_eval = labelled(caches["capture_eval"])
    features = [torch.from_numpy(x).to(adapter.device) for x in x_fit]
    targets = torch.from_numpy(y_fit).to(adapter.device)

    def ours(settings) -> tuple[float, list[float], list[dict]]:
        probe = LinearProbe(LensConfig.from_adapter(adapter, layout, "linear_probe")).to(adapter.device)
        with stopwatch() as elapsed:
            records = fit_lens(probe, features, targets, None, settings, desc="probe")
        with torch.no_grad():
            acc = [float((probe(torch.from_numpy(x).to(adapter.device), k).argmax(-1).cpu().numpy() == y_eval).mean())
                   for k, x in enumerate(x_eval)]
        return elapsed["s"], acc, records

    search_s, search_acc, records = ours(opts.fit_settings)
    search = {"fit_s": search_s, "acc": search_acc, "weight_decay": [r["weight_decay"] for r in records]}
    if not sklearn:
        return {"search": search, "blocks": [b.name for b in adapter.blocks]}
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    weight_decay = sorted(r["weight_decay"] for r in records)[len(records) // 2]
    fixed_s, fixed_acc, _ = ours(dataclasses.replace(opts.fit_settings, weight_decay=weight_decay))
    sklearn_s, sklearn_acc = 0.0, []
    for k, block in enumerate(adapter.blocks):
        width = layout.slots * block.channels  # the whole-block part, as the probe reads it
        # The same loss and strength: mean cross-entropy + weight_decay / 2 * |W|^2 (sklearn leaves the bias
        # unpenalised), on the raw features, as a user would call it; ours penalises standardised weights.
        sklearn = LogisticRegression(C=1 / (weight_decay * len(y_fit)), max_iter=opts.max_iter)
        with warnings.catch_warnings(), threadpool_limits(torch.get_num_threads()), stopwatch() as theirs:
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the accuracies are reported
            sklearn.fit(x_fit[k][:, :width], y_fit)
        sklearn_s += theirs["s"]
        sklearn_acc.append(float(sklearn.score(x_eval[k][:, :width], y_eval)))
    return {
        "search": search,
        "same_penalty": {
            "weight_decay": weight_decay, "ours_fit_s": fixed_s, "ours_acc": fixed_acc,
            "sklearn_fit_s": sklearn_s, "sklearn_acc": sklearn_acc, "speedup": sklearn_s / fixed_s,
        },
        "blocks": [b.name for b in adapter.blocks],
    }


@torch.no_grad()
def bytes_per_image(opts: RunOptions, adapter, cache) -> dict:
    """What storing every block's full output would take per image, against what capture keeps."""
    full = 0

    def count(module, inputs, output):
        nonlocal full
        full += output[:1].numel() * output.element_size()

    hooks = [adapter.model.get_submodule(b.module).register_forward_hook(count) for b in adapter.blocks]
    try:
        image = open_split(opts.data, opts.fit_split, opts.download_root).load(0)
        adapter.logits(adapter.transform(image)[None].to(adapter.device))
    finally:
        for hook in hooks:
            hook.remove()
    kept = sum(np.asarray(f).itemsize * f.shape[1] for f in [*cache.features, cache.logits])
    return {"full_block_maps": full, "kept": int(kept), "ratio": full / kept}


def rss_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def max_rss_mb() -> float:
    """getrusage's peak resident memory of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def capture_rss(args: argparse.Namespace) -> dict:
    """In this (fresh) process: load the model, capture ``args.capture_rss_of`` fit images
    ``args.capture_rounds`` times, each into a fresh cache, and report the peak after each round.

    Importing torch alone takes about 1 GB of resident memory, so the peak is reset
    (Linux: ``5 > /proc/self/clear_refs``) after loading: ``peak_mb`` is the peak during the first capture.
    """
    with tempfile.TemporaryDirectory() as tmp:
        opts = run_options(args, Path(tmp) / "out", Path(tmp) / "cache")
        adapter = pipeline.load_model(opts)
        before = rss_mb("VmRSS")
        if before is not None:
            Path("/proc/self/clear_refs").write_text("5")
        layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
        source = open_split(opts.data, opts.fit_split, opts.download_root)
        peaks = []
        for n in range(args.capture_rounds):
            fresh = dataclasses.replace(opts, cache_dir=str(Path(tmp) / f"cache-{n}"))
            (cache,), _ = pipeline.capture_shards(adapter, fresh, opts.fit_split, args.capture_rss_of, layout, source)
            # Off Linux the peak is that of the whole process, imports included.
            peaks.append(rss_mb("VmHWM") or max_rss_mb())
        return {"images": len(cache.labels), "before_capture_mb": before, "peak_mb": peaks[0], "peak_rounds_mb": peaks}


def measure_capture_rss(args: argparse.Namespace, sizes: list[int]) -> list[dict]:
    """Each size's capture peak, ``args.repeats`` subprocesses each, alternating; the largest size's
    subprocesses capture it ``args.rss_rounds`` times (``peak_rounds_mb``: one list per subprocess)."""
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    for _ in range(args.repeats):
        for size in sizes:
            rounds = args.rss_rounds if size == max(sizes) else 1
            command = [sys.executable, __file__, *sys.argv[1:], "--capture-rss-of", str(size),
                       "--capture-rounds", str(rounds)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[size].append(json.loads(done.stdout.splitlines()[-1]))
    return [
        {"images": runs[size][0]["images"],
         "before_capture_mb": mean([r["before_capture_mb"] for r in runs[size]]),
         "peak_mb": mean([r["peak_mb"] for r in runs[size]]),
         "peak_runs_mb": [r["peak_mb"] for r in runs[size]]}
        | ({"peak_rounds_mb": [r["peak_rounds_mb"] for r in runs[size]]} if size == max(sizes) else {})
        for size in sizes
    ]


def main() -> None:
    args = parse_args()
    threads = limit_torch_threads()
    if args.capture_rss_of is not None:
        print(json.dumps(capture_rss(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        opts = run_options(args, Path(tmp) / "out", Path(tmp) / "cache")
        adapter = pipeline.load_model(opts)  # the one-off imports (the model's family), before either is timed
        selected = selected_images(opts)
        warm_page_cache(selected)
        floor_runs, runs = [measure_floor(selected, opts, adapter)], []
        for repeat in range(args.repeats):
            run_opts = run_options(args, Path(tmp) / f"out-{repeat}", Path(tmp) / f"cache-{repeat}")
            runs.append(measure_pipeline(run_opts))
            floor_runs.append(measure_floor(selected, opts, adapter))
        _, caches = runs[-1]
        probes = compare_linear_probes(opts, adapter, caches, args.sklearn)
        fit_images, eval_images = (len(caches[c].labels) for c in ("capture_fit", "capture_eval"))
    means = mean_timings(floor_runs, [timings for timings, _ in runs])
    report = {
        "model": args.model, "weights": args.weights, "data": args.data, "fit_images": fit_images,
        "eval_images": eval_images, "workers": args.workers, "batch_size": opts.batch_size, "device": opts.device,
        "accelerator": torch.cuda.get_device_name() if adapter.device.type == "cuda" else None,
        "precision": args.precision, "torch_threads": threads, **means,
        "images_per_s": {side: (fit_images + eval_images) / means[f"{side}_s"] for side in ("floor", "pipeline")},
        "linear_probe": probes,
        "capture_bytes_per_image": bytes_per_image(opts, adapter, caches["capture_fit"]),
        "capture_peak_rss": measure_capture_rss(args, args.rss_sizes or [max(1, fit_images // 4), fit_images]),
        "versions": {"vision_lens": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
