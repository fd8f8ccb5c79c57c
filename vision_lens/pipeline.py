"""The loops: model + data in, lenses and metrics out.

``train`` captures the fit split and fits every lens kind on every block;
``evaluate`` reads saved lenses, captures the eval split and writes the result
bundle; ``run`` does both in one pass, its fitted lenses and results handed on
in memory (each file of the run folder is written once, never read back). Each
option is defined once, with its help text, in the dataclasses of
``options.py``; the command line is generated from them.

A caller that wants to know where the time goes passes ``on_stage``: it is called
``on_stage(name, True)`` as each of ``STAGES`` starts and ``on_stage(name,
False)`` as it ends (``scripts/timed_run.py`` times them so).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from . import __version__
from .adapters import ModelAdapter, create_adapter
from .artifacts import (RunResults, check_output, mark_complete, prepare_output, require_complete, write_results,
                        writing_into)
from .cache import FeatureCache
from .capture import default_batch_size, default_workers
from .checks import check_fit
from .data import DataError, SelectedImages, data_id
from .files import write_text_atomic
from .fit import ModelOutput, TunedLensRecipe, fit_by_recipe, fit_lens
from .lens_kinds import kind_names, lens_kind, lens_kinds
from .lenses import LensFolderError, SavedLens, build_lenses, load_lens
from .metrics import evaluate_lenses
from .options import (IN_MEMORY, CommonOptions, EvalOptions, RunOptions, default_cache_dir,  # noqa: F401 (re-exported)
                      resolve_device)
from .plotting import save_run_figures
from .preflight import SplitPlan, check_eval_images, check_eval_split, preflight
from .readout import FeatureLayout
from .report import write_report
from .schema import RUN_INFO, SCHEMA_KEY

# The stages a command reports to ``on_stage``, in the order ``run`` passes them (fit_lens and fit_by_recipe once
# per lens kind fitted).
STAGES = ("load_model", "preflight", "prepare_output", "capture_fit", "capture_eval", "fit_lens", "fit_by_recipe",
          "save_lenses", "evaluate_lenses", "write_results", "save_run_figures", "write_report")
StageObserver = Callable[[str, bool], None]


@contextmanager
def _stage(on_stage: StageObserver | None, name: str):
    """Report stage ``name`` to ``on_stage`` as it starts and as it ends (by an error too)."""
    if on_stage is None:
        yield
        return
    on_stage(name, True)
    try:
        yield
    finally:
        on_stage(name, False)


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


def _start_processes(device: str) -> str:
    """Under ``torchrun``: join the process group (NCCL on GPUs, Gloo on CPU), one GPU per local rank; returns the
    device of this process."""
    rank, world = rank_and_world()
    if world == 1 or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    # Rank 0 fits between two captures while the others wait: allow long fits.
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=24))
    return device


def stop_processes() -> None:
    """Leave the ``torchrun`` process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_model(opts: CommonOptions, adapter: ModelAdapter | None = None) -> tuple[ModelAdapter, CommonOptions]:
    """The adapter on the options' device (``adapter``, a model in memory, or the one ``--model`` names), and the
    options with what they leave open resolved (a copy; ``opts`` stays as given): the ``auto`` device, capture's
    default batch size and workers, and the default lens kinds. The resolved options are what run.json records."""
    device = _start_processes(resolve_device(opts.device))
    if adapter is None:
        adapter = create_adapter(opts.model, weights=opts.weights, seed=opts.seed)
    resolved = dataclasses.replace(
        opts, device=device, batch_size=opts.batch_size or default_batch_size(device, adapter.data_kind),
        workers=default_workers(device) if opts.workers is None else opts.workers)
    if isinstance(resolved, RunOptions):
        resolved.lenses = kind_names(opts.lenses)
    return adapter.to(device), resolved


