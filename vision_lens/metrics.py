"""Layer-wise lens metrics and transfer matrices, in the nesting of ``tuned-lens eval``.

Shape of the result (``aggregate_metrics.json``)::

    {lens_type: {metric: {"layer_k": value},
                 "layer_transfer": {"ce"|"kl"|"penalty"|"agree"|"acc": {"layer_i": {"layer_j": value}}}},
     "baseline": {"ce"|"entropy"|"acc": {"final": value}}}

``ce``, ``kl`` and ``entropy`` are in bits per image; ``acc``, ``agree`` and
``top5`` are fractions. ``layer_transfer.ce[layer_i][layer_j]`` is the CE of
block i's translator applied to block j's features and ``kl`` is
KL(lens_j || translator i on block j), as in tuned-lens; ``penalty`` is
``ce[i][j] - ce[j][j]``; ``agree`` and ``acc`` are that transfer's top-1
agreement with the model and its accuracy, measures that no scale of the
logits inflates. A value that is undefined (no identity path) is None.

Uncertainty (``aggregate_metrics_ci.json``): :func:`bootstrap_intervals` resamples
the evaluation images and gives 95 % percentile intervals, ``[low, high]``, in the
same nesting, plus ``layer_transfer.penalty_by_distance`` (see :func:`pair_groups`).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fit.targets import ModelOutput

BITS_PER_NAT = 1 / math.log(2)
LENS_METRICS = ("ce", "kl", "entropy", "acc", "agree", "top5")
BASELINE_METRICS = ("ce", "entropy", "acc")
INTERVAL_METRICS = ("acc", "ce", "kl")  # per block, for every lens; plus the transfer CE and penalty
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
# layer_transfer's tables, beside the derived penalty: tuned-lens's ce and kl, and two that do not depend on the
# scale of the logits (a translator off its block can make them huge): top-1 agreement with the model, accuracy.
TRANSFER_METRICS = ("ce", "kl", "agree", "acc")
EVAL_CHUNK_ELEMENTS = 2**21  # logits of one lens at one block held at once during evaluation


def nats_to_bits(x):
    return x * BITS_PER_NAT


def per_image_metrics(logits: Tensor, final_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-image ``ce``, ``kl`` (to the model's output), ``entropy`` (bits) and 0/1 ``acc``, ``agree``, ``top5``.

    Label metrics are NaN for unlabelled images (label -1).
    """
    lps = logits.double().log_softmax(-1)
    final_lps = final_logits.double().log_softmax(-1)
    pred = lps.argmax(-1)
    top = lps.topk(min(5, lps.shape[-1]), dim=-1).indices
    unlabelled = labels < 0
    y = labels.clamp(min=0)

    def labelled(x: Tensor) -> Tensor:
        return x.masked_fill(unlabelled, float("nan"))

    return {
        "ce": _cross_entropy(lps, labels),
        "kl": _kl(final_lps, lps),
        "entropy": nats_to_bits(-(lps.exp() * lps).sum(-1)),
        "acc": labelled((pred == y).double()),
        "agree": (pred == final_lps.argmax(-1)).double(),
        "top5": labelled((top == y[:, None]).any(-1).double()),
    }


