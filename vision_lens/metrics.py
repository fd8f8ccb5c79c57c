"""Layer-wise lens metrics and transfer matrices, in the nesting of ``tuned-lens eval``.

Shape of the result (``aggregate_metrics.json``)::

    {lens_type: {metric: {"layer_k": value},
                 "layer_transfer": {"ce"|"kl"|"penalty": {"layer_i": {"layer_j": value}}}},
     "baseline": {"ce"|"entropy"|"acc": {"final": value}}}

``ce``, ``kl`` and ``entropy`` are in bits per image; ``acc``, ``agree`` and
``top5`` are fractions. ``layer_transfer.ce[layer_i][layer_j]`` is the CE of
block i's translator applied to block j's features and ``kl`` is
KL(lens_j || translator i on block j), as in tuned-lens; ``penalty`` is
``ce[i][j] - ce[j][j]``. A value that is undefined (no identity path) is None.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BITS_PER_NAT = 1 / math.log(2)
LENS_METRICS = ("ce", "kl", "entropy", "acc", "agree", "top5")
BASELINE_METRICS = ("ce", "entropy", "acc")


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
        "ce": labelled(nats_to_bits(F.nll_loss(lps, y, reduction="none"))),
        "kl": nats_to_bits((final_lps.exp() * (final_lps - lps)).sum(-1)),
        "entropy": nats_to_bits(-(lps.exp() * lps).sum(-1)),
        "acc": labelled((pred == y).double()),
        "agree": (pred == final_lps.argmax(-1)).double(),
        "top5": labelled((top == y[:, None]).any(-1).double()),
    }


def _layer(k: int) -> str:
    return f"layer_{k}"


class _Means:
    """Per-batch means (for batches.jsonl) and exact means over all images, with None where undefined."""

    def __init__(self):
        self.sums: dict[tuple, float] = {}  # over valid (non-NaN) per-image values
        self.counts: dict[tuple, int] = {}

    def add(self, batch: dict, path: tuple, values: Tensor | None) -> None:
        node = batch
        for key in path[:-1]:
            node = node.setdefault(key, {})
        valid = None if values is None else values[~values.isnan()]
        self.sums.setdefault(path, 0.0)
        self.counts.setdefault(path, 0)
        if valid is None or len(valid) == 0:
            node[path[-1]] = None
            return
        node[path[-1]] = float(valid.mean())
        self.sums[path] += float(valid.sum())
        self.counts[path] += len(valid)

    def aggregate(self) -> dict:
        out: dict = {}
        for path, total in self.sums.items():
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = total / self.counts[path] if self.counts[path] else None
        return out


@torch.no_grad()
def evaluate_lenses(
    lenses: Mapping[str, nn.Module],
    features: list[Tensor],
    final_logits: Tensor,
    labels: Tensor,
    batch_size: int = 500,
    transfer: tuple[str, ...] = ("tuned",),
    fixed_logits: Mapping[str, Mapping[int, Tensor]] | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate every lens on every block; returns ``(aggregate, batches)``.

    ``aggregate`` is the exact mean over images; ``batches`` holds the per-batch
    means, as tuned-lens writes to ``batches.jsonl``. Lenses named in
    ``transfer`` must have a ``transfer(features, index, translator)`` method.
    ``fixed_logits[name][k]`` are precomputed logits at block k (e.g. the
    model's auxiliary classifiers), reported like a lens that exists only there.
    """
    device = final_logits.device
    blocks = len(features)
    means = _Means()
    batches: list[dict] = []
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        y, final = labels[rows].to(device), final_logits[rows].to(device)
        feats = [f[rows].to(device) for f in features]
        batch: dict = {}
        decoders = {t: (lambda j, lens=lens: lens(feats[j], j)) for t, lens in lenses.items()}
        for name, by_block in (fixed_logits or {}).items():
            decoders[name] = lambda j, by_block=by_block: by_block[j][rows].to(device) if j in by_block else None
        for lens_type, decode in decoders.items():
            own = [decode(j) for j in range(blocks)]
            for j, logits in enumerate(own):
                values = None if logits is None else per_image_metrics(logits, final, y)
                for m in LENS_METRICS:
                    means.add(batch, (lens_type, m, _layer(j)), None if values is None else values[m])
            if lens_type in transfer:
                lens = lenses[lens_type]
                for i in range(blocks):
                    for j in range(blocks):
                        logits = None if own[j] is None else lens.transfer(feats[j], j, i)
                        ce = kl = None
                        if logits is not None:
                            lps, lps_j = logits.double().log_softmax(-1), own[j].double().log_softmax(-1)
                            ce = per_image_metrics(logits, final, y)["ce"]
                            kl = nats_to_bits((lps_j.exp() * (lps_j - lps)).sum(-1))
                        means.add(batch, (lens_type, "layer_transfer", "ce", _layer(i), _layer(j)), ce)
                        means.add(batch, (lens_type, "layer_transfer", "kl", _layer(i), _layer(j)), kl)
        values = per_image_metrics(final, final, y)
        for m in BASELINE_METRICS:
            means.add(batch, ("baseline", m, "final"), values[m])
        batches.append(batch)
    aggregate = means.aggregate()
    for lens_type in transfer:
        if lens_type in aggregate:
            aggregate[lens_type]["layer_transfer"]["penalty"] = transfer_penalty(aggregate[lens_type]["layer_transfer"]["ce"])
    return aggregate, batches


def transfer_penalty(ce: dict) -> dict:
    """``penalty[i][j] = ce[i][j] - ce[j][j]``: the extra bits from using block i's translator on block j."""
    return {
        i: {j: None if v is None or ce[j][j] is None else v - ce[j][j] for j, v in row.items()}
        for i, row in ce.items()
    }
