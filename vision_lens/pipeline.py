"""The loops: model + data in, lenses and metrics out.

``train`` captures the fit split and fits every lens on every block;
``evaluate`` captures the eval split and writes the result bundle; ``run``
does both. Each option is defined once, with its help text, in the
dataclasses of ``options.py``; the command line is generated from them.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from . import __version__
from .adapters import ModelAdapter, create_adapter
from .artifacts import (RunResults, check_output, load_results, mark_complete, prepare_output, require_complete,
                        write_results, writing_into)
from .cache import FeatureCache
from .capture import capture, default_batch_size, default_workers
from .checks import check_fit
from .data import DataError, ImageSource, SelectedImages, data_id, select
from .files import write_text_atomic
from .fit import TunedLensRecipe, fit_by_recipe, fit_lens
from .lenses import LENS_TYPES, LensFolderError, build_lenses
from .readout import FeatureLayout
from .metrics import evaluate_lenses
from .options import CommonOptions, EvalOptions, RunOptions, default_cache_dir, resolve_device  # noqa: F401  (re-exported)
from .plotting import save_run_figures
from .preflight import check_eval_images, check_eval_split, label_map, preflight
from .report import write_report

FITTED_LENSES = ("tuned", "shared", "linear_probe")
KL_FITTED = ("tuned", "shared")  # fitted to the model's output unless --loss ce; the probe always to labels
RECIPE_FITTED = KL_FITTED  # what --recipe tuned-lens fits: the translators (tuned-lens has no probe)


def _check_output(opts: CommonOptions) -> None:
    """``--out`` checked, creating nothing, on rank 0 (the one process that writes)."""
    if rank_and_world()[0] == 0:
        check_output(opts.out, opts.overwrite, keep=opts.inputs())


def _prepare_output(opts: CommonOptions) -> Path | None:
    """``--out``, checked and ready, on rank 0 (the one process that writes); None on the others. Called once the
    model and the data have passed their checks, so that a bad argument leaves no folder behind."""
    if rank_and_world()[0] != 0:
        return None
    return prepare_output(opts.out, opts.overwrite, keep=opts.inputs())


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: ``torchrun`` sets RANK and WORLD_SIZE; alone, (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _start_processes(opts: CommonOptions) -> None:
    """Under ``torchrun``: join the process group (NCCL on GPUs, Gloo on CPU), one GPU per local rank."""
    rank, world = rank_and_world()
    if world == 1 or dist.is_initialized():
        return
    if opts.device.startswith("cuda"):
        opts.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(opts.device)
    # Rank 0 fits between two captures while the others wait: allow long fits.
    dist.init_process_group("nccl" if opts.device.startswith("cuda") else "gloo", timeout=timedelta(hours=24))


def stop_processes() -> None:
    """Leave the ``torchrun`` process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_model(opts: CommonOptions) -> ModelAdapter:
    """The adapter on ``opts.device``; ``auto`` and the default batch size and workers are resolved here, and kept
    in ``opts`` for run.json."""
    opts.device = resolve_device(opts.device)
    opts.batch_size = opts.batch_size or default_batch_size(opts.device)
    opts.workers = default_workers(opts.device) if opts.workers is None else opts.workers
    _start_processes(opts)
    return create_adapter(opts.model, weights=opts.weights, seed=opts.seed).to(opts.device)


@dataclass
class SplitFeatures:
    """One captured split in memory: pooled features per block, the model's logits, labels, aux logits."""

    features: list[Tensor]
    logits: Tensor
    labels: Tensor
    aux_logits: dict[int, Tensor]
    classes: int  # the split's classes that are model outputs (for chance accuracy)
    images: SelectedImages | None = None  # the images of the rows

    @classmethod
    def of(cls, caches: list[FeatureCache], device: str | torch.device, classes: int,
           images: SelectedImages | None = None) -> "SplitFeatures":
        """The caches' rows, in order (one cache, or the shards of a multi-process capture)."""

        def rows(arrays) -> Tensor:
            return torch.from_numpy(np.concatenate([np.asarray(a) for a in arrays]))

        return cls(
            [rows(c.features[k] for c in caches) for k in range(len(caches[0].features))],
            rows(c.logits for c in caches).to(device),
            rows(c.labels for c in caches).to(device),
            {k: rows(c.aux_logits[k] for c in caches) for k in caches[0].aux_logits},
            classes,
            images,
        )