@dataclass
class SplitFeatures:
    """One captured split in memory: pooled features per block, the model's logits (stored, or recomputed from the
    last block), labels, aux logits."""

    features: list[Tensor]
    logits: Tensor | ModelOutput
    labels: Tensor
    aux_logits: dict[int, Tensor]
    classes: int  # the split's classes that are model outputs (for chance accuracy)
    images: SelectedImages | None = None  # the images (text: the windows) of the rows
    groups: np.ndarray | None = None  # rows that the bootstrap resamples together (a text window's), or None
    units: dict | None = None  # what a row is and the metrics' units, where not images (run.json's "units")

    @classmethod
    def of(cls, caches: list[FeatureCache], adapter: ModelAdapter, classes: int, images: SelectedImages | None = None,
           groups: np.ndarray | None = None, units: dict | None = None) -> "SplitFeatures":
        """The caches' rows, in order (one cache, or the shards of a multi-process capture). Where the caches hold
        no logits (a language model's), the model's logits of any rows are the last block's unembedding."""

        def rows(arrays) -> Tensor:
            return torch.from_numpy(np.concatenate([np.asarray(a) for a in arrays]))

        features = [rows(c.features[k] for c in caches) for k in range(len(caches[0].features))]
        if caches[0].logits is None:
            unembed, device = adapter.unembed, adapter.device
            logits = ModelOutput.through(lambda hidden: unembed(hidden.to(device)), features[-1], adapter.num_classes)
        else:
            logits = rows(c.logits for c in caches).to(adapter.device)
        return cls(features, logits, rows(c.labels for c in caches).to(adapter.device),
                   {k: rows(c.aux_logits[k] for c in caches) for k in caches[0].aux_logits}, classes, images,
                   groups, units)


def capture_shards(adapter: ModelAdapter, opts: CommonOptions, plan: SplitPlan, layout: FeatureLayout
                   ) -> list[FeatureCache] | None:
    """Capture one split as preflight planned it (``plan``) into the feature cache (reused or resumed when it
    exists), without loading it.

    Under ``torchrun`` each of the N processes captures its shard of the split
    (every image exactly once, no padding), each into its own resumable cache;
    after a barrier, rank 0 gets all shards' caches in order, and the other
    ranks get None.
    """
    rank, world = rank_and_world()
    if rank == 0:
        items = "windows" if plan.groups is not None else "images"
        print(f"[vision-lens] {plan.split}: {len(plan.indices)} of {len(plan.source)} {items} from {opts.data}"
              + (f", in {world} shards" if world > 1 else ""), file=sys.stderr)

    def capture_shard(r: int) -> FeatureCache:
        return plan.capture(adapter, r, Path(opts.cache_dir) / "features", layout, opts,
                            desc=f"capture {plan.split}" + (f" [{r}]" if world > 1 else ""))

    own = capture_shard(rank)
    if world > 1:
        dist.barrier()  # every shard is complete before rank 0 reads them
        if rank != 0:
            return None
    # Rank 0 opens the other shards' complete caches (and would capture any shard a crashed rank left).
    return [own if r == rank else capture_shard(r) for r in range(world)]


def capture_split(adapter: ModelAdapter, opts: CommonOptions, plan: SplitPlan, layout: FeatureLayout
                  ) -> SplitFeatures | None:
    """:func:`capture_shards`, then the split loaded into memory (on rank 0; None on the others)."""
    caches = capture_shards(adapter, opts, plan, layout)
    if caches is None:
        return None
    images = SelectedImages(data_id(opts.data), plan.split, plan.source, plan.indices, Path(opts.cache_dir) / "features")
    return SplitFeatures.of(caches, adapter, plan.classes, images, plan.groups, plan.units)


def _run_info(opts: CommonOptions, adapter: ModelAdapter, **extra) -> dict:
    """run.json (and train.json): what a later command needs to redo the run (its options, the cache folder among
    them), and the provenance."""
    return {
        SCHEMA_KEY: RUN_INFO,
        "model": opts.model,
        "weights": opts.weights,
        "weights_sha256": adapter.weights_id,
        "data": str(opts.data),
        "blocks": [b.name for b in adapter.blocks],
        "block_stages": [b.stage for b in adapter.blocks],
        "num_classes": adapter.num_classes,
        "options": {k: v for k, v in asdict(opts).items() if k != "out"},
        "vision_lens": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
    }