def _cross_entropy(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Per-image cross-entropy (bits) against ``labels``; NaN where unlabelled (-1)."""
    ce = nats_to_bits(F.nll_loss(log_probs, labels.clamp(min=0), reduction="none"))
    return ce.masked_fill(labels < 0, float("nan"))


def _kl(target_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """Per-image KL(target || prediction), bits."""
    return nats_to_bits((target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1))


def _layer(k: int) -> str:
    return f"layer_{k}"


class _Means:
    """Per-batch means (for batches.jsonl) and exact means over all images, with None where undefined.

    Values arrive a chunk of consecutive whole batches of ``batch_size`` images at a time (the last batch may
    be partial). With ``keep``, the per-image values of the paths it accepts are kept too (float32), for the
    bootstrap.
    """

    def __init__(self, batch_size: int, keep: Callable[[tuple], bool] | None = None):
        self.batch_size = batch_size
        self.sums: dict[tuple, list[Tensor]] = {}  # per batch, the sum of the valid (non-NaN) per-image values
        self.counts: dict[tuple, list[Tensor]] = {}
        self.keep = keep
        self.kept: dict[tuple, list[np.ndarray]] = {}

    def add(self, path: tuple, values: Tensor | None, images: int) -> None:
        """Per-image ``values`` ``(images,)`` of one chunk at ``path``; None: undefined for every image."""
        if values is None:
            values = torch.full((images,), float("nan"), dtype=torch.float64)
        if self.keep is not None and self.keep(path):
            self.kept.setdefault(path, []).append(values.float().cpu().numpy())
        by_batch = F.pad(values.double(), (0, -images % self.batch_size), value=float("nan")).view(-1, self.batch_size)
        valid = ~by_batch.isnan()
        self.sums.setdefault(path, []).append(torch.where(valid, by_batch, 0).sum(1).cpu())
        self.counts.setdefault(path, []).append(valid.sum(1).cpu())

    @staticmethod
    def _set(tree: dict, path: tuple, value) -> None:
        for key in path[:-1]:
            tree = tree.setdefault(key, {})
        tree[path[-1]] = value

    def aggregate(self) -> dict:
        out: dict = {}
        for path, sums in self.sums.items():
            total, count = float(torch.cat(sums).sum()), int(torch.cat(self.counts[path]).sum())
            self._set(out, path, total / count if count else None)
        return out

    def batches(self) -> list[dict]:
        """One ``{lens: {metric: {"layer_k": mean}}}`` per batch, as tuned-lens writes to batches.jsonl."""
        out: list[dict] = []
        for path, sums in self.sums.items():
            sums, counts = torch.cat(sums), torch.cat(self.counts[path])
            out = out or [{} for _ in range(len(sums))]
            for batch, total, count in zip(out, sums.tolist(), counts.tolist()):
                self._set(batch, path, total / count if count else None)
        return out

    def per_image(self) -> dict:
        """The kept values nested like the aggregate, each ``{"layer_k": ...}`` level stacked into an array axis:
        ``(images, blocks)`` per metric, ``(images, blocks, blocks)`` per transfer table, ``(images,)`` for baselines.
        Undefined values (None) are NaN."""
        nested: dict = {}
        for path, parts in self.kept.items():
            self._set(nested, path, np.concatenate(parts))

        def stack(node):
            if isinstance(node, np.ndarray):
                return node
            if set(node) == {"final"}:
                return node["final"]
            if all(k.startswith("layer_") for k in node):  # insertion order is block order
                return np.stack([stack(v) for v in node.values()], axis=1)
            return {k: stack(v) for k, v in node.items()}

        return stack(nested)


@torch.no_grad()
def evaluate_lenses(
    lenses: Mapping[str, nn.Module],
    features: list[Tensor],
    final_logits: Tensor | ModelOutput,
    labels: Tensor,
    batch_size: int = 500,
    transfer: tuple[str, ...] = ("tuned",),
    fixed_logits: Mapping[str, Mapping[int, Tensor]] | None = None,
    intervals: bool = False,
    block_stages: Sequence[str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[dict, list[dict]] | tuple[dict, list[dict], dict]:
    """Evaluate every lens on every block; returns ``(aggregate, batches)``, or ``(aggregate, batches, intervals)``.

    ``aggregate`` is the exact mean over images; ``batches`` holds the means over
    each ``batch_size`` images, as tuned-lens writes to ``batches.jsonl`` (the
    lenses run on chunks of whole batches, as many as ``EVAL_CHUNK_ELEMENTS``
    logits allow). Lenses named in ``transfer`` must have a ``transfer(features,
    index, translator)`` method. ``fixed_logits[name][k]`` are precomputed logits
    at block k (e.g. the model's auxiliary classifiers), reported like a lens that
    exists only there. With ``intervals`` the per-image ``acc``, ``ce``, ``kl``
    and transfer CE are kept and :func:`bootstrap_intervals` (``resamples``,
    ``seed``; ``block_stages`` for the within/across-stage groups; ``groups``,
    the rows it resamples together) is returned third, for ``aggregate_metrics_ci.json``.
    ``final_logits`` are the model's logits of the rows, ``(rows, classes)``, or a
    :class:`~vision_lens.fit.targets.ModelOutput` that computes them a chunk at a time.
    """
    output = final_logits if isinstance(final_logits, ModelOutput) else ModelOutput.stored(final_logits)
    device = labels.device
    blocks = len(features)
    keep = (lambda path: path[1] in INTERVAL_METRICS or path[1:3] == ("layer_transfer", "ce")) if intervals else None
    means = _Means(batch_size, keep)
    chunk = batch_size * max(1, EVAL_CHUNK_ELEMENTS // (batch_size * output.classes))
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        y = labels[rows].to(device)
        final = output.logits(torch.arange(start, start + len(y), device=device)).to(device)
        images = len(y)
        feats = [f[rows].to(device) for f in features]
        decoders = {t: (lambda j, lens=lens: lens(feats[j], j)) for t, lens in lenses.items()}
        for name, by_block in (fixed_logits or {}).items():
            decoders[name] = lambda j, by_block=by_block: by_block[j][rows].to(device) if j in by_block else None
        for lens_type, decode in decoders.items():
            own = [decode(j) for j in range(blocks)]
            for j, logits in enumerate(own):
                values = None if logits is None else per_image_metrics(logits, final, y)
                for m in LENS_METRICS:
                    means.add((lens_type, m, _layer(j)), None if values is None else values[m], images)
            if lens_type in transfer:
                lens = lenses[lens_type]
                own_lps = [None if logits is None else logits.double().log_softmax(-1) for logits in own]
                model_top1 = final.argmax(-1)
                for i in range(blocks):
                    for j in range(blocks):
                        logits = None if own[j] is None else lens.transfer(feats[j], j, i)
                        values = dict.fromkeys(TRANSFER_METRICS)
                        if logits is not None:
                            lps = logits.double().log_softmax(-1)
                            top1 = lps.argmax(-1)
                            values = {"ce": _cross_entropy(lps, y), "kl": _kl(own_lps[j], lps),
                                      "agree": (top1 == model_top1).double(),
                                      "acc": (top1 == y.clamp(min=0)).double().masked_fill(y < 0, float("nan"))}
                        for kind, value in values.items():
                            means.add((lens_type, "layer_transfer", kind, _layer(i), _layer(j)), value, images)
        values = per_image_metrics(final, final, y)
        for m in BASELINE_METRICS:
            means.add(("baseline", m, "final"), values[m], images)
    aggregate = means.aggregate()
    for lens_type in transfer:
        if lens_type in aggregate:
            aggregate[lens_type]["layer_transfer"]["penalty"] = transfer_penalty(aggregate[lens_type]["layer_transfer"]["ce"])
    if not intervals:
        return aggregate, means.batches()
    return aggregate, means.batches(), bootstrap_intervals(means.per_image(), resamples, seed, block_stages, groups=groups)


def transfer_penalty(ce: dict) -> dict:
    """``penalty[i][j] = ce[i][j] - ce[j][j]``: the extra bits from using block i's translator on block j."""
    return {
        i: {j: None if v is None or ce[j][j] is None else v - ce[j][j] for j, v in row.items()}
        for i, row in ce.items()
    }


def pair_groups(block_stages: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean ``(blocks, blocks)`` masks of the transfer cells ``(i, j)``, given each block's stage.

    ``all``: every cell (the diagonal too, where the penalty is 0);
    ``within_stage``: ``i != j`` in the same stage; ``across_stage``: different stages. Stages come
    from the adapters (:attr:`~vision_lens.readout.Block.stage`): a ResNet's ``layerS``, one stage for a ViT.
    """
    stages = np.array(list(block_stages))
    same = stages[:, None] == stages[None, :]
    return {
        "all": np.ones_like(same),
        "within_stage": same & ~np.eye(len(stages), dtype=bool),
        "across_stage": ~same,
    }


def mean_by_distance(matrix: np.ndarray, cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``matrix[..., i, j]`` over the defined (non-NaN) cells with ``|i - j| = d``, for d = 0 .. blocks-1.

    ``cells`` (a boolean ``(blocks, blocks)`` mask, e.g. from :func:`pair_groups`)
    restricts the cells; leading axes (e.g. bootstrap resamples) are kept.
    Returns ``(means, counts)``: NaN where no cell is defined, and the number of
    defined cells at each distance.
    """
    blocks = matrix.shape[-1]
    rows, cols = np.indices((blocks, blocks))
    distance = np.abs(rows - cols)
    cells = np.ones((blocks, blocks), dtype=bool) if cells is None else cells
    means = np.full(matrix.shape[:-2] + (blocks,), np.nan)
    counts = np.zeros(matrix.shape[:-2] + (blocks,), dtype=int)
    for d in range(blocks):
        values = matrix[..., cells & (distance == d)]
        counts[..., d] = (~np.isnan(values)).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 = NaN: no defined cell
            means[..., d] = np.nansum(values, -1) / counts[..., d]
    return means, counts


def resampled_means(columns: np.ndarray, resamples: int, seed: int, chunk: int = 100,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """``(resamples, columns)``: each resample's mean of every column over the valid (non-NaN) rows (images; or the
    batches of a ``batches.jsonl``, see :mod:`vision_lens.signatures`).

    One draw of rows with replacement per resample, the same for every column
    (so paired differences keep their pairing), as counts per image: means are
    then two matrix products, ``counts @ values / counts @ valid``. With
    ``groups`` (a group id per row: a text window's tokens, which are not
    independent) whole groups are drawn, each with all its rows.
    """
    valid = ~np.isnan(columns)
    values = np.where(valid, columns, 0).astype(np.float32)
    valid = valid.astype(np.float32)
    group_of_row = np.arange(len(columns)) if groups is None else np.unique(groups, return_inverse=True)[1]
    images = int(group_of_row.max()) + 1 if len(columns) else 0  # what is drawn: rows, or groups
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, columns.shape[1]))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        draws = rng.integers(0, images, (rows, images)) + images * np.arange(rows)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * images).reshape(rows, images).astype(np.float32)
        if groups is not None:
            counts = counts[:, group_of_row]  # each row counts as often as its group was drawn
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 = NaN: no valid image drawn
            means[start : start + rows] = (counts @ values) / (counts @ valid)
    return means


def _intervals(samples: np.ndarray, level: float, key: Callable[[int], str] = _layer):
    """The central ``level`` of ``samples`` over axis 0 as ``[low, high]``, nested as ``{key(k): ...}`` per further
    axis (no further axis: the bare pair); None where undefined."""
    tails = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tails, 100 - tails], axis=0)

    def nest(lo, hi):
        if np.ndim(lo) == 0:
            return None if np.isnan(lo) or np.isnan(hi) else [float(lo), float(hi)]
        return {key(k): nest(lo[k], hi[k]) for k in range(len(lo))}

    return nest(low, high)


