#!/usr/bin/env python
"""The whole ``vision-lens run`` against the fastest plain forward pass that can be found; prints JSON.

* ``floor_search``: the plain pass, searched. Every configuration of ``--floor-decode`` (``inside``:
  a DataLoader decodes and transforms the images while the model runs; ``before``: every image is
  decoded and transformed into memory first, by the same loader, then the model runs on them from
  there; ``phased``: the loader's workers decode a chunk while the model waits, then wait while it
  runs, ``data.phased_batches``, as capture loads on the CPU), ``--floor-batch-sizes`` and ``--floor-workers`` (0 decodes in the main process) passes the
  fit and the eval images through the model, with no hooks and nothing kept, the input sent to the
  device as capture sends it (pinned memory, ``channels_last`` on CUDA, ``--precision``), once per
  round of ``--floor-rounds`` (every other round in reverse order, so that a machine that drifts
  favours no end of the grid), after an untimed warm-up. Each configuration's fastest pass is its
  ``seconds`` in ``configs`` (every pass in ``runs_s``; ``pipeline: true`` marks the one the pipeline
  itself runs, whether or not it was in the grid); ``winner`` is the fastest, the floor. ``before``
  is left out where the decoded images would take more than ``--floor-memory-mb``.
* ``runs``: ``vision-lens run`` itself, ``--repeats`` times, each in a fresh interpreter
  (``scripts/timed_run.py``) with a fresh feature cache and the pipeline's own defaults (or
  ``--batch-size`` and ``--workers``). ``wall_s`` is the whole process from the outside, imports,
  start and exit included; ``stages`` are the times measured inside it, each in one function of
  the pipeline and exclusive of the stages it calls (see scripts/timed_run.py), with
  ``command_s``, the time in ``vision_lens.cli.main``. Beside each run the interpreter's own
  ``python -c "import torch, torchvision"`` is timed from the outside too (``import_runs_s``).
* The floor's winner and the runs alternate (floor, import, run, floor, import, run, ..., floor;
  every pass in ``floor_runs_s``), so that neither side gains from when it ran; ``floor_s`` and the
  other times are means over the passes.
  - ``capture``: ``capture_fit`` + ``capture_eval``, and ``fraction_of_floor``, capture's images/s
    over the floor's (``floor_s / capture_s``): everything capture does is in it (decoding, hashing
    every image's bytes, pooling in the hooks, writing the cache, loading it).
  - ``ratio = pipeline_s / floor_s``, with ``pipeline_s`` the mean ``command_s`` (the run without
    the process's imports).
  - ``whole_run``: ``wall_s`` over ``floor_s`` plus the import of torch and torchvision, which a
    plain pass needs too (``ratio``); every import beyond those, the fits, the evaluation with its
    bootstrap, the figures and the report count against it.
* ``linear_probe``: our linear probe on every block as the pipeline fits it (the penalty chosen per
  block on a held-out slice, then the refit), and ours against scikit-learn's
  ``LogisticRegression`` at one penalty for every block (the same loss, L2 strength and iteration
  limit; scikit-learn on the raw features with its bias unpenalised, ours on standardised
  features), on the last run's cached fit features, scored on its cached eval features: fit times
  and accuracies (``--no-sklearn`` leaves scikit-learn out: at ImageNet's 1,000 classes it takes
  minutes per block).
* ``capture_peak_rss``: the peak resident memory of the main process while it captures the fit
  split, at two sizes (``--rss-sizes``; default a quarter of the fit images, and all of them), each
  in a fresh subprocess so the peaks do not mix (DataLoader workers, separate processes, are not
  counted). The sizes alternate, ``--repeats`` times each; ``peak_mb`` is the mean of the peaks in
  ``peak_runs_mb``. The largest size's subprocess then captures it again, into fresh caches, up to
  ``--rss-rounds`` times in all, and ``peak_rounds_mb`` holds its peak after each round: glibc's
  heap behind torch's activations fragments as images pass and plateaus, at a height that differs
  between runs and grows with the batch size (capture returns the free heap every 16 batches, which
  lowers it), so whether memory grows with the number of images shows best within one process.
* ``capture_bytes_per_image``: what storing every block's full output would take per image,
  against the pooled features and logits that capture keeps.

The floor passes meet a warm page cache (every selected image file is read once before anything is
timed), and so do the runs. ``--search-only`` prints the floor search alone. Example (the committed
benchmark; see docs/performance.md)::

    OMP_NUM_THREADS=2 python scripts/benchmark_pipeline.py --model cifar:resnet20 \\
        --weights ../shared/weights/cifar10-resnets/resnet20-12fca82f.th \\
        --data ../shared/data/cifar10 --fit-limit 10000 --eval-limit 10000 --rss-sizes 10000 50000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timed_run, beside this file
from timed_run import max_rss_mb, rss_mb, stopwatch  # noqa: E402

from vision_lens import __version__, pipeline  # noqa: E402
from vision_lens.capture import backbone_logits, input_memory_format, loads_in_phases  # noqa: E402
from vision_lens.data import (ImageFolderSource, ImageSource, TransformedSubset, open_split,  # noqa: E402
                              phased_batches, select)
from vision_lens.fit import fit_lens  # noqa: E402
from vision_lens.lenses import LensConfig, LinearProbe  # noqa: E402
from vision_lens.options import RunOptions, default_cache_dir  # noqa: E402
from vision_lens.preflight import plan_split  # noqa: E402
from vision_lens.readout import FeatureLayout  # noqa: E402
from vision_lens.threads import limit_torch_threads, usable_cores  # noqa: E402

TIMED_RUN = Path(__file__).resolve().parent / "timed_run.py"
CAPTURE_STAGES = ("capture_fit", "capture_eval")
IMPORT_STAGES = ("import_torch_torchvision", "import_vision_lens")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar:resnet20", help="model as family:arch (default: cifar:resnet20)")
    parser.add_argument("--weights", default="random", help="checkpoint path, 'pretrained' or 'random' (default)")
    parser.add_argument("--data", required=True, help="dataset root with one ImageFolder per split, as for `vision-lens run`")
    parser.add_argument("--fit-split", default="train", help="split folder of the fit images (default: train)")
    parser.add_argument("--eval-split", default="test", help="split folder of the eval images (default: test)")
    parser.add_argument("--fit-limit", type=int, default=None, help="fit images (default: the whole fit split)")
    parser.add_argument("--eval-limit", type=int, default=None, help="eval images (default: the whole eval split)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading workers of the pipeline's runs (default: the pipeline's own)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass of the pipeline's runs (default: the pipeline's own)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="backbone precision of the floor and of capture (default: fp32)")
    parser.add_argument("--floor-decode", nargs="+", default=["inside", "before", "phased"],
                        choices=("inside", "before", "phased"),
                        help="how the floor decodes: inside the loader while the model runs, every image before, "
                             "or in phases, the workers decoding a chunk while the model waits (default: all)")
    parser.add_argument("--floor-batch-sizes", type=int, nargs="+", default=[64, 256, 512],
                        help="batch sizes the floor search tries (default: 64 256 512)")
    parser.add_argument("--floor-workers", type=int, nargs="+", default=None,
                        help="loader workers the floor search tries (default: 0, 1, 2, 4, ... and the usable cores)")
    parser.add_argument("--floor-memory-mb", type=float, default=4096,
                        help="the most memory the decoded images of a 'before' floor may take (default: 4096)")
    parser.add_argument("--floor-rounds", type=int, default=2,
                        help="passes over the grid, every other one in reverse order; each configuration keeps its "
                             "fastest (default: 2)")
    parser.add_argument("--search-only", action="store_true", help="print the floor search and stop")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of the pipeline, each between two passes of the floor (default: 2)")
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


def run_command(args: argparse.Namespace, out: Path, cache_dir: Path) -> list[str]:
    """``vision-lens run`` with the options of :func:`run_options`, as a command line."""
    command = ["run", "--match-classes-by-position", "--model", args.model, "--weights", args.weights, "--data",
               args.data, "--out", str(out), "--fit-split", args.fit_split, "--eval-split", args.eval_split,
               "--precision", args.precision, "--cache-dir", str(cache_dir),
               "--download-root", str(Path(default_cache_dir()) / "datasets")]
    for flag, value in (("--fit-limit", args.fit_limit), ("--eval-limit", args.eval_limit),
                        ("--workers", args.workers), ("--batch-size", args.batch_size)):
        if value is not None:
            command += [flag, str(value)]
    return command


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


def host(values) -> np.ndarray:
    """``values`` as a numpy array on the host: a cache's array as it is, a tensor (on any device) copied back."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def mean(values: list[float | None]) -> float | None:
    """The mean; None if any value is (a measurement this platform does not give)."""
    return None if None in values else sum(values) / len(values)