def fit_lenses(opts: RunOptions, adapter: ModelAdapter, layout: FeatureLayout, fit: SplitFeatures,
               on_stage: StageObserver | None = None) -> dict[str, SavedLens]:
    """Every kind of ``opts.lenses`` fitted on the fit split ``fit``, as its registration says: to the model's
    output (KL) or, under ``--loss ce``, to the labels; by tuned-lens's recipe under ``--recipe tuned-lens`` where
    the kind allows it, else to its optimum. Each lens's config records how (``config.fit``)."""
    features, logits, labels = fit.features, fit.logits, fit.labels
    labelled = labels >= 0
    if not labelled.all():
        print(f"[vision-lens] {int(labelled.sum())} of {len(labels)} fit images have a model class; "
              "label-trained lenses use those only", file=sys.stderr)
    kinds = [lens_kind(name) for name in kind_names(opts.lenses) if lens_kind(name).fitted]
    if not labelled.any():
        if opts.loss == "ce":
            raise DataError(f"--data {opts.data}: no fit image maps to a model class, so --loss ce has no targets")
        kinds = [kind for kind in kinds if kind.fitted_to != "labels"]
    lenses = build_lenses(adapter, layout, [kind.name for kind in kinds])
    for kind, lens in zip(kinds, lenses.values()):
        kl_target = logits if kind.fitted_to == "output" and opts.loss == "kl" else None
        loss = "kl" if kl_target is not None else "ce"
        desc = f"fit {kind.name} ({loss})"
        if opts.recipe == "tuned-lens" and "recipe" in kind.solvers:
            recipe = TunedLensRecipe(seed=opts.seed)
            with _stage(on_stage, "fit_by_recipe"):
                per_block = fit_by_recipe(lens, features, labels, kl_target, recipe, desc)
            settings = recipe.to_dict()
        else:
            with _stage(on_stage, "fit_lens"):
                per_block = fit_lens(lens, features, labels, kl_target, opts.fit_settings, desc)
            settings = {"recipe": "optimum"} | opts.fit_settings.to_dict()
        check_fit(kind.name, lens, [r and r.loss_nats for r in per_block], list(layout.blocks))
        lens.config.fit = {
            "loss": loss, "images": len(labels), "split": opts.fit_split, **settings,
            "blocks": {name: r and r.to_dict() for name, r in zip(layout.blocks, per_block)},
        }
        lens.config.fit_images = fit.images.record(opts.seed) if fit.images else {}
    return lenses


def save_lenses(out: Path, opts: RunOptions, adapter: ModelAdapter, lenses: dict[str, SavedLens]) -> None:
    """``lenses/<kind>/`` for every fitted lens, and ``train.json``."""
    with writing_into(out):
        for name, lens in lenses.items():
            lens.save(out / "lenses" / name)
        fits = {name: lens.config.fit for name, lens in lenses.items()}
        images = next(iter(fits.values()))["images"]
        write_text_atomic(out / "train.json", json.dumps(_run_info(opts, adapter, fit_images=images, fit=fits),
                                                         indent=1))


def evaluate_split(opts: CommonOptions, adapter: ModelAdapter, fitted: dict[str, SavedLens], held_out: SplitFeatures,
                   lens_dir: Path, warnings: list[str], on_stage: StageObserver | None = None) -> tuple:
    """The ``fitted`` lenses and the logit lens evaluated on ``held_out``: ``(aggregate, batches, intervals,
    run.json's dict)``. ``warnings`` (about fit images met) go into run.json."""
    layout = next(iter(fitted.values())).config.feature_layout
    lenses = build_lenses(adapter, layout, ("logit",)) | fitted
    lenses = {kind.name: lenses[kind.name] for kind in lens_kinds() if kind.name in lenses}
    if held_out.images is not None and not warnings:
        warnings = check_eval_images(fitted, held_out.images, opts, lens_dir)
    print(f"[vision-lens] evaluating {', '.join(lenses)} on {len(adapter.blocks)} blocks", file=sys.stderr)
    aux = held_out.aux_logits
    with _stage(on_stage, "evaluate_lenses"):
        aggregate, batches, intervals = evaluate_lenses(
            lenses, held_out.features, held_out.logits, held_out.labels,
            transfer=tuple(name for name in lenses if lens_kind(name).transfers),
            fixed_logits={"aux_head": aux} if aux else None, intervals=True,
            block_stages=[b.stage for b in adapter.blocks], seed=opts.seed, groups=held_out.groups,
        )
    fit = {t: lens.config.fit for t, lens in lenses.items() if lens.config.fit}
    run_info = _run_info(
        opts, adapter, eval_images=len(held_out.labels), eval_classes=held_out.classes, lens=str(lens_dir), fit=fit,
        **({"units": held_out.units} if held_out.units else {}), **({"warnings": warnings} if warnings else {}),
    )
    return aggregate, batches, intervals, run_info