def bootstrap_intervals(
    per_image: dict,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    block_stages: Sequence[str] | None = None,
    level: float = BOOTSTRAP_LEVEL,
    groups: np.ndarray | None = None,
) -> dict:
    """Percentile bootstrap intervals of the means in ``per_image``, resampling the evaluation images.

    ``per_image`` is nested like the aggregate, with arrays of per-image values
    in place of the ``{"layer_k": value}`` levels: ``{lens: {metric: (images,
    blocks)}}``, ``{lens: {"layer_transfer": {"ce": (images, blocks, blocks)}}}``,
    ``{"baseline": {metric: (images,)}}``; NaN where an image has no value
    (unlabelled) and a whole column of NaN where a block is undefined. Every
    resample draws the images with replacement once, for every value jointly,
    and recomputes each mean; the interval is the central ``level`` of the
    ``resamples`` means. A ``layer_transfer`` ``ce`` also gives its ``penalty``
    ``ce[i][j] - ce[j][j]`` and ``penalty_by_distance``: per group of
    :func:`pair_groups` (``all``; with ``block_stages`` also ``within_stage``,
    ``across_stage``), ``{"d": [low, high]}`` for the mean of
    :func:`mean_by_distance` at distance d.

    With ``groups`` (one id per image row) whole groups are resampled (:func:`resampled_means`).

    Returns the aggregate's nesting with ``[low, high]`` leaves, None where undefined.
    """
    leaves: list[tuple[tuple, np.ndarray]] = []

    def collect(node: dict, path: tuple) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                collect(value, path + (key,))
            else:
                leaves.append((path + (key,), value))

    collect(per_image, ())
    images = len(leaves[0][1])
    means = resampled_means(np.concatenate([v.reshape(images, -1) for _, v in leaves], axis=1), resamples, seed,
                            groups=groups)
    out: dict = {}
    offset = 0
    for path, values in leaves:
        width = int(np.prod(values.shape[1:], dtype=int))
        samples = means[:, offset : offset + width].reshape((resamples,) + values.shape[1:])
        offset += width
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {"final": _intervals(samples, level)} if values.ndim == 1 else _intervals(samples, level)
        if path[-2:] == ("layer_transfer", "ce"):
            penalty = samples - np.diagonal(samples, axis1=1, axis2=2)[:, None, :]
            node["penalty"] = _intervals(penalty, level)
            groups = pair_groups(block_stages) if block_stages else {"all": None}
            node["penalty_by_distance"] = {
                group: _intervals(mean_by_distance(penalty, cells)[0], level, key=str) for group, cells in groups.items()
            }
    return out