@dataclasses.dataclass(frozen=True)
class FloorConfig:
    """One way to pass the images through the model: where they are decoded, images per batch, loader workers."""

    decode: str  # "inside" the loader while the model runs, every image "before", or in "phased" chunks
    batch_size: int
    workers: int


def default_floor_workers(cores: int) -> list[int]:
    """0, 1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    counts = [0] + [2**k for k in range(cores.bit_length()) if 2**k <= cores]
    return sorted(set(counts) | {cores})


def pipeline_decode(opts: RunOptions) -> str:
    """How capture decodes with ``opts`` (resolved): in phases on the CPU with workers, else inside the loader."""
    return "phased" if opts.workers and loads_in_phases(opts.device) else "inside"


def floor_configs(args: argparse.Namespace, own: FloorConfig) -> list[FloorConfig]:
    """The grid of the floor search, with the pipeline's ``own`` configuration in it."""
    workers = args.floor_workers if args.floor_workers is not None else default_floor_workers(usable_cores())
    grid = [FloorConfig(decode, batch, w) for decode in args.floor_decode for batch in args.floor_batch_sizes
            for w in workers if w or decode != "phased"]  # phases without workers: the main process decodes
    return grid if own in grid else [*grid, own]


def decoded_mb(selected: list[tuple[ImageSource, np.ndarray]], adapter) -> float:
    """The memory the transformed images of ``selected`` take, decoded (one image's, times their number)."""
    source, indices = selected[0]
    image = adapter.transform(source.load(int(indices[0])))
    return image.numel() * image.element_size() * sum(len(i) for _, i in selected) / 2**20