def write_run(out: Path, adapter: ModelAdapter, evaluated: tuple, report_note: str | None = None,
              on_stage: StageObserver | None = None) -> RunResults:
    """The result files, the two figures and ``report.html`` into ``out``, then the run marked complete; the
    results are handed from one to the next in memory. Returns them."""
    aggregate, batches, intervals, run_info = evaluated
    layers = {f"layer_{k}": b.name for k, b in enumerate(adapter.blocks)}
    with writing_into(out):
        with _stage(on_stage, "write_results"):
            results = write_results(out, aggregate, batches, layers, run_info, intervals)
        with _stage(on_stage, "save_run_figures"):
            figures = save_run_figures(results, out)
        with _stage(on_stage, "write_report"):
            write_report(results, note=report_note, figures=figures)
        mark_complete(out)  # last: compare and report refuse a folder without it
    return results


def train(opts: RunOptions, on_stage: StageObserver | None = None) -> Path | None:
    """``vision-lens train``: capture the fit split and fit every lens kind of ``--lenses`` on every block into
    ``--out``. Under ``torchrun`` only rank 0 fits and writes; the others return None after capture."""
    _check_output(opts)
    with _stage(on_stage, "load_model"):
        adapter, opts = load_model(opts)
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    with _stage(on_stage, "preflight"):
        (plan,) = preflight(opts, adapter, (opts.fit_split,), layout, rank_and_world()[1]).values()
    with _stage(on_stage, "prepare_output"):
        out = _prepare_output(opts)
    with _stage(on_stage, "capture_fit"):
        fit = capture_split(adapter, opts, plan, layout)
    if fit is None:
        return None
    lenses = fit_lenses(opts, adapter, layout, fit, on_stage)
    with _stage(on_stage, "save_lenses"):
        save_lenses(out, opts, adapter, lenses)
    mark_complete(out)
    return out


def load_lenses(lens_dir: Path, adapter: ModelAdapter) -> dict[str, SavedLens]:
    """Every fitted lens saved under ``lens_dir/lenses/``, in registry order, checked to read one feature layout."""
    fitted = {kind.name: load_lens(lens_dir / "lenses" / kind.name, adapter, kind.name)
              for kind in lens_kinds() if kind.fitted and (lens_dir / "lenses" / kind.name).is_dir()}
    if not fitted:
        raise FileNotFoundError(f"--lens {lens_dir} holds no fitted lenses (lenses/tuned, ...); run `vision-lens train` first")
    # The lenses say what they read; every fitted lens of one run reads the same layout.
    layouts = {t: lens.config.feature_layout for t, lens in fitted.items()}
    if any(other != next(iter(layouts.values())) for other in layouts.values()):
        raise LensFolderError(f"--lens {lens_dir}: its lenses were fitted on different feature layouts ({', '.join(layouts)})")
    return fitted


def evaluate(opts: EvalOptions, on_stage: StageObserver | None = None, report_note: str | None = None) -> Path | None:
    """``vision-lens eval``: the lenses saved in ``--lens`` (plus the logit lens) evaluated on the eval split, the
    result bundle written into ``--out``. Under ``torchrun`` only rank 0 evaluates and writes; the others return
    None after capture."""
    lens_dir = Path(opts.lens)
    _check_output(opts)
    require_complete(lens_dir, needs="lenses/")  # every lens the run fitted, or none evaluated
    with _stage(on_stage, "load_model"):
        adapter, opts = load_model(opts)
    fitted = load_lenses(lens_dir, adapter)
    layout = next(iter(fitted.values())).config.feature_layout
    warnings = check_eval_split(fitted, opts, lens_dir)
    with _stage(on_stage, "preflight"):
        (plan,) = preflight(opts, adapter, (opts.eval_split,), layout, rank_and_world()[1]).values()
    with _stage(on_stage, "prepare_output"):
        out = _prepare_output(opts)
    with _stage(on_stage, "capture_eval"):
        held_out = capture_split(adapter, opts, plan, layout)
    if held_out is None:
        return None
    evaluated = evaluate_split(opts, adapter, fitted, held_out, lens_dir, warnings, on_stage)
    write_run(out, adapter, evaluated, report_note, on_stage)
    return out


