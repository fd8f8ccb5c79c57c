"""The loops: model + data in, lenses and metrics out.

``train`` captures the fit split and fits every lens on every block;
``evaluate`` captures the eval split and writes the result bundle; ``run``
does both. Each option is defined once, with its help text, in the
dataclasses below; the command line is generated from them.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .adapters import ModelAdapter, create_adapter
from .artifacts import mark_complete, prepare_output, require_complete, write_results
from .cache import FeatureCache
from .capture import capture
from .checks import check_fit, preflight
from .data import DataError, open_split, select
from .fit import FitSettings, fit_lens
from .lenses import LENS_TYPES, build_lenses
from .metrics import evaluate_lenses
from .plotting import save_run_figures
from .report import write_report

FITTED_LENSES = ("tuned", "shared", "linear_probe")
KL_FITTED = ("tuned", "shared")  # fitted to the model's output unless --loss ce; the probe always to labels


def default_cache_dir() -> str:
    return os.environ.get("VISION_LENS_CACHE", str(Path.home() / ".cache" / "vision_lens"))


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunOptions:
    """Options shared by ``train``, ``eval`` and ``run``."""

    model: str = _opt(None, "model as family:arch, e.g. cifar:resnet20", required=True)
    data: str = _opt(
        None,
        "dataset root holding one ImageFolder per split (<data>/<split>/<class>/<image>), "
        "or torchvision:cifar10 to download CIFAR-10",
        required=True,
    )
    out: str = _opt(None, "output folder for lenses, metrics and plots", required=True)
    weights: str = _opt(
        "pretrained",
        "checkpoint path or URL; 'pretrained' loads the published weights for --model, "
        "'random' a random initialisation (the control)",
    )
    fit_split: str = _opt("train", "split folder whose images fit the lenses")
    eval_split: str = _opt("test", "split folder whose images evaluate them (must differ from --fit-split)")
    fit_limit: int = _opt(None, "fit on this many images, a subset chosen by --seed (default: all)", type=int)
    eval_limit: int = _opt(None, "evaluate on this many images, a subset chosen by --seed (default: all)", type=int)
    seed: int = _opt(0, "seed for subsets, random init and fitting; the same seed gives the same JSON", type=int)
    device: str = _opt("auto", "torch device: cpu, cuda, cuda:1, ... (auto: cuda if available)")
    loss: str = _opt("kl", "tuned-lens objective: kl (to the model's output, as tuned-lens) or ce (labels)",
                     choices=("kl", "ce"))
    max_iter: int = _opt(100, "L-BFGS iterations per block (each lens is a convex problem, solved full-batch)", type=int)
    weight_decay: float = _opt(1e-3, "L2 penalty on lens parameters (pulls tuned lenses towards the logit lens)",
                               type=float)
    batch_size: int = _opt(256, "images per forward pass during capture", type=int)
    workers: int = _opt(2, "data-loading worker processes", type=int)
    pool_grid: int = _opt(1, "pooling: 1 = global average; k > 1 adds the k x k adaptive-average cells", type=int)
    cache_dir: str = _opt(None, "feature cache root (default: $VISION_LENS_CACHE or ~/.cache/vision_lens)")
    download_root: str = _opt(None, "where torchvision:cifar10 is downloaded (default: <cache-dir>/datasets)")
    overwrite: bool = _opt(False, "replace an existing, non-empty --out", action="store_true")

    def __post_init__(self):
        self.cache_dir = self.cache_dir or default_cache_dir()
        self.download_root = self.download_root or str(Path(self.cache_dir) / "datasets")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def fit_settings(self) -> FitSettings:
        return FitSettings(self.max_iter, self.weight_decay)


@dataclass
class EvalOptions(RunOptions):
    """``vision-lens eval``: evaluate lenses saved by ``vision-lens train``."""

    lens: str = _opt(None, "folder written by `vision-lens train` (holding lenses/)", required=True)


def load_model(opts: RunOptions) -> ModelAdapter:
    torch.manual_seed(opts.seed)
    return create_adapter(opts.model, weights=opts.weights, seed=opts.seed).to(opts.device)


def capture_split(adapter: ModelAdapter, opts: RunOptions, split: str, limit: int | None) -> FeatureCache:
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
        adapter, source, indices, Path(opts.cache_dir) / "features", label_map,
        grid=opts.pool_grid, batch_size=opts.batch_size, workers=opts.workers, desc=f"capture {split}",
    )


def _tensors(cache: FeatureCache, device: str):
    features = [torch.from_numpy(np.array(f)) for f in cache.features]
    return features, torch.from_numpy(np.array(cache.logits)).to(device), torch.from_numpy(np.array(cache.labels)).to(device)


def _run_info(opts: RunOptions, adapter: ModelAdapter, **extra) -> dict:
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
    out = out or prepare_output(opts.out, opts.overwrite, keep=(opts.data, opts.cache_dir))
    standalone = adapter is None  # else run() checked both splits and completes the folder after eval
    if standalone:
        adapter = load_model(opts)
        preflight(opts, adapter, (opts.fit_split,))
    cache = capture_split(adapter, opts, opts.fit_split, opts.fit_limit)
    features, logits, labels = _tensors(cache, opts.device)
    labelled = labels >= 0
    if not labelled.all():
        print(f"[vision-lens] {int(labelled.sum())} of {len(labels)} fit images have a model class; "
              "label-trained lenses use those only", file=sys.stderr)
    if not labelled.any() and opts.loss == "ce":
        raise DataError(f"--data {opts.data}: no fit image maps to a model class, so --loss ce has no targets")
    fitted = FITTED_LENSES if labelled.any() else KL_FITTED
    lenses = build_lenses(adapter, opts.pool_grid, fitted)
    losses = {}
    for lens_type, lens in lenses.items():
        kl_target = logits if lens_type in KL_FITTED and opts.loss == "kl" else None
        loss = "kl" if kl_target is not None else "ce"
        per_block = fit_lens(lens, features, labels, kl_target, opts.fit_settings, desc=f"fit {lens_type} ({loss})")
        check_fit(lens_type, lens, per_block, [b.name for b in adapter.blocks])
        lens.config.fit = {
            "loss": loss, "images": len(labels), "split": opts.fit_split, **asdict(opts.fit_settings),
            "final_loss_nats": per_block,
        }
        lens.save(out / "lenses" / lens_type)
        losses[lens_type] = per_block
    (out / "train.json").write_text(json.dumps(_run_info(opts, adapter, fit_images=len(labels), fit_loss_nats=losses), indent=1))
    if standalone:
        mark_complete(out)
    return out


def evaluate(opts: RunOptions, lens_dir: Path, out: Path | None = None, adapter: ModelAdapter | None = None) -> Path:
    """Evaluate saved lenses (plus the logit lens) on the eval split and write the result bundle."""
    out = out or prepare_output(opts.out, opts.overwrite, keep=(opts.data, opts.cache_dir))
    if adapter is None:  # else run() checked both splits
        require_complete(lens_dir)
        adapter = load_model(opts)
        preflight(opts, adapter, (opts.eval_split,))
    lenses = build_lenses(adapter, opts.pool_grid, ("logit",))
    for lens_type in FITTED_LENSES:
        path = lens_dir / "lenses" / lens_type
        if path.is_dir():
            lenses[lens_type] = LENS_TYPES[lens_type].load(path, adapter)
            if lenses[lens_type].config.grid != opts.pool_grid:
                raise ValueError(f"lens {path} was fitted with --pool-grid {lenses[lens_type].config.grid}; pass the same")
    if len(lenses) == 1:
        raise FileNotFoundError(f"--lens {lens_dir} holds no fitted lenses (lenses/tuned, ...); run `vision-lens train` first")
    lenses = {t: lenses[t] for t in ("tuned", "shared", "logit", "linear_probe") if t in lenses}
    cache = capture_split(adapter, opts, opts.eval_split, opts.eval_limit)
    features, logits, labels = _tensors(cache, opts.device)
    print(f"[vision-lens] evaluating {', '.join(lenses)} on {len(adapter.blocks)} blocks", file=sys.stderr)
    aux = {k: torch.from_numpy(np.array(a)) for k, a in cache.aux_logits.items()}
    aggregate, batches = evaluate_lenses(lenses, features, logits, labels, fixed_logits={"aux_head": aux} if aux else None)
    layers = {f"layer_{k}": b.name for k, b in enumerate(adapter.blocks)}
    fit = {t: lens.config.fit for t, lens in lenses.items() if lens.config.fit}
    write_results(out, aggregate, batches, layers, _run_info(opts, adapter, eval_images=len(labels), lens=str(lens_dir), fit=fit))
    save_run_figures(out, out)
    write_report(out)
    mark_complete(out)  # last: compare and report refuse a folder without it
    return out


def run(opts: RunOptions, out: Path | None = None) -> Path:
    """``train`` then ``evaluate`` into one output folder."""
    out = out or prepare_output(opts.out, opts.overwrite, keep=(opts.data, opts.cache_dir))
    adapter = load_model(opts)
    preflight(opts, adapter, (opts.fit_split, opts.eval_split))
    train(opts, out, adapter)
    return evaluate(opts, out, out, adapter)