@torch.no_grad()
def floor_pass(selected: list[tuple[ImageSource, np.ndarray]], adapter, config: FloorConfig, precision: str) -> float:
    """Decode, transform and forward the ``selected`` images in ``config``'s way, with no hooks and nothing kept;
    returns the seconds. The input goes to the device as capture sends it (pinned memory, layout, precision)."""
    memory_format = input_memory_format(adapter.device)
    pin = adapter.device.type == "cuda"
    bf16 = precision == "bf16"
    with stopwatch() as elapsed:
        for source, indices in selected:
            dataset = TransformedSubset(source, indices, adapter.transform)
            if config.decode == "phased":
                for images, _ in phased_batches(dataset, config.batch_size, config.workers, pin_memory=pin):
                    backbone_logits(adapter, images, memory_format, bf16)
                continue
            loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                                pin_memory=pin and config.decode == "inside")
            if config.decode == "inside":
                for images, _ in loader:
                    backbone_logits(adapter, images, memory_format, bf16)
                continue
            decoded, start = None, 0
            for images, _ in loader:  # every image first, into one tensor
                if decoded is None:
                    decoded = torch.empty((len(indices), *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
                decoded[start : start + len(images)] = images
                start += len(images)
            for start in range(0, len(decoded), config.batch_size):
                backbone_logits(adapter, decoded[start : start + config.batch_size], memory_format, bf16)
    return elapsed["s"]


def search_floor(selected, adapter, configs: list[FloorConfig], own: FloorConfig, precision: str,
                 memory_mb: float, rounds: int = 2, measure=floor_pass) -> dict:
    """Every configuration's time (``measure``: see :func:`floor_pass`), the fastest as ``winner``.

    The grid is passed ``rounds`` times, every other round in reverse order, so that a machine that slows or
    speeds up as the search runs favours no end of it; a configuration's ``seconds`` is the least of its
    passes (all in ``runs_s``). ``before`` configurations whose decoded images exceed ``memory_mb`` are listed
    as skipped.
    """
    images = sum(len(indices) for _, indices in selected)
    needed = decoded_mb(selected, adapter)
    (source, indices), *_ = selected
    measure([(source, indices[:256])], adapter, FloorConfig("inside", 64, 0), precision)  # warm-up, untimed
    rows = {config: dataclasses.asdict(config) | {"pipeline": config == own} for config in configs}
    for config, row in rows.items():
        if config.decode == "before" and needed > memory_mb:
            row["skipped"] = f"the decoded images take {needed:.0f} MiB, over --floor-memory-mb {memory_mb:.0f}"
    for round_ in range(rounds):
        for config in configs if round_ % 2 == 0 else configs[::-1]:
            row = rows[config]
            if "skipped" not in row:
                row.setdefault("runs_s", []).append(measure(selected, adapter, config, precision))
                row |= {"seconds": min(row["runs_s"]), "images_per_s": images / min(row["runs_s"])}
            print(f"[benchmark] floor {row}", file=sys.stderr)
    tried = list(rows.values())
    winner = min((row for row in tried if "seconds" in row), key=lambda row: row["seconds"])
    return {"images": images, "rounds": rounds, "configs": tried, "winner": winner,
            "pipeline_config": next((row for row in tried if row["pipeline"]), None)}


def measure_import() -> float:
    """Wall seconds of a fresh interpreter that imports torch and torchvision, and exits."""
    with stopwatch() as elapsed:
        subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
    return elapsed["s"]


def measure_run(command: list[str]) -> dict:
    """``vision-lens`` ``command`` in a fresh interpreter (scripts/timed_run.py): its stages as measured inside,
    and ``wall_s``, the whole process from the outside."""
    with stopwatch() as elapsed:
        done = subprocess.run([sys.executable, str(TIMED_RUN), *command], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vision-lens {' '.join(command)} failed (exit {done.returncode}); see its stderr above")
    return json.loads(done.stdout.splitlines()[-1]) | {"wall_s": elapsed["s"]}


def summarise(floor_runs: list[float], imports: list[float], runs: list[dict]) -> dict:
    """Means over the passes, the capture fraction and both ratios (see the module docstring)."""
    floor_s = mean(floor_runs)
    stages = {stage: mean([run["stages"].get(stage, 0.0) for run in runs]) for stage in runs[0]["stages"]}
    capture_s = sum(stages[stage] for stage in CAPTURE_STAGES)
    pipeline_s = mean([run["command_s"] for run in runs])
    wall_s, import_s = mean([run["wall_s"] for run in runs]), mean(imports)
    return {
        "floor_s": floor_s, "pipeline_s": pipeline_s, "ratio": pipeline_s / floor_s, "stages": stages,
        "capture": {"s": capture_s, "fraction_of_floor": floor_s / capture_s},
        "whole_run": {"wall_s": wall_s, "import_torch_torchvision_s": import_s,
                      "ratio": wall_s / (floor_s + import_s)},
        "floor_runs_s": floor_runs, "pipeline_runs_s": [run["command_s"] for run in runs],
        "wall_runs_s": [run["wall_s"] for run in runs], "import_runs_s": imports,
        "stage_runs_s": [run["stages"] for run in runs],
    }


def read_caches(adapter, opts: RunOptions) -> dict:
    """The fit and eval splits of a finished run with ``opts`` (resolved), read back from its complete feature
    caches (``pipeline.capture_split``), by stage."""
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    return {f"capture_{side}": pipeline.capture_split(
                adapter, opts, plan_split(opts, adapter, split, open_split(opts.data, split, opts.download_root), limit,
                                          layout), layout)
            for side, split, limit in (("fit", opts.fit_split, opts.fit_limit),
                                       ("eval", opts.eval_split, opts.eval_limit))}


def labelled(cache) -> tuple[list[np.ndarray], np.ndarray]:
    """Every block's features, and the labels, of the images that have a model class, on the host (the labels
    and logits of a split live on the model's device)."""
    labels = host(cache.labels)
    keep = labels >= 0
    return [host(f)[keep] for f in cache.features], labels[keep]


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
    search = {"fit_s": search_s, "acc": search_acc, "weight_decay": [r.weight_decay for r in records]}
    if not sklearn:
        return {"search": search, "blocks": [b.name for b in adapter.blocks]}
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    weight_decay = sorted(r.weight_decay for r in records)[len(records) // 2]
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
    kept = sum(host(f[:1]).itemsize * f.shape[1] for f in [*cache.features, cache.logits])
    return {"full_block_maps": full, "kept": int(kept), "ratio": full / kept}


def capture_rss(args: argparse.Namespace) -> dict:
    """In this (fresh) process: load the model, capture ``args.capture_rss_of`` fit images
    ``args.capture_rounds`` times, each into a fresh cache, and report the peak after each round.

    Importing torch alone takes about 1 GB of resident memory, so the peak is reset
    (Linux: ``5 > /proc/self/clear_refs``) after loading: ``peak_mb`` is the peak during the first capture.
    """
    with tempfile.TemporaryDirectory() as tmp:
        adapter, opts = pipeline.load_model(run_options(args, Path(tmp) / "out", Path(tmp) / "cache"))
        before = rss_mb("VmRSS")
        if before is not None:
            Path("/proc/self/clear_refs").write_text("5")
        layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
        source = open_split(opts.data, opts.fit_split, opts.download_root)
        peaks = []
        plan = plan_split(opts, adapter, opts.fit_split, source, args.capture_rss_of, layout)
        for n in range(args.capture_rounds):
            fresh = dataclasses.replace(opts, cache_dir=str(Path(tmp) / f"cache-{n}"))
            (cache,) = pipeline.capture_shards(adapter, fresh, plan, layout)
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
        # Resolves the pipeline's default batch size and workers.
        adapter, opts = pipeline.load_model(run_options(args, Path(tmp) / "out", Path(tmp) / "cache"))
        own = FloorConfig(pipeline_decode(opts), opts.batch_size, opts.workers)
        selected = selected_images(opts)
        warm_page_cache(selected)
        search = search_floor(selected, adapter, floor_configs(args, own), own, args.precision, args.floor_memory_mb,
                              args.floor_rounds)
        if args.search_only:
            print(json.dumps(search, indent=1))
            return
        winner = FloorConfig(*(search["winner"][f.name] for f in dataclasses.fields(FloorConfig)))
        floor_runs, imports, runs = [floor_pass(selected, adapter, winner, args.precision)], [], []
        for repeat in range(args.repeats):
            out, cache = Path(tmp) / f"out-{repeat}", Path(tmp) / f"cache-{repeat}"
            imports.append(measure_import())
            runs.append(measure_run(run_command(args, out, cache)))
            floor_runs.append(floor_pass(selected, adapter, winner, args.precision))
        caches = read_caches(adapter, dataclasses.replace(opts, out=str(out), cache_dir=str(cache)))
        probes = compare_linear_probes(opts, adapter, caches, args.sklearn)
        fit_images, eval_images = (len(caches[c].labels) for c in CAPTURE_STAGES)
    means = summarise(floor_runs, imports, runs)
    images = fit_images + eval_images
    report = {
        "model": args.model, "weights": args.weights, "data": args.data, "fit_images": fit_images,
        "eval_images": eval_images, "workers": opts.workers, "batch_size": opts.batch_size, "device": opts.device,
        "accelerator": torch.cuda.get_device_name() if adapter.device.type == "cuda" else None,
        "precision": args.precision, "torch_threads": threads, "usable_cores": usable_cores(),
        "floor_search": search, "floor": dataclasses.asdict(winner), **means,
        "images_per_s": {"floor": images / means["floor_s"], "pipeline": images / means["pipeline_s"],
                         "capture": images / means["capture"]["s"]},
        "linear_probe": probes,
        "capture_bytes_per_image": bytes_per_image(opts, adapter, caches["capture_fit"]),
        "capture_peak_rss": measure_capture_rss(args, args.rss_sizes or [max(1, fit_images // 4), fit_images]),
        "versions": {"vision_lens": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
