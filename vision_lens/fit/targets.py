"""What a lens's logits are fitted to, row by row: the labels (CE), or the model's output distribution (KL).

Every fitter asks for the targets of a chunk of rows at a time, never for all
of them, so a target distribution over many classes need not be held for every
row. :class:`ModelOutput` gives the model's logits of any rows: from logits
stored at capture, or recomputed on demand from the last block through the
unembedding (:meth:`ModelOutput.through`), for a model whose ``rows x classes``
logits would not fit in memory (a language model's 50,257-way vocabulary over
tens of thousands of token positions is 10 GB in float32). Where the whole
distribution takes at most ``DENSE_ELEMENTS`` numbers (every image model here)
it is computed once and kept, which is faster; beyond that it is recomputed
for each chunk whenever a loss needs it, in memory of ``chunk x classes``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

DENSE_ELEMENTS = 2**26  # a target distribution of up to this many numbers (256 MiB of float32) is kept whole
CHUNK_ELEMENTS = 2**25  # logits held at once in a pass over the rows (every fitter)


def chunk_rows(classes: int, modules: int = 1) -> int:
    """Rows per chunk such that ``modules`` logit matrices of ``classes`` columns hold ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // (modules * classes))


class ModelOutput:
    """The model's output logits of any rows, ``logits(rows) -> (len(rows), classes)``."""

    def __init__(self, logits_of: Callable[[Tensor], Tensor], rows: int, classes: int):
        self.logits_of, self.rows, self.classes = logits_of, rows, classes

    @classmethod
    def stored(cls, logits: Tensor) -> "ModelOutput":
        """Logits captured with the features, ``(rows, classes)``."""
        return cls(lambda rows: logits[rows.to(logits.device)], *logits.shape)

    @classmethod
    def through(cls, decode: Callable[[Tensor], Tensor], hidden: Tensor, classes: int) -> "ModelOutput":
        """Logits recomputed on demand as ``decode(hidden[rows])``: the last block's input to the head (``hidden``,
        ``(rows, D)``) through the unembedding, where the logit lens is exact there."""

        @torch.no_grad()
        def logits_of(rows: Tensor) -> Tensor:
            return decode(hidden[rows.to(hidden.device)])

        return cls(logits_of, len(hidden), classes)

    def logits(self, rows: Tensor) -> Tensor:
        return self.logits_of(rows)


class Targets:
    """Per row: what the logits ``(G, C, r)`` of ``G`` modules on rows ``rows`` (``(r,)``) are scored against."""

    device: torch.device

    def losses(self, logits: Tensor, rows: Tensor) -> Tensor:
        """Loss (nats) of ``logits`` ``(G, C, r)`` whose columns show ``rows`` ``(r,)``: ``(G, r)``."""
        return self._losses(logits.log_softmax(1), rows)

    def row_losses(self, logits: Tensor, rows: Tensor) -> Tensor:
        """:meth:`losses` of one module's logits laid out rows first, ``(r, C)`` (the recipe's): ``(r,)``. The
        softmax runs along memory (along the classes of a transposed view it took most of a step's time)."""
        return self._losses(logits.log_softmax(-1).T[None], rows)[0]

    def losses_and_gradients(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`losses`, and their gradients with respect to ``logits``: softmax minus target, ``(G, C, r)``."""
        raise NotImplementedError

    def mean(self, rows: Tensor, classes: int) -> Tensor:
        """The mean target distribution over ``rows``: ``(C,)``."""
        raise NotImplementedError

    def _losses(self, log_probs: Tensor, rows: Tensor) -> Tensor:
        raise NotImplementedError


class LabelTargets(Targets):
    """Cross-entropy against ``labels`` (``-1``: no label; such rows are never asked for)."""

    def __init__(self, labels: Tensor):
        self.labels, self.device = labels, labels.device

    def _labels(self, rows: Tensor, modules: int) -> Tensor:
        return self.labels[rows].expand(modules, 1, -1)

    def _losses(self, log_probs: Tensor, rows: Tensor) -> Tensor:
        return -log_probs.gather(1, self._labels(rows, len(log_probs)))[:, 0]

    def losses_and_gradients(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        log_probs = logits.log_softmax(1)
        losses, gradients = self._losses(log_probs, rows), log_probs.exp()
        # The label's probability is exp(-loss).
        gradients.scatter_(1, self._labels(rows, len(logits)), (-losses).exp()[:, None] - 1)
        return losses, gradients

    def mean(self, rows: Tensor, classes: int) -> Tensor:
        return torch.bincount(self.labels[rows], minlength=classes).float() / len(rows)


class OutputTargets(Targets):
    """KL(model output || lens), from :class:`ModelOutput`: the distribution ``(C, r)`` and its entropy per row."""

    def __init__(self, output: ModelOutput, device: torch.device):
        self.output, self.device = output, torch.device(device)
        self.probs = self.entropy = None
        self._last: tuple[Tensor, tuple[Tensor, Tensor]] | None = None  # row_losses' rows, and their distribution
        if output.rows * output.classes <= DENSE_ELEMENTS:  # kept whole: computed once
            self.probs, self.entropy = self._distribution(torch.arange(output.rows, device=self.device))

    def _distribution(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The model's output distribution on ``rows``, ``(C, r)``, and its entropy ``(r,)`` (nats)."""
        if self.probs is not None:
            return self.probs[:, rows], self.entropy[rows]
        probs, entropy = self._row_distribution(rows)
        return probs.T.contiguous(), entropy

    def _row_distribution(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_distribution`, rows first: ``(r, C)``."""
        if self.probs is not None:
            return self.probs[:, rows].T.contiguous(), self.entropy[rows]
        log_probs = self.output.logits(rows).to(self.device).float().log_softmax(-1)
        probs = log_probs.exp()
        return probs, -(probs * log_probs).sum(-1)

    def row_losses(self, logits: Tensor, rows: Tensor) -> Tensor:
        if self._last is None or self._last[0] is not rows:  # a recipe step scores every block on the same rows
            self._last = rows, self._row_distribution(rows)
        probs, entropy = self._last[1]
        return -(logits.log_softmax(-1) * probs).sum(-1) - entropy

    def _losses(self, log_probs: Tensor, rows: Tensor, distribution: tuple[Tensor, Tensor] | None = None) -> Tensor:
        probs, entropy = distribution or self._distribution(rows)
        return -(log_probs * probs).sum(1) - entropy

    def losses_and_gradients(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        log_probs, distribution = logits.log_softmax(1), self._distribution(rows)
        losses, gradients = self._losses(log_probs, rows, distribution), log_probs.exp()
        return losses, gradients.sub_(distribution[0])

    def mean(self, rows: Tensor, classes: int) -> Tensor:
        if self.probs is not None:
            return self.probs[:, rows].mean(1)
        total = torch.zeros(classes, dtype=torch.float64, device=self.device)
        for part in rows.split(chunk_rows(classes)):
            total += self._distribution(part)[0].double().sum(1)
        return (total / len(rows)).float()


def targets_of(labels: Tensor, output: Tensor | ModelOutput | None, device: torch.device) -> Targets:
    """Labels (``output`` None) or the model's output (stored logits ``(rows, C)``, or a :class:`ModelOutput`)."""
    if output is None:
        return LabelTargets(labels.to(device))
    return OutputTargets(output if isinstance(output, ModelOutput) else ModelOutput.stored(output), device)
