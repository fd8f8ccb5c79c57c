"""The committed runs as references: found by name, each described by its model, family, fit and one line.

They live in :func:`~vision_lens.resources.results_root` (``results/`` in a checkout, the package data
``vision_lens/references`` in an installed wheel); ``vision_lens.load_results("cifar10-vit")`` reads one by name,
``vision-lens references`` lists them, ``vision-lens control`` compares a user's run with them. Plain JSON reading
(no torch), so that listing answers at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .artifacts import PENALTY_ONLY_GLOB, reference_or_path
from .resources import results_root

LANGUAGE_MODEL = "language model"
# The family of a model, by the first of these found in its architecture's name (cifar:preact_resnet20 before resnet).
FAMILIES = (("preact_resnet", "pre-activation ResNet"), ("plain", "plain CNN"), ("resnet", "ResNet"),
            ("inception", "InceptionV1"), ("googlenet", "InceptionV1"), ("vit", "ViT"), ("deit", "ViT"))
FAMILY_ORDER = ("ResNet", "pre-activation ResNet", "plain CNN", "InceptionV1", "ViT")  # in tables
FIT_LABELS = {"optimum": "default fit", "tuned-lens": "tuned-lens recipe"}
TUNED_LENS_FIT = "tuned-lens train"


@dataclass(frozen=True)
class Reference:
    """One reference run: where it is and what it is."""

    name: str  # its folder's name, what load_results and --reference take (a penalty-only matrix: its model's)
    path: Path
    model: str
    family: str  # ResNet, pre-activation ResNet, plain CNN, InceptionV1, ViT, language model
    fit: str  # default fit, tuned-lens recipe, tuned-lens train
    trained: bool  # False for a random initialisation (the random-init twins)
    line: str  # one line a person reads

    @property
    def group(self) -> str:
        """The family and fit, e.g. ``ViT, tuned-lens recipe``; random-init twins are their own group."""
        return f"{self.family}, {self.fit}" + ("" if self.trained else ", random init")

    @property
    def is_vision(self) -> bool:
        return self.family != LANGUAGE_MODEL

    @property
    def order(self) -> tuple:
        """Where it sits in a table: trained vision runs by family, then by fit; random-init twins; language
        models."""
        rank = FAMILY_ORDER.index(self.family) if self.family in FAMILY_ORDER else len(FAMILY_ORDER)
        return (not self.is_vision, not self.trained, rank, self.family, self.fit, self.name)


def model_family(model: str) -> str:
    """The family of a ``--model`` name (``cifar:resnet20`` -> ResNet); a ``hf:`` model no image family names is a
    language model (issue 33's causal LMs through the pipeline); otherwise the name itself."""
    arch = model.split(":", 1)[-1].lower()
    for pattern, family in FAMILIES:
        if pattern in arch:
            return family
    return LANGUAGE_MODEL if model.startswith("hf:") else model


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _has_transfer(aggregate: dict) -> bool:
    """Whether any translator of the run is defined on another layer than its own (plain JSON, as analysis's)."""
    transfer = aggregate.get("tuned", {}).get("layer_transfer", {})
    table = transfer.get("penalty") or transfer.get("ce") or {}
    return any(v is not None for i, row in table.items() for j, v in row.items() if i != j)


def describe(path: str | Path) -> Reference:
    """A :class:`Reference` for any run ``load_results`` reads: a run folder of this package, a tuned-lens eval
    folder (with the record of ``scripts/train_reference_lm.py`` where it has one), a penalty-only matrix's folder,
    or a committed reference's name."""
    path = reference_or_path(path)
    folder = path if path.is_dir() else path.parent
    run = _read(folder / "run.json")
    if list(folder.glob(PENALTY_ONLY_GLOB)) and not (folder / "aggregate_metrics.json").is_file():
        matrix = _read(next(folder.glob(PENALTY_ONLY_GLOB)))
        model = str(matrix.get("model", folder.name))
        line = (f"published transfer penalties ({matrix.get('unit', 'unit not stated')}) beside a per-layer CE from "
                "another file, possibly another lens run of the same model")
        return Reference(model.split("/")[-1], folder, model, LANGUAGE_MODEL, TUNED_LENS_FIT, True, line)
    aggregate = _read(folder / "aggregate_metrics.json") if path.is_dir() else _read(path)
    layers = len(aggregate.get("tuned", {}).get("ce", {}))
    transfer = "" if _has_transfer(aggregate) else "; no transfer (no block shares a space with another)"
    if not run:  # tuned-lens eval output
        record = _read(folder / "record.json")
        lens = _read(folder / "lens" / "config.json")
        model = "GPT-2 trained here" if record else str(lens.get("base_model_name_or_path", folder.name))
        model_ce = aggregate.get("baseline", {}).get("ce", {}).get("final")
        line = f"tuned-lens eval output: {layers} layers" + ("" if model_ce is None else
                                                              f", the model's CE {model_ce:.3f} bits per byte")
        if record:
            settings, validation = record.get("settings", {}), record.get("validation", {})
            line = (f"{settings.get('depth')} layers of width {settings.get('width')}, trained here on "
                    f"{record.get('corpus', {}).get('package', 'its corpus')} (validation perplexity "
                    f"{validation.get('perplexity', float('nan')):.1f}); lensed by `tuned-lens train` and `eval`")
        return Reference(folder.name, folder, model, LANGUAGE_MODEL, TUNED_LENS_FIT, True, line + transfer)
    model = str(run.get("model", folder.name))
    fit = FIT_LABELS.get(run.get("options", {}).get("recipe") or "optimum", str(run.get("options", {}).get("recipe")))
    trained = run.get("weights") != "random"
    accuracy = aggregate.get("baseline", {}).get("acc", {}).get("final")
    split = run.get("options", {}).get("eval_split", "eval")
    line = (f"{'trained' if trained else 'random init'}; {layers} blocks"
            + ("" if accuracy is None else f"; the model's {split} accuracy {accuracy:.4f}") + transfer)
    return Reference(folder.name, folder, model, model_family(model), fit, trained, line)


def references(root: str | Path | None = None) -> list[Reference]:
    """Every committed reference run (a folder of ``root``, default :func:`~vision_lens.resources.results_root`,
    holding ``aggregate_metrics.json``), by name."""
    root = Path(root) if root is not None else results_root()
    return [describe(p.parent) for p in sorted(root.glob("*/aggregate_metrics.json"))]


def listing(found: list[Reference] | None = None) -> str:
    """``vision-lens references``: one line per reference, its name (what ``--reference`` and ``load_results``
    take), its model, family and fit, and what it is."""
    found = references() if found is None else found
    rows = [("name", "model", "family", "fit", "what it is")] + [
        (r.name, r.model, r.family, r.fit + ("" if r.trained else ", random init"), r.line) for r in found]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)
