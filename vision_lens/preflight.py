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
from .capture import capture, capture_key, capture_text, text_capture_key
from .data import DataError, ImageSource, SelectedImages, data_id, open_split, select
from .errors import OptionError
from .text import TextSource, TokenRows, read_documents, sample_positions, token_windows


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
    groups = None  # rows are independent images: the bootstrap resamples them one by one
    units = None  # the metrics are per image

    @property
    def shard_rows(self) -> list[int]:
        """The rows each shard's cache holds: one per image."""
        return [len(part) for part in self.shards]

    @property
    def classes(self) -> int:
        """The number of the split's classes that are model outputs (for chance accuracy)."""
        return int((self.label_map >= 0).sum())

    def capture(self, adapter, shard: int, cache_root: Path, layout, opts, desc: str):
        """Capture shard ``shard`` into the feature cache under ``cache_root``."""
        return capture(adapter, self.source, self.shards[shard], cache_root, self.label_map, layout,
                       batch_size=opts.batch_size, workers=opts.workers, desc=desc, bf16=opts.precision == "bf16",
                       key=self.keys[shard])


@dataclass
class TextPlan:
    """A split of text as capture uses it: its windows (the items: ``indices`` the selected ones, sharded as images
    are), each shard's token rows (:func:`~vision_lens.text.sample_positions`) and cache key."""

    split: str
    source: TextSource
    indices: np.ndarray
    shards: list[np.ndarray]
    rows: list[TokenRows]  # of each shard
    keys: list[dict]
    classes: int  # the vocabulary

    @property
    def shard_rows(self) -> list[int]:
        return [len(r) for r in self.rows]

    @property
    def groups(self) -> np.ndarray:
        """The window of every row, shards in order: neighbouring tokens are not independent, so the bootstrap
        resamples whole windows."""
        return np.concatenate([r.window for r in self.rows])

    @property
    def units(self) -> dict:
        """What run.json says of the rows and of the units of their metrics."""
        windows = self.source.windows
        return {"rows": "token positions", "ce": "bits per token",
                "bits_per_byte_per_bit": windows.tokens / windows.bytes,
                "tokens": windows.tokens, "bytes": windows.bytes, "documents": len(self.source.documents.texts),
                "windows": len(self.indices), "context": int(windows.ids.shape[1]),
                "positions": int(sum(len(r) for r in self.rows))}

    def capture(self, adapter, shard: int, cache_root: Path, layout, opts, desc: str):
        return capture_text(adapter, self.source, self.rows[shard], cache_root, layout, opts.batch_size, desc,
                            bf16=opts.precision == "bf16", key=self.keys[shard])


def plan_split(opts, adapter, split: str, source: ImageSource, limit: int | None, layout, shards: int = 1
               ) -> SplitPlan:
    """The :class:`SplitPlan` of ``split`` (its images ``source``, ``limit`` of them chosen by ``opts.seed``)."""
    indices = select(len(source), limit, opts.seed)
    parts = np.array_split(indices, shards)
    keys = [capture_key(adapter, source, part, layout, bf16=opts.precision == "bf16") for part in parts]
    return SplitPlan(split, source, label_map(opts, adapter, split, source), indices, parts, keys)


def preflight(opts, adapter, splits: Sequence[str], layout, shards: int = 1) -> dict[str, SplitPlan | TextPlan]:
    """Check data, classes and the cache for ``splits`` of ``opts`` before any forward pass; returns each split's
    plan (:class:`SplitPlan` for images, :class:`TextPlan` for text: the adapter's ``data_kind`` chooses), which
    capture then uses.

    ``layout`` (a FeatureLayout) is what capture will keep, part of the cache key; ``shards`` is the number of
    processes that capture (``torchrun``), each shard into its own cache.
    """
    if opts.fit_split == opts.eval_split:
        raise DataError(f"--fit-split and --eval-split are both {opts.fit_split!r}; lenses must be evaluated on "
                        "held-out data")
    check_unembed(adapter)
    plans = PLANNERS[adapter.data_kind](opts, adapter, splits, layout, shards)
    needed = [(key, rows) for plan in plans.values() for key, rows in zip(plan.keys, plan.shard_rows)]
    check_cache_root(Path(opts.cache_dir) / "features", needed)
    return plans


def _limits(opts) -> dict:
    return {opts.fit_split: getattr(opts, "fit_limit", None), opts.eval_split: opts.eval_limit}


TEXT_ONLY = ("tokenizer", "context", "positions")


def plan_images(opts, adapter, splits: Sequence[str], layout, shards: int) -> dict[str, SplitPlan]:
    """The image splits: their folders, their classes matched to the model's, the pool grid checked."""
    given = [f"--{name}" for name in TEXT_ONLY if getattr(opts, name, None) is not None]
    if given:
        raise OptionError(f"{', '.join(given)}: for language models (hf: causal LMs) only; {adapter.name} reads "
                          "images")
    sources: dict[str, ImageSource] = {split: open_split(opts.data, split, opts.download_root) for split in splits}
    limits = _limits(opts)
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
    return plans


def plan_text(opts, adapter, splits: Sequence[str], layout, shards: int) -> dict[str, TextPlan]:
    """The text splits: documents read, tokenized and cut into windows as tuned-lens does (``--context`` tokens, by
    default the model's context), a seeded ``--fit-limit``/``--eval-limit`` of the windows selected and
    ``--positions`` of each window's positions sampled (default all)."""
    if layout.grid != 1:
        raise OptionError(f"--pool-grid {layout.grid}: a language model's row is one token's vector, which has no "
                          "grid cells; leave --pool-grid at 1")
    tokenizer = adapter.load_tokenizer(opts.tokenizer)
    context = min(opts.context or adapter.context, adapter.context)
    plans = {}
    for split, limit in _limits(opts).items():
        if split not in splits:
            continue
        source = TextSource(documents := read_documents(opts.data, split), token_windows(documents, tokenizer, context))
        if source.windows.ids.max() >= adapter.num_classes:
            raise DataError(f"{documents.source}: the tokenizer {opts.tokenizer or adapter.tokenizer_name} gives ids "
                            f"up to {int(source.windows.ids.max())}, beyond {adapter.name}'s {adapter.num_classes} "
                            "tokens; pass --tokenizer the model's own tokenizer")
        indices = select(len(source), limit, opts.seed)
        parts = np.array_split(indices, shards)
        rows = [sample_positions(source.windows, part, opts.positions, opts.seed) for part in parts]
        keys = [text_capture_key(adapter, source, r, layout, bf16=opts.precision == "bf16") for r in rows]
        plans[split] = TextPlan(split, source, indices, parts, rows, keys, adapter.num_classes)
        print(f"[vision-lens] {split}: {len(documents.texts)} documents, {len(source)} windows of "
              f"{source.windows.ids.shape[1]} tokens", file=sys.stderr)
    return plans


PLANNERS = {"images": plan_images, "text": plan_text}  # by ModelAdapter.data_kind


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
