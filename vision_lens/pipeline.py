"""The loops: model + data in, lenses and metrics out.

``train`` captures the fit split and fits every lens on every block;
``evaluate`` captures the eval split and writes the result bundle; ``run``
does both. Each option is defined once, with its help text, in the
dataclasses of ``options.py``; the command line is generated from them.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .adapters import ModelAdapter, create_adapter
from .artifacts import prepare_output, write_results
from .cache import FeatureCache
from .capture import capture
from .data import DataError, open_split, select
from .fit import fit_lens
from .lenses import LENS_TYPES, build_lenses
from .readout import FeatureLayout
from .metrics import evaluate_lenses
from .options import CommonOptions, EvalOptions, RunOptions, default_cache_dir, resolve_device  # noqa: F401  (re-exported)
from .plotting import save_run_figures
from .report import write_report

FITTED_LENSES = ("tuned", "shared", "linear_probe")
KL_FITTED = ("tuned", "shared")  # fitted to the model's output unless --loss ce; the probe always to labels


def load_model(opts: CommonOptions) -> ModelAdapter:
    """The adapter on ``opts.device``; ``auto`` is resolved here, and kept in ``opts`` for run.json."""
    opts.device = resolve_device(opts.device)
    return create_adapter(opts.model, weights=opts.weights, seed=opts.seed).to(opts.device)


def capture_split(
    adapter: ModelAdapter, opts: CommonOptions, split: str, limit: int | None, layout: FeatureLayout
) -> FeatureCache:
    """Capture one split into the feature cache (reused or resumed when it exists)."""
    if opts.fit_split == opts.eval_split:
        raise DataError(f"--fit-split and --eval-split are both {split!r}; lenses must be evaluated on held-out images")
    source = open_split(opts.data, split, opts.download_root)
    try:
        label_map = adapter.label_map(source.classes)
    except ValueError as exc:
        raise DataError(f"--data {opts.data}, split {split!r}: {exc}; pass data with the model's classes") from exc
    indices = select(len(source), limit, opts.seed)
    print(f"[vision-lens] {split}: {len(indices)} of {len(source)} images from {opts.data}", file=sys.stderr)
    return capture(
        adapter, source, indices, Path(opts.cache_dir) / "features", label_map, layout,
        batch_size=opts.batch_size, workers=opts.workers, desc=f"capture {split}", bf16=opts.precision == "bf16",
    )


def _tensors(cache: FeatureCache, device: str):
    features = [torch.from_numpy(np.array(f)) for f in cache.features]
    return features, torch.from_numpy(np.array(cache.logits)).to(device), torch.from_numpy(np.array(cache.labels)).to(device)


def _run_info(opts: CommonOptions, adapter: ModelAdapter, **extra) -> dict:
    return {
        "model": opts.model,
        "weights": opts.weights,
        "weights_sha256": adapter.weights_id,
        "data": str(opts.data),
        "blocks": [b.name for b in adapter.blocks],
        "options": {k: v for k, v in asdict(opts).items() if k not in ("out", "cache_dir", "download_root")},
        "vision_lens": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
    }


def train(opts: RunOptions, out: Path | None = None, adapter: ModelAdapter | None = None) -> Path:
    """Capture the fit split and fit a tuned lens, a shared tuned lens and a linear probe on every block."""
    out = out or prepare_output(opts.out, opts.overwrite)
    adapter = adapter or load_model(opts)
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    cache = capture_split(adapter, opts, opts.fit_split, opts.fit_limit, layout)
    features, logits, labels = _tensors(cache, adapter.device)
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
        per_block = fit_lens(lens, features, labels, kl_target, opts.fit_settings, desc=f"fit {lens_type} ({loss})")
        lens.config.fit = {
            "loss": loss, "images": len(labels), "split": opts.fit_split, **opts.fit_settings.to_dict(),
            "blocks": {name: record for name, record in zip(layout.blocks, per_block)},
        }
        lens.save(out / "lenses" / lens_type)
        fits[lens_type] = lens.config.fit
    (out / "train.json").write_text(json.dumps(_run_info(opts, adapter, fit_images=len(labels), fit=fits), indent=1))
    return out


def evaluate(opts: CommonOptions, lens_dir: Path, out: Path | None = None, adapter: ModelAdapter | None = None) -> Path:
    """Evaluate saved lenses (plus the logit lens) on the eval split and write the result bundle."""
    out = out or prepare_output(opts.out, opts.overwrite)
    adapter = adapter or load_model(opts)
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
        raise ValueError(f"--lens {lens_dir}: its lenses were fitted on different feature layouts ({', '.join(layouts)})")
    lenses = build_lenses(adapter, layout, ("logit",)) | fitted
    lenses = {t: lenses[t] for t in ("tuned", "shared", "logit", "linear_probe") if t in lenses}
    cache = capture_split(adapter, opts, opts.eval_split, opts.eval_limit, layout)
    features, logits, labels = _tensors(cache, adapter.device)
    print(f"[vision-lens] evaluating {', '.join(lenses)} on {len(adapter.blocks)} blocks", file=sys.stderr)
    aux = {k: torch.from_numpy(np.array(a)) for k, a in cache.aux_logits.items()}
    aggregate, batches = evaluate_lenses(lenses, features, logits, labels, fixed_logits={"aux_head": aux} if aux else None)
    layers = {f"layer_{k}": b.name for k, b in enumerate(adapter.blocks)}
    fit = {t: lens.config.fit for t, lens in lenses.items() if lens.config.fit}
    write_results(out, aggregate, batches, layers, _run_info(opts, adapter, eval_images=len(labels), lens=str(lens_dir), fit=fit))
    save_run_figures(out, out)
    write_report(out)
    return out


def run(opts: RunOptions, out: Path | None = None) -> Path:
    """``train`` then ``evaluate`` into one output folder."""
    out = out or prepare_output(opts.out, opts.overwrite)
    adapter = load_model(opts)
    train(opts, out, adapter)
    return evaluate(opts, out, out, adapter)
