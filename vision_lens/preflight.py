"""Everything that can be known before the first forward pass, checked with a message that names what to fix.

That the lenses can be fitted through the model's unembedding, the data
layout of every split the command reads, that their classes match each other
and the model, and that the feature cache can be written (or already holds
complete captures to read). ``--out`` is checked, creating nothing, by
``artifacts.check_output`` before this, and created by
``artifacts.prepare_output`` after it, so that a bad argument leaves no folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .adapters.errors import ClassMatchError, ModelError
from .cache import CacheError, cache_key_hash
from .capture import capture_key
from .data import DataError, ImageSource, SelectedImages, data_id, open_split, select
from .errors import OptionError


def _cache_is_complete(root: Path, key: dict, n: int) -> bool:
    try:
        return json.loads((root / cache_key_hash(key) / "manifest.json").read_text()).get("done") == n
    except (OSError, ValueError):
        return False


def check_cache_root(root: Path, needed: Sequence[tuple[dict, int]]) -> None:
    """Raise CacheError unless ``root`` is writable or already holds a complete cache for each (key, rows)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            return
    except OSError as exc:
        if all(_cache_is_complete(root, key, n) for key, n in needed):
            return  # read-only but complete: usable for reading
        raise CacheError(
            f"feature cache folder {root} is not writable ({exc.strerror or exc}) and does not hold complete "
            f"captures for this run; make it writable or pass --cache-dir a writable folder"
        ) from exc


def check_unembed(adapter) -> None:
    """ModelError naming the model unless lenses can be fitted through its ``unembed``.

    A linear head takes the fast convex solver; any other head takes the autograd fitter, which needs logits of
    the right shape with a gradient that reaches the head's input. A probe of four random vectors tells.
    """
    unembed = adapter.unembed
    if isinstance(unembed, nn.Linear):
        return
    x = torch.randn(4, adapter.head_dim, device=adapter.device, requires_grad=True)
    problem = None
    try:
        with torch.enable_grad():
            logits = unembed(x)
            logits.square().sum().backward()
        if tuple(logits.shape) != (4, adapter.num_classes):
            problem = f"it maps (4, {adapter.head_dim}) vectors to {tuple(logits.shape)}, not (4, {adapter.num_classes})"
        elif x.grad is None or not torch.isfinite(x.grad).all() or not x.grad.abs().sum() > 0:
            problem = "no finite, non-zero gradient reaches its input"
    except (RuntimeError, TypeError, ValueError) as exc:
        problem = f"{exc.__class__.__name__}: {exc}"
    if problem is not None:
        raise ModelError(
            f"--model {adapter.name}: no fitter can take its unembedding {type(unembed).__name__} ({problem}); tuned "
            f"lenses are fitted through a linear head, or through a differentiable one by autograd. Nothing was "
            f"captured."
        )


def check_pool_grid(adapter, grid: int, image) -> None:
    """OptionError naming ``--pool-grid`` when ``grid`` exceeds the smallest side of a block's output on ``image``
    (a PIL image of the data, run through the model once): finer cells only repeat pixels, while the pooled
    features grow with ``grid`` squared until memory runs out."""
    if grid == 1:
        return
    sides: dict[str, tuple[int, int]] = {b.name: b.tokens[1:] for b in adapter.blocks if b.tokens is not None}

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                sides[name] = tuple(output.shape[-2:])
        return hook

    maps = [b for b in adapter.blocks if b.tokens is None]
    handles = [adapter.model.get_submodule(b.module).register_forward_hook(record(b.name)) for b in maps]
    try:
        with torch.no_grad():
            adapter.logits(adapter.transform(image)[None].to(adapter.device))
    finally:
        for handle in handles:
            handle.remove()
    name, (h, w) = min(sides.items(), key=lambda item: min(item[1]))
    if grid > min(h, w):
        raise OptionError(f"--pool-grid {grid}: block {name} of {adapter.name} has a {h}x{w} output on these images, "
                          f"so no grid finer than {min(h, w)} has distinct cells; pass --pool-grid 1 to {min(h, w)}")


def label_map(opts, adapter, split: str, source: ImageSource) -> np.ndarray:
    """The model output of each class of ``source`` (the ``split`` of ``opts.data``); a DataError naming the split's
    folder if the classes do not fit the model."""
    try:
        return adapter.label_map(source.classes, by_position=opts.match_classes_by_position)
    except ClassMatchError as exc:
        folder = getattr(source, "root", f"--data {opts.data}, split {split!r}")
        raise DataError(f"{folder} (split {split!r}): {exc}") from exc


@dataclass
class SplitPlan:
    """What capture of one split uses, as preflight worked it out: the images, the model output of each of their
    classes, the images selected, one contiguous shard of them per capturing process, and each shard's cache key."""

    split: str
    source: ImageSource
    label_map: np.ndarray  # the model output of each class of the source (-1: none)
    indices: np.ndarray  # the selected images, in increasing order
    shards: list[np.ndarray]  # one per process under torchrun (every image once, no padding)
    keys: list[dict]  # capture.capture_key of each shard

    @property
    def classes(self) -> int:
        """The number of the split's classes that are model outputs (for chance accuracy)."""
        return int((self.label_map >= 0).sum())