def capture_shards(
    adapter: ModelAdapter, opts: CommonOptions, split: str, limit: int | None, layout: FeatureLayout,
    source: ImageSource,
) -> tuple[list[FeatureCache], int, np.ndarray] | None:
    """Capture one split (its images: ``source``) into the feature cache (reused or resumed when it exists),
    without loading it.

    Under ``torchrun`` each of the N processes captures one of N disjoint,
    contiguous shards of the split (every image exactly once, no padding), each
    into its own resumable cache; after a barrier, rank 0 gets all shards' caches
    in order, with the number of the split's classes that are model outputs and
    the indices of the images selected, and the other ranks get None.
    """
    classes = label_map(opts, adapter, split, source)
    indices = select(len(source), limit, opts.seed)
    rank, world = rank_and_world()
    shards = np.array_split(indices, world)
    if rank == 0:
        print(f"[vision-lens] {split}: {len(indices)} of {len(source)} images from {opts.data}"
              + (f", in {world} shards" if world > 1 else ""), file=sys.stderr)

    def capture_shard(r: int) -> FeatureCache:
        return capture(
            adapter, source, shards[r], Path(opts.cache_dir) / "features", classes, layout,
            batch_size=opts.batch_size, workers=opts.workers, desc=f"capture {split}" + (f" [{r}]" if world > 1 else ""),
            bf16=opts.precision == "bf16",
        )

    own = capture_shard(rank)
    if world > 1:
        dist.barrier()  # every shard is complete before rank 0 reads them
        if rank != 0:
            return None
    # Rank 0 opens the other shards' complete caches (and would capture any shard a crashed rank left).
    return [own if r == rank else capture_shard(r) for r in range(world)], int((classes >= 0).sum()), indices


def capture_split(
    adapter: ModelAdapter, opts: CommonOptions, split: str, limit: int | None, layout: FeatureLayout,
    source: ImageSource,
) -> SplitFeatures | None:
    """:func:`capture_shards`, then the split loaded into memory (on rank 0; None on the others)."""
    captured = capture_shards(adapter, opts, split, limit, layout, source)
    if captured is None:
        return None
    caches, classes, indices = captured
    images = SelectedImages(data_id(opts.data), split, source, indices, Path(opts.cache_dir) / "features")
    return SplitFeatures.of(caches, adapter.device, classes, images)


def _run_info(opts: CommonOptions, adapter: ModelAdapter, **extra) -> dict:
    return {
        "model": opts.model,
        "weights": opts.weights,
        "weights_sha256": adapter.weights_id,
        "data": str(opts.data),
        "blocks": [b.name for b in adapter.blocks],
        "block_stages": [b.stage for b in adapter.blocks],
        "num_classes": adapter.num_classes,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("out", "cache_dir", "download_root")},
        "vision_lens": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
    }


def train(
    opts: RunOptions, out: Path | None = None, adapter: ModelAdapter | None = None, fit: SplitFeatures | None = None
) -> Path | None:
    """Capture the fit split (unless ``fit`` is given) and fit a tuned lens, a shared tuned lens and a linear probe
    on every block. Under ``torchrun`` only rank 0 fits and writes; the others return None after capture."""
    standalone = adapter is None  # else run() checked both splits and completes the folder after eval
    if out is None:
        _check_output(opts)
    adapter = adapter or load_model(opts)
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    if fit is None:
        (source,) = preflight(opts, adapter, (opts.fit_split,), layout, rank_and_world()[1]).values()
        out = out or _prepare_output(opts)
        fit = capture_split(adapter, opts, opts.fit_split, opts.fit_limit, layout, source)
    if fit is None:
        return None
    features, logits, labels = fit.features, fit.logits, fit.labels
    labelled = labels >= 0
    if not labelled.all():
        print(f"[vision-lens] {int(labelled.sum())} of {len(labels)} fit images have a model class; "
              "label-trained lenses use those only", file=sys.stderr)
    if not labelled.any() and opts.loss == "ce":
        raise DataError(f"--data {opts.data}: no fit image maps to a model class, so --loss ce has no targets")
    fitted = FITTED_LENSES if labelled.any() else KL_FITTED
    lenses = build_lenses(adapter, layout, fitted)
    fits = {}
    for lens_type, lens in lenses.items():
        kl_target = logits if lens_type in KL_FITTED and opts.loss == "kl" else None
        loss = "kl" if kl_target is not None else "ce"
        desc = f"fit {lens_type} ({loss})"
        if opts.recipe == "tuned-lens" and lens_type in RECIPE_FITTED:
            recipe = TunedLensRecipe(seed=opts.seed)
            per_block, settings = fit_by_recipe(lens, features, labels, kl_target, recipe, desc), recipe.to_dict()
        else:
            per_block, settings = fit_lens(lens, features, labels, kl_target, opts.fit_settings, desc), \
                {"recipe": "optimum"} | opts.fit_settings.to_dict()
        check_fit(lens_type, lens, [r and r["loss_nats"] for r in per_block], list(layout.blocks))
        lens.config.fit = {
            "loss": loss, "images": len(labels), "split": opts.fit_split, **settings,
            "blocks": {name: record for name, record in zip(layout.blocks, per_block)},
        }
        lens.config.fit_images = fit.images.record(opts.seed) if fit.images else {}
        with writing_into(out):
            lens.save(out / "lenses" / lens_type)
        fits[lens_type] = lens.config.fit
    with writing_into(out):
        write_text_atomic(out / "train.json", json.dumps(_run_info(opts, adapter, fit_images=len(labels), fit=fits),
                                                         indent=1))
        if standalone:
            mark_complete(out)
    return out


