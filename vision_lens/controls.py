"""``vision-lens control``: a user's lens results placed among the controls, signature by signature.

The user's run is a ``tuned-lens eval --layer_transfer`` output folder (what an LLM lens study has), a run folder of
this package, or a committed reference by name. Its signatures (:mod:`vision_lens.signatures`, with batch-bootstrap
intervals from its ``batches.jsonl``) are set beside those of the references: by default every committed run
(:func:`~vision_lens.reference_runs.references`: the vision controls by model family and fit, their random-init
twins, and the language model trained here), plus any ``--reference`` (Pythia-12B:
``--reference ../shared/data/llm-anchors``). Only unitless signatures are compared (bits per image and bits per byte
do not compare). For each, under both embedding rules, a plain sentence says whether the user's value falls inside
the range of the trained vision controls; the range is what the controls show under every fit and normalisation
here, so a value outside it is one no hierarchy of these showed.

:func:`control` returns a :class:`Control`: ``table()`` (the terminal's), ``markdown()``, ``to_dict()`` (JSON) and
``figure()``; ``write(out)`` writes ``control.json``, ``control.md`` and ``control.png``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .analysis import as_results
from .artifacts import RunFolderError, reference_or_path
from .errors import OptionError
from .files import write_bytes_atomic, write_text_atomic
from .metrics import BOOTSTRAP_RESAMPLES
from .plotting import palette
from . import reference_runs
from .reference_runs import Reference, describe
from .signatures import (EMBEDDING_LABELS, EMBEDDING_RULES, LABELS, SHORT_LABELS, Estimate, RunSignatures,
                         signature_sets)

# The unitless signatures a control compares (vision_lens.signatures' keys), in the order the tables show them.
CONTROL_SIGNATURES = (
    "shared_gap/own_ce", "best_translator/own_ce", "best_translator/excess", "best_translator/kept_gain",
    "neighbour_forward/own_ce", "neighbour_backward/own_ce", "neighbour_both/own_ce", "neighbour_both/excess",
    "neighbour_both/kept_gain", "farthest_forward/own_ce", "farthest_backward/own_ce", "growth_forward",
    "growth_backward", "identity_distance_mean",
)
# Why a signature can be undefined for a run, by what its key needs.
UNDEFINED_BECAUSE = (
    ("shared_gap", "no shared lens was fitted (tuned-lens fits none; the best single translator stands in)"),
    ("identity_distance", "no translator parameters at hand (pass --lens with the folder `tuned-lens train` wrote)"),
    ("/excess", "the run holds no CE of the model itself (its baseline)"),
    ("/kept_gain", "the run holds no logit-lens CE"),
    ("growth", "the run has fewer than three layers"),
    ("", "no translator of the run reads another layer"),
)
FILES = ("control.json", "control.md", "control.png")


def number(value: float | None) -> str:
    """A value as the tables show it: two decimals, fewer digits for large ones, — where undefined."""
    if value is None:
        return "—"
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def span(values: Sequence[float]) -> str:
    """``low – high`` of ``values`` (one value alone), — where there is none."""
    if not len(values):
        return "—"
    low, high = min(values), max(values)
    return number(low) if low == high else f"{number(low)} – {number(high)}"


def with_interval(estimate: Estimate) -> str:
    if estimate.value is None or estimate.low is None:
        return number(estimate.value)
    return f"{number(estimate.value)} [{number(estimate.low)}, {number(estimate.high)}]"


@dataclass
class Placement:
    """One signature under one embedding rule: the user's value beside every reference's, and the verdict."""

    key: str
    embedding: str
    yours: Estimate
    references: list[tuple[Reference, Estimate]]

    @property
    def label(self) -> str:
        return LABELS[self.key]

    def values(self, refs: Sequence[tuple[Reference, Estimate]]) -> list[float]:
        return [e.value for _, e in refs if e.value is not None]

    @property
    def controls(self) -> list[tuple[Reference, Estimate]]:
        """The trained vision controls with a value (what the verdict compares with)."""
        return [(r, e) for r, e in self.references if r.is_vision and r.trained and e.value is not None]

    def verdict(self) -> str:
        """A plain sentence: where the user's value falls against the trained vision controls' range."""
        where = f"{self.label} ({EMBEDDING_LABELS[self.embedding]})"
        if self.yours.value is None:
            reason = next(text for part, text in UNDEFINED_BECAUSE if part in self.key)
            return f"{where}: undefined for your run: {reason}."
        controls = self.controls
        if not controls:
            return f"{where}: yours is {with_interval(self.yours)}; no vision control has this signature."
        low, high = min(self.values(controls)), max(self.values(controls))
        value, lo, hi = self.yours.value, self.yours.low, self.yours.high
        if low <= value <= high:
            place = "inside" + (", its interval reaching beyond," if lo is not None and (lo < low or hi > high) else "")
        else:
            side = "below" if value < low else "above"
            reaches = lo is not None and (hi >= low if side == "below" else lo <= high)
            place = side + (", its interval reaching into it," if reaches else "")
        nearest, estimate = min(controls, key=lambda item: abs(item[1].value - value))
        languages = [f"{r.name} {number(e.value)}" for r, e in self.references
                     if not r.is_vision and e.value is not None]
        return (f"{where}: yours, {with_interval(self.yours)}, lies {place} the range of the trained vision "
                f"controls, {span([low, high])} ({len(controls)} runs; nearest: {nearest.name} at "
                f"{number(estimate.value)})" + (f"; language models: {', '.join(languages)}" if languages else "")
                + ".")

    def to_dict(self) -> dict:
        controls = self.values(self.controls)
        return {"key": self.key, "label": self.label, "embedding": self.embedding,
                "embedding_rule": EMBEDDING_LABELS[self.embedding], "yours": self.yours.to_dict(),
                "vision_controls_range": [min(controls), max(controls)] if controls else None,
                "groups": {group: [min(v), max(v)] for group, v in self.groups().items() if v},
                "references": {r.name: e.to_dict() for r, e in self.references}, "verdict": self.verdict()}

    def groups(self, by_family: bool = False) -> dict[str, list[float]]:
        """The references' values by group: family and fit (``by_family``: trained vision runs by family only, the
        random-init twins together), then each language model by name."""
        grouped: dict[str, list[float]] = {}
        for ref, estimate in self.references:
            if not ref.is_vision:
                name = ref.name
            elif not ref.trained:
                name = "random init" if by_family else ref.group
            else:
                name = ref.family if by_family else ref.group
            grouped.setdefault(name, [])
            if estimate.value is not None:
                grouped[name].append(estimate.value)
        return grouped


@dataclass
class Control:
    """A user's run placed among the references (:func:`control`)."""

    yours: list[RunSignatures]  # one per embedding rule
    references: list[Reference]
    placements: list[Placement]
    reference_caveats: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.yours[0].name

    def _columns(self, by_family: bool) -> list[str]:
        seen: dict[str, None] = {}
        for placement in self.placements:
            for name, values in placement.groups(by_family).items():
                if values:
                    seen.setdefault(name)
        return list(seen)

    def _rows(self, embedding: str, by_family: bool) -> tuple[list[str], list[list[str]]]:
        columns = self._columns(by_family)
        header = ["signature", "yours", "vision controls (trained)", *columns]
        rows = []
        for placement in (p for p in self.placements if p.embedding == embedding):
            groups = placement.groups(by_family)
            label = SHORT_LABELS[placement.key] if by_family else placement.label
            rows.append([label, with_interval(placement.yours), span(placement.values(placement.controls))]
                        + [span(groups.get(column, [])) for column in columns])
        return header, rows

    def _notes(self) -> list[str]:
        first = self.yours[0]
        notes = [f"Your run: {first.name} ({first.path}), in {first.unit}; only unitless signatures are compared.",
                 "Intervals: " + (first.intervals or "none (the run has no batches.jsonl)") + ".",
                 "Embedding rule: the embedding layer is each model's first lensed layer (a ViT's embed, a language "
                 "model's layer_0, a CNN's stem); every signature is given with it left out and kept."]
        notes += [f"Caveat ({first.name}): {c}" for c in first.caveats]
        notes += [f"Caveat ({name}): {c}" for name, caveats in self.reference_caveats.items() for c in caveats]
        return notes

    def table(self) -> str:
        """The table a person reads in a terminal: per embedding rule, each signature with your value and interval
        beside the range of the trained vision controls, each vision family (every fit), the random-init twins and
        each language model; then a sentence per signature."""
        blocks = []
        for embedding in EMBEDDING_RULES:
            header, rows = self._rows(embedding, by_family=True)
            widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
            lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(row, widths))) for row in [header, *rows]]
            blocks.append(f"{self.name}: {EMBEDDING_LABELS[embedding]}\n" + "\n".join(
                [lines[0], "-" * len(lines[0]), *lines[1:]]))
        def wrapped(text: str, first: str = "", rest: str = "") -> str:  # names stay whole, hyphens and all
            return textwrap.fill(text, 110, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                                 break_long_words=False)

        sentences = [wrapped(p.verdict(), "- ", "  ") for p in self.placements]
        return "\n\n".join([*blocks, "\n".join(sentences), "\n".join(wrapped(n) for n in self._notes())])

    def markdown(self) -> str:
        """The same as Markdown, the references grouped by family and fit, and the references listed."""
        parts = [f"# {self.name} among the vision controls", "\n".join(f"- {n}" for n in self._notes())]
        for embedding in EMBEDDING_RULES:
            header, rows = self._rows(embedding, by_family=False)
            parts.append(f"## {EMBEDDING_LABELS[embedding].capitalize()}\n\n" + "\n".join(
                ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                + ["| " + " | ".join(row) + " |" for row in rows]))
            parts.append("\n".join(f"- {p.verdict()}" for p in self.placements if p.embedding == embedding))
        parts.append("## References\n\n| name | model | family | fit | what it is |\n|---|---|---|---|---|\n" + "\n".join(
            f"| {r.name} | {r.model} | {r.family} | {r.fit}{'' if r.trained else ', random init'} | {r.line} |"
            for r in self.references))
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict:
        first = self.yours[0]
        return {"run": {"name": first.name, "path": first.path, "unit": first.unit, "intervals": first.intervals,
                        "caveats": list(first.caveats),
                        "best_translator_layer": {s.embedding: s.best_translator_layer for s in self.yours}},
                "embedding_rules": EMBEDDING_LABELS,
                "references": [{"name": r.name, "path": str(r.path), "model": r.model, "family": r.family,
                                "fit": r.fit, "trained": r.trained, "line": r.line,
                                "caveats": list(self.reference_caveats.get(r.name, ()))} for r in self.references],
                "signatures": [p.to_dict() for p in self.placements]}

    def _family_of(self, group: str) -> str:
        """The family of a group of :meth:`Placement.groups` (a language model's group is its own)."""
        return next((r.family for r in self.references if r.is_vision and group.startswith(r.family + ",")), group)

    def figure(self) -> Figure:
        """One panel per signature: each reference group's values (filled: embedding layer left out; open: kept)
        on a row, your value as a vertical line (solid: left out; dashed: kept) with its interval shaded."""
        keys = list(dict.fromkeys(p.key for p in self.placements))
        rows_of = self._columns(by_family=False)
        columns = 4
        grid = math.ceil(len(keys) / columns)
        height = 0.8 + 0.28 * len(rows_of)
        fig = Figure(figsize=(4.3 * columns, height * grid + 1.2))
        axes = fig.subplots(grid, columns, sharey=True, squeeze=False)
        families = list(dict.fromkeys(self._family_of(name) for name in rows_of))
        family_colour = dict(zip(families, palette(len(families))))
        colours = [family_colour[self._family_of(name)] if "random init" not in name else "#8c8c8c"
                   for name in rows_of]
        for ax, key in zip(axes.flat, keys):
            for embedding, offset, fill in (("out", -0.15, True), ("in", 0.15, False)):
                placement = next(p for p in self.placements if p.key == key and p.embedding == embedding)
                groups = placement.groups()
                for row, name in enumerate(rows_of):
                    values = groups.get(name, [])
                    ax.plot(values, [row + offset] * len(values), "o", ms=5, color=colours[row],
                            mfc=colours[row] if fill else "none")
                yours = placement.yours
                if yours.value is not None:
                    style = "-" if fill else "--"
                    ax.axvline(yours.value, color="#c0392b", ls=style, lw=1.5)
                    if yours.low is not None:
                        ax.axvspan(yours.low, yours.high, color="#c0392b", alpha=0.15 if fill else 0.08, lw=0)
            values = [v for p in self.placements if p.key == key for v in p.values(p.references)]
            values += [e.value for p in self.placements if p.key == key for e in (p.yours,) if e.value is not None]
            if values and max(values) - min(values) > 20:  # ResNets' default fits sit far out: keep the rest legible
                ax.set_xscale("symlog", linthresh=1)
            ax.set_title(textwrap.fill(LABELS[key], 44), fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_yticks(range(len(rows_of)), rows_of, fontsize=8)
        axes[0, 0].set_ylim(len(rows_of) - 0.5, -0.5)
        handles = [Line2D([], [], color="#c0392b", ls="-", lw=1.5, label=f"{self.name}, embedding layer left out"),
                   Line2D([], [], color="#c0392b", ls="--", lw=1.5, label=f"{self.name}, embedding layer kept"),
                   Line2D([], [], color="grey", marker="o", ls="", label="references, embedding layer left out"),
                   Line2D([], [], color="grey", marker="o", mfc="none", ls="", label="references, embedding kept")]
        fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9)
        fig.suptitle(f"{self.name} among the vision controls: unitless signatures (shaded: your 95 % interval)",
                     fontsize=11)
        fig.tight_layout(rect=(0, 1.0 / (height * grid + 1.2), 1, 0.97))
        return fig

    def write(self, out: str | Path) -> list[Path]:
        """``control.json``, ``control.md`` and ``control.png`` into the folder ``out`` (each written atomically;
        an earlier control's files there are replaced)."""
        import io

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = [out / name for name in FILES]
            write_text_atomic(paths[0], json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
            write_text_atomic(paths[1], self.markdown())
            buffer = io.BytesIO()
            self.figure().savefig(buffer, format="png", dpi=120)
            write_bytes_atomic(paths[2], buffer.getvalue())
        except OSError as exc:
            raise RunFolderError(f"--out {out} cannot be written ({exc.strerror or exc}); choose a writable folder"
                                 ) from exc
        return paths


def _same(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def control(run, references: Sequence[str | Path] = (), defaults: bool = True, out: str | Path | None = None,
            lens: str | Path | None = None, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Control:
    """Place ``run`` among the controls: its signatures beside every reference's.

    ``run``: a ``tuned-lens eval --layer_transfer`` folder, a run folder of this package, or a committed reference's
    name. ``references`` adds folders or names (``../shared/data/llm-anchors`` for Pythia-12B) to the committed runs
    (left out with ``defaults=False``). ``lens``: the folder ``tuned-lens train`` wrote for ``run``, for its
    translators' distance from the identity. Intervals: a bootstrap over the batches of each run's ``batches.jsonl``
    (``resamples``, ``seed``). With ``out``, the table, its Markdown and its figure are written there
    (:meth:`Control.write`).
    """
    if resamples < 1:
        raise OptionError(f"--resamples {resamples}: give at least 1")
    missing = [str(r) for r in references if not reference_or_path(r).exists()]
    if missing:
        raise FileNotFoundError(f"--reference {', '.join(missing)}: no such folder or file")
    path = reference_or_path(run)
    refs = (reference_runs.references() if defaults else []) + [describe(r) for r in references]
    refs = sorted((r for n, r in enumerate(refs) if not _same(r.path, path)
                   and not any(_same(r.path, other.path) for other in refs[:n])), key=lambda r: r.order)
    if not refs:
        raise OptionError("no references to compare with: pass --reference, or leave out --no-default-references")
    (loaded,) = as_results([path])
    yours = signature_sets(loaded, EMBEDDING_RULES, resamples, seed, lens)
    found, caveats = [], {}
    for ref in refs:
        (ref_run,) = as_results([ref.path])
        found.append(signature_sets(ref_run, EMBEDDING_RULES, resamples, seed))
        if ref_run.caveats:
            caveats[ref.name] = ref_run.caveats
    placements = [Placement(key, mine.embedding, mine.values[key],
                            [(ref, sets[rule].values[key]) for ref, sets in zip(refs, found)])
                  for rule, mine in enumerate(yours) for key in CONTROL_SIGNATURES]
    result = Control(yours, refs, placements, caveats)
    if out is not None:
        result.write(out)
    return result