def plan_split(opts, adapter, split: str, source: ImageSource, limit: int | None, layout, shards: int = 1
               ) -> SplitPlan:
    """The :class:`SplitPlan` of ``split`` (its images ``source``, ``limit`` of them chosen by ``opts.seed``)."""
    indices = select(len(source), limit, opts.seed)
    parts = np.array_split(indices, shards)
    keys = [capture_key(adapter, source, part, layout, bf16=opts.precision == "bf16") for part in parts]
    return SplitPlan(split, source, label_map(opts, adapter, split, source), indices, parts, keys)


def preflight(opts, adapter, splits: Sequence[str], layout, shards: int = 1) -> dict[str, SplitPlan]:
    """Check data, classes and the cache for ``splits`` of ``opts`` before any forward pass; returns each split's
    :class:`SplitPlan`, which capture then uses.

    ``layout`` (a FeatureLayout) is what capture will keep, part of the cache key; ``shards`` is the number of
    processes that capture (``torchrun``), each shard into its own cache.
    """
    if opts.fit_split == opts.eval_split:
        raise DataError(f"--fit-split and --eval-split are both {opts.fit_split!r}; lenses must be evaluated on "
                        "held-out images")
    check_unembed(adapter)
    sources: dict[str, ImageSource] = {split: open_split(opts.data, split, opts.download_root) for split in splits}
    limits = {opts.fit_split: getattr(opts, "fit_limit", None), opts.eval_split: opts.eval_limit}
    plans = {split: plan_split(opts, adapter, split, source, limits.get(split), layout, shards)
             for split, source in sources.items()}
    if opts.match_classes_by_position:
        print(f"[vision-lens] warning: --match-classes-by-position: class folders are matched to {adapter.name}'s "
              "outputs by their sorted position, not by name (recorded in run.json)", file=sys.stderr)
    (first, first_source), *others = sources.items()
    check_pool_grid(adapter, layout.grid, first_source.load(0))
    for split, source in others:
        if source.classes != first_source.classes:
            only_first = sorted(set(first_source.classes) - set(source.classes))
            only_this = sorted(set(source.classes) - set(first_source.classes))
            raise DataError(
                f"--data {opts.data}: splits {first!r} and {split!r} have different classes (only in {first!r}: "
                f"{', '.join(only_first) or 'none'}; only in {split!r}: {', '.join(only_this) or 'none'}); "
                "give every split the same class folders"
            )
    needed = [(key, len(part)) for plan in plans.values() for key, part in zip(plan.keys, plan.shards)]
    check_cache_root(Path(opts.cache_dir) / "features", needed)
    return plans


_EVAL_ANYWAY = ("pass another --eval-split or --data, or --eval-on-fit-images to evaluate there anyway (a warning, "
                "recorded in run.json)")


def _fit_images_met(problem: str, allow: bool) -> list[str]:
    """Raise DataError(``problem``) unless ``allow`` (--eval-on-fit-images); then print it as a warning and return it,
    for run.json."""
    if not allow:
        raise DataError(f"{problem}; {_EVAL_ANYWAY}")
    warning = f"{problem}; evaluating there anyway, as --eval-on-fit-images asks: these are not held-out numbers"
    print(f"[vision-lens] WARNING: {warning}", file=sys.stderr)
    return [warning]


def check_eval_split(lenses: dict, opts, lens_dir: Path) -> list[str]:
    """Before capture: a DataError (or with ``--eval-on-fit-images``, a warning returned for run.json) where the
    eval split is the split that the saved ``lenses`` were fitted on, as their config.json records it."""
    for lens_type, lens in lenses.items():
        fit = lens.config.fit_images
        if fit.get("data") == data_id(opts.data) and fit.get("split") == opts.eval_split:
            return _fit_images_met(
                f"--lens {lens_dir}: its {lens_type} lens was fitted on {fit.get('images')} images of split "
                f"{fit['split']!r} of {fit['data']} (lenses/{lens_type}/config.json), and --eval-split "
                f"{opts.eval_split!r} of --data {opts.data} is that split: evaluating there measures the fit, not "
                "held-out images", opts.eval_on_fit_images)
    return []


def check_eval_images(lenses: dict, images: SelectedImages, opts, lens_dir: Path) -> list[str]:
    """After capture, when the eval images' content ids are at hand: a DataError (or a warning, as
    :func:`check_eval_split`) where any of them is among the fit images that a lens's config.json samples."""
    for lens_type, lens in lenses.items():
        fit = lens.config.fit_images
        met = images.fit_images_among(fit) if fit else []
        if met:
            return _fit_images_met(
                f"--lens {lens_dir}: {len(met)} of the {len(images.indices)} eval images are among the "
                f"{len(fit['sample'])} sampled from the {fit.get('images')} images its {lens_type} lens was fitted "
                f"on (split {fit.get('split')!r} of {fit.get('data')}), e.g. {met[0]}: the eval images are not "
                "held out",
                opts.eval_on_fit_images)
    return []