def _run(opts: RunOptions, out: Path | None = None, report_note: str | None = None,
         on_stage: StageObserver | None = None, adapter: ModelAdapter | None = None) -> RunResults | None:
    """:func:`run`, returning the results it wrote (on ``adapter``, a model in memory, where given)."""
    if out is None:
        _check_output(opts)
    with _stage(on_stage, "load_model"):
        adapter, opts = load_model(opts, adapter)
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    with _stage(on_stage, "preflight"):
        plans = preflight(opts, adapter, (opts.fit_split, opts.eval_split), layout, rank_and_world()[1])
    with _stage(on_stage, "prepare_output"):
        out = out or _prepare_output(opts)
    with _stage(on_stage, "capture_fit"):
        fit = capture_split(adapter, opts, plans[opts.fit_split], layout)
    with _stage(on_stage, "capture_eval"):
        held_out = capture_split(adapter, opts, plans[opts.eval_split], layout)
    if fit is None:
        return None
    lenses = fit_lenses(opts, adapter, layout, fit, on_stage)
    with _stage(on_stage, "save_lenses"):
        save_lenses(out, opts, adapter, lenses)
    evaluated = evaluate_split(opts, adapter, lenses, held_out, out, [], on_stage)
    return write_run(out, adapter, evaluated, report_note, on_stage)


def run(opts: RunOptions, out: Path | None = None, report_note: str | None = None,
        on_stage: StageObserver | None = None) -> Path | None:
    """``train`` then ``evaluate`` into one output folder (``out``, prepared by the caller; by default ``--out``),
    ``report_note`` under the report's title.

    Both splits are captured before any fit, so a data error surfaces before
    the long work, and under ``torchrun`` every rank captures its shards of
    both splits while rank 0 alone fits, evaluates and writes.
    """
    results = _run(opts, out, report_note, on_stage)
    return None if results is None else results.path


def run_pipeline(**options) -> RunResults:
    """``vision-lens run`` from Python: the CLI's options as keyword arguments (``model``, ``data``, ``out``,
    ``weights``, ``fit_limit``, ``recipe``, ``lenses``, ...; see ``vision-lens run --help``), returning the
    results it wrote.

    ``model`` may also be a network in memory: a ``torch.nn.Module`` with the arguments that name its blocks,
    unembedding and preprocessing (``blocks``, ``unembed``, ``preprocessing``, ...: those of
    :func:`~vision_lens.adapters.module.module_adapter`), or a :class:`~vision_lens.adapters.ModelAdapter`. Its
    run folder records it as ``module:<class name>`` (or ``model_name``) with weights ``in-memory``.

    Raises ``TypeError`` naming an unknown option.
    """
    from .adapters.module import MODULE_ARGUMENTS

    model = options.get("model")
    in_memory = model is not None and not isinstance(model, str)
    known = {f.name for f in dataclasses.fields(RunOptions)} | (MODULE_ARGUMENTS if in_memory else set())
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_pipeline() got unknown options {', '.join(unknown)}; the options are "
                        f"{', '.join(sorted(known))}" + ("" if in_memory else " (and, with a torch.nn.Module as "
                                                         f"the model, {', '.join(sorted(MODULE_ARGUMENTS))})"))
    if not in_memory:
        return _run(RunOptions(**options))
    if options.get("weights", IN_MEMORY) != IN_MEMORY:
        raise TypeError(f"run_pipeline(model=<{type(model).__name__}>, weights={options['weights']!r}): a model in "
                        "memory brings its own weights; leave weights out")
    adapter = create_adapter(model, **{k: options.pop(k) for k in MODULE_ARGUMENTS & set(options)})
    return _run(RunOptions(**options | {"model": adapter.name, "weights": IN_MEMORY}), adapter=adapter)
