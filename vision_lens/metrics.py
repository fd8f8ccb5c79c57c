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
    """Per-image ``ce``, ``kl`` (to the model's output), ``entropy`` (bits) and 0/1 ``acc``, ``agree``, ``top5``."""
    lps = logits.double().log_softmax(-1)
    final_lps = final_logits.double().log_softmax(-1)
    pred = lps.argmax(-1)
    top = lps.topk(min(5, lps.shape[-1]), dim=-1).indices
    return {
        "ce": nats_to_bits(F.nll_loss(lps, labels, reduction="none")),
        "kl": nats_to_bits((final_lps.exp() * (final_lps - lps)).sum(-1)),
        "entropy": nats_to_bits(-(lps.exp() * lps).sum(-1)),
        "acc": (pred == labels).double(),
        "agree": (pred == final_lps.argmax(-1)).double(),
        "top5": (top == labels[:, None]).any(-1).double(),
    }


def _layer(k: int) -> str:
    return f"layer_{k}"


def _mean(x: Tensor | None) -> float | None:
    return None if x is None else float(x.mean())


@torch.no_grad()
def evaluate_lenses(
    lenses: Mapping[str, nn.Module],
    features: list[Tensor],
    final_logits: Tensor,
    labels: Tensor,
    batch_size: int = 500,
    transfer: tuple[str, ...] = ("tuned",),
) -> tuple[dict, list[dict]]:
    """Evaluate every lens on every block; returns ``(aggregate, batches)``.

    ``aggregate`` is the exact mean over images; ``batches`` holds the per-batch
    means, as tuned-lens writes to ``batches.jsonl``. Lenses named in
    ``transfer`` must have a ``transfer(features, index, translator)`` method.
    """
    device = final_logits.device
    blocks = len(features)
    batches: list[dict] = []
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        y, final = labels[rows].to(device), final_logits[rows].to(device)
        feats = [f[rows].to(device) for f in features]
        batch: dict = {}
        for lens_type, lens in lenses.items():
            out = batch[lens_type] = {m: {} for m in LENS_METRICS}
            own = []
            for j in range(blocks):
                logits = lens(feats[j], j)
                own.append(logits)
                values = None if logits is None else per_image_metrics(logits, final, y)
                for m in LENS_METRICS:
                    out[m][_layer(j)] = None if values is None else _mean(values[m])
            if lens_type in transfer:
                ce: dict = {_layer(i): {} for i in range(blocks)}
                kl: dict = {_layer(i): {} for i in range(blocks)}
                for j in range(blocks):
                    lps_j = None if own[j] is None else own[j].double().log_softmax(-1)
                    for i in range(blocks):
                        logits = lens.transfer(feats[j], j, i)
                        if logits is None or lps_j is None:
                            ce[_layer(i)][_layer(j)] = kl[_layer(i)][_layer(j)] = None
                            continue
                        lps = logits.double().log_softmax(-1)
                        ce[_layer(i)][_layer(j)] = _mean(nats_to_bits(F.nll_loss(lps, y, reduction="none")))
                        kl[_layer(i)][_layer(j)] = _mean(nats_to_bits((lps_j.exp() * (lps_j - lps)).sum(-1)))
                out["layer_transfer"] = {"ce": ce, "kl": kl}
        values = per_image_metrics(final, final, y)
        batch["baseline"] = {m: {"final": _mean(values[m])} for m in BASELINE_METRICS}
        batch["_images"] = len(y)
        batches.append(batch)
    aggregate = _weighted_mean(batches)
    for lens_type in transfer:
        if lens_type in aggregate:
            aggregate[lens_type]["layer_transfer"]["penalty"] = transfer_penalty(aggregate[lens_type]["layer_transfer"]["ce"])
    for batch in batches:
        del batch["_images"]
    return aggregate, batches


def _weighted_mean(batches: list[dict]) -> dict:
    """Image-weighted mean of the per-batch means: the exact mean over all images."""
    total = sum(b["_images"] for b in batches)

    def merge(nodes: list, weights: list[int]):
        if isinstance(nodes[0], dict):
            return {k: merge([n[k] for n in nodes], weights) for k in nodes[0]}
        if nodes[0] is None:
            return None
        return sum(v * w for v, w in zip(nodes, weights)) / total

    weights = [b["_images"] for b in batches]
    return merge([{k: v for k, v in b.items() if k != "_images"} for b in batches], weights)


def transfer_penalty(ce: dict) -> dict:
    """``penalty[i][j] = ce[i][j] - ce[j][j]``: the extra bits from using block i's translator on block j."""
    return {
        i: {j: None if v is None or ce[j][j] is None else v - ce[j][j] for j, v in row.items()}
        for i, row in ce.items()
    }