def evaluate(
    opts: CommonOptions, lens_dir: Path, out: Path | None = None, adapter: ModelAdapter | None = None,
    held_out: SplitFeatures | None = None, report_note: str | None = None,
) -> Path | None:
    """Evaluate saved lenses (plus the logit lens) on the eval split (unless ``held_out`` is given) and write the
    result bundle (``report_note`` under the report's title). Under ``torchrun`` only rank 0 evaluates and writes;
    the others return None after capture."""
    standalone = adapter is None  # else run() checked both splits
    if out is None:
        _check_output(opts)
    if standalone:
        require_complete(lens_dir, needs="lenses/")  # every lens the run fitted, or none evaluated
        adapter = load_model(opts)
    fitted = {
        t: LENS_TYPES[t].load(lens_dir / "lenses" / t, adapter)
        for t in FITTED_LENSES if (lens_dir / "lenses" / t).is_dir()
    }
    if not fitted:
        raise FileNotFoundError(f"--lens {lens_dir} holds no fitted lenses (lenses/tuned, ...); run `vision-lens train` first")
    # The lenses say what they read; every fitted lens of one run reads the same layout.
    layouts = {t: lens.config.feature_layout for t, lens in fitted.items()}
    layout = next(iter(layouts.values()))
    if any(other != layout for other in layouts.values()):
        raise LensFolderError(f"--lens {lens_dir}: its lenses were fitted on different feature layouts ({', '.join(layouts)})")
    lenses = build_lenses(adapter, layout, ("logit",)) | fitted
    lenses = {t: lenses[t] for t in ("tuned", "shared", "logit", "linear_probe") if t in lenses}
    warnings = []
    if held_out is None:
        warnings = check_eval_split(fitted, opts, lens_dir)
        (source,) = preflight(opts, adapter, (opts.eval_split,), layout, rank_and_world()[1]).values()
        out = out or _prepare_output(opts)
        held_out = capture_split(adapter, opts, opts.eval_split, opts.eval_limit, layout, source)
    if held_out is None:
        return None
    if held_out.images is not None and not warnings:
        warnings = check_eval_images(fitted, held_out.images, opts, lens_dir)
    print(f"[vision-lens] evaluating {', '.join(lenses)} on {len(adapter.blocks)} blocks", file=sys.stderr)
    aux = held_out.aux_logits
    aggregate, batches, intervals = evaluate_lenses(
        lenses, held_out.features, held_out.logits, held_out.labels, fixed_logits={"aux_head": aux} if aux else None,
        intervals=True, block_stages=[b.stage for b in adapter.blocks], seed=opts.seed,
    )
    layers = {f"layer_{k}": b.name for k, b in enumerate(adapter.blocks)}
    fit = {t: lens.config.fit for t, lens in lenses.items() if lens.config.fit}
    run_info = _run_info(
        opts, adapter, eval_images=len(held_out.labels), eval_classes=held_out.classes, lens=str(lens_dir), fit=fit,
        **({"warnings": warnings} if warnings else {}),
    )
    with writing_into(out):
        write_results(out, aggregate, batches, layers, run_info, intervals)
        save_run_figures(out, out)
        write_report(out, note=report_note)
        mark_complete(out)  # last: compare and report refuse a folder without it
    return out


def run(opts: RunOptions, out: Path | None = None, report_note: str | None = None) -> Path | None:
    """``train`` then ``evaluate`` into one output folder.

    Both splits are captured before any fit, so a data error surfaces before
    the long work, and under ``torchrun`` every rank captures its shards of
    both splits while rank 0 alone fits, evaluates and writes.
    """
    if out is None:
        _check_output(opts)
    adapter = load_model(opts)
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    sources = preflight(opts, adapter, (opts.fit_split, opts.eval_split), layout, rank_and_world()[1])
    out = out or _prepare_output(opts)
    fit = capture_split(adapter, opts, opts.fit_split, opts.fit_limit, layout, sources[opts.fit_split])
    held_out = capture_split(adapter, opts, opts.eval_split, opts.eval_limit, layout, sources[opts.eval_split])
    if fit is None:
        return None
    train(opts, out, adapter, fit)
    return evaluate(opts, out, out, adapter, held_out, report_note)


def run_pipeline(**options) -> RunResults:
    """``vision-lens run`` from Python: the CLI's options as keyword arguments (``model``, ``data``, ``out``,
    ``weights``, ``fit_limit``, ``recipe``, ...; see ``vision-lens run --help``), the written run read back.

    Raises ``TypeError`` naming an unknown option.
    """
    from dataclasses import fields

    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_pipeline() got unknown options {', '.join(unknown)}; the options are "
                        f"{', '.join(sorted(known))}")
    out = run(RunOptions(**options))
    return load_results(out)
