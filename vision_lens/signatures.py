"""The signatures that tell a residual stream from a hierarchy, each a function of a run.

A run is anything :func:`~vision_lens.analysis.as_results` reads: a run folder of this package, a ``tuned-lens eval
--layer_transfer`` output folder, or a penalty-only transfer matrix with a per-layer CE from another file
(:func:`~vision_lens.artifacts.load_penalty_only`, the tuned-lens authors' Pythia-12B numbers), or a committed
reference by name. ``docs/control.md`` states every formula; in short, with the kept layers ``k`` (the embedding rule
below), each one's own CE ``c_k`` (its lens on its own layer), the transfer penalty ``P[i, j]`` (translator ``i`` on
layer ``j``, minus ``c_j``), the logit lens's CE ``g_k`` and the model's own CE ``b``:

* **shared lens**: the whole-network shared lens's CE (and KL to the model) minus the tuned lens's, where one was
  fitted; **best single translator**: the smallest mean over a row of ``P``, one translator applied to every layer
  (the stand-in where no shared lens was fitted, as in tuned-lens output);
* **direction**: penalties by distance ``d``, forward (``i < j``: an earlier layer's translator on a later layer)
  and backward (``i > j``) apart; the neighbours (``d = 1``), the largest distance (first kept layer and last), and
  the growth from one to the other;
* **normalisations**, side by side: raw (the run's unit), over the own CE ``mean c``, over the excess of the own CE
  above the model's ``mean (c - b)``, and the share of the tuned lens's gain over the logit lens that the
  translator keeps, ``1 - sum P / sum (g_j - c_j)`` over the same cells;
* **distance from the identity** of each translator, ``||A|| / ||I||`` (Frobenius) in the raw coordinates it acts
  on, where its parameters are at hand (:func:`translator_identity_distances`).

**Embedding rule.** Every signature is given with the embedding layer left out (``"out"``) and kept (``"in"``). The
embedding layer is each model's first lensed layer, what enters its first block: a ViT's ``embed``, a language
model's ``layer_0``, a CNN's ``stem``. The rule is by position, the same for every model.

**Intervals.** A percentile bootstrap over the batches of the run's ``batches.jsonl`` (``tuned-lens eval`` writes one
mean per batch of sequences, ``vision-lens`` one per 500 eval images): each resample draws the batches with
replacement, averages every per-batch mean over the drawn batches (as tuned-lens aggregates them), and recomputes the
signature; the interval is the central 95 % of the resamples. The resampling unit is the batch, on both sides.
Runs without per-batch values (a penalty-only matrix) get none.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .analysis import ResultsLike, as_results, reported_unit
from .artifacts import RunFolderError, RunResults, layer_keys
from .metrics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, resampled_means

EMBEDDING_RULES = ("out", "in")  # the embedding layer (the first lensed one) left out, or kept
EMBEDDING_LABELS = {"out": "embedding layer left out", "in": "embedding layer kept"}
NORMALISATIONS = ("own_ce", "excess", "kept_gain")
NORMALISATION_LABELS = {None: "", "own_ce": " / own CE", "excess": " / (own CE − model CE)",
                        "kept_gain": ": share of the tuned lens's gain over the logit lens kept"}
NORMALISATION_SHORT = {None: "", "own_ce": " / own CE", "excess": " / excess", "kept_gain": ": gain kept"}
DIRECTIONS = ("forward", "backward", "both")
# A layer whose logit lens already is the model's output (KL to it below this, in bits: this package's last block)
# has nothing to translate; its translator fits to zero and is left out of the distance from the identity.
LOGIT_EXACT_KL = 1e-6


@dataclass(frozen=True)
class Estimate:
    """A signature's value with its 95 % batch-bootstrap interval (None where the run has no per-batch values);
    None where the signature is undefined for the run."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def format(self, digits: int = 2) -> str:
        if self.value is None:
            return "—"
        text = f"{self.value:.{digits}f}"
        return text if self.low is None else f"{text} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "interval": None if self.low is None else [self.low, self.high]}


@dataclass
class Means:
    """The means a signature is computed from, over a run's layers. The leading axis holds one point estimate (the
    run's aggregate) or the bootstrap resamples; None where the run lacks that lens or value."""

    own_ce: np.ndarray  # (R, L): each layer's tuned-lens CE, its translator on its own layer
    penalty: np.ndarray  # (R, L, L): rows the translator's layer, columns the evaluated layer
    logit_ce: np.ndarray | None = None  # (R, L)
    model_ce: np.ndarray | None = None  # (R,): the model's own CE
    tuned_kl: np.ndarray | None = None  # (R, L): KL to the model
    shared_ce: np.ndarray | None = None  # (R, L): the shared lens (one translator for every layer)
    shared_kl: np.ndarray | None = None  # (R, L)

    def kept(self, layers: Sequence[int]) -> "Means":
        """These means at the layer positions ``layers`` only."""
        keep = list(layers)
        picked = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in picked.items():
            if value is not None and name != "model_ce":
                picked[name] = value[:, keep][:, :, keep] if name == "penalty" else value[:, keep]
        return Means(**picked)


def _values(table: dict | None, keys: Sequence[str]) -> np.ndarray | None:
    """``{"layer_k": v}`` at ``keys`` as floats (NaN where null or absent); None where the table is."""
    if table is None:
        return None
    return np.array([np.nan if table.get(k) is None else table[k] for k in keys], dtype=float)


def _tree_means(tree: dict, keys: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """The arrays of :class:`Means` (without the leading axis) from one aggregate or one batch of ``batches.jsonl``
    (``{lens: {metric: {"layer_k": v}, "layer_transfer": {...}}, "baseline": {...}}``), at the layers ``keys``."""
    tuned = tree.get("tuned", {})
    transfer = tuned.get("layer_transfer", {})
    if "ce" in transfer:
        ce = np.array([_values(transfer["ce"].get(i, {}), keys) for i in keys])
        penalty = ce - np.diag(ce)[None, :]
    elif "penalty" in transfer:  # a penalty-only matrix
        penalty = np.array([_values(transfer["penalty"].get(i, {}), keys) for i in keys])
    else:
        raise RunFolderError(f"{where} has no tuned-lens layer_transfer (tuned-lens eval: pass --layer_transfer)")
    arrays = {"own_ce": _values(tuned.get("ce"), keys), "penalty": penalty,
              "logit_ce": _values(tree.get("logit", {}).get("ce"), keys),
              "tuned_kl": _values(tuned.get("kl"), keys),
              "shared_ce": _values(tree.get("shared", {}).get("ce"), keys),
              "shared_kl": _values(tree.get("shared", {}).get("kl"), keys)}
    model_ce = tree.get("baseline", {}).get("ce", {}).get("final")
    arrays["model_ce"] = None if model_ce is None else np.array(float(model_ce))
    if arrays["own_ce"] is None:
        raise RunFolderError(f"{where} has no tuned-lens ce")
    return {name: value for name, value in arrays.items() if value is not None}


def run_layers(run: RunResults) -> list[str]:
    """The run's ``layer_k`` keys, in order (a :func:`~vision_lens.analysis.thinned` run's own)."""
    return layer_keys(run.aggregate["tuned"]["ce"])


def point_means(run: RunResults) -> Means:
    """:class:`Means` of the run's aggregate (one point estimate)."""
    arrays = _tree_means(run.aggregate, run_layers(run), f"{run.path} ({run.name})")
    return Means(**{name: value[None] for name, value in arrays.items()})


def read_batches(run: RunResults) -> list[dict] | None:
    """The per-batch means of the run's ``batches.jsonl`` (one JSON list, as tuned-lens 0.2.0 and this package
    write it, or one JSON object per line); None where the run has none, or only an empty list."""
    path = Path(run.path) / "batches.jsonl"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        batches = json.loads(text)
    except ValueError:
        try:
            batches = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise RunFolderError(f"{path} is neither one JSON list nor one JSON object per line ({exc}); expected "
                                 "the per-batch means tuned-lens eval writes") from exc
    if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
        raise RunFolderError(f"{path}: expected a list of per-batch objects, as tuned-lens eval writes")
    return batches or None


def batch_means(run: RunResults, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[Means, int] | None:
    """``(Means over `resamples` bootstrap resamples of the batches, number of batches)``, from the run's
    ``batches.jsonl``; None where it has no per-batch values (or they lack a value of the aggregate)."""
    batches = read_batches(run)
    if batches is None:
        return None
    keys, where = run_layers(run), f"{Path(run.path) / 'batches.jsonl'}"
    rows = [_tree_means(batch, keys, f"{where}, batch {n}") for n, batch in enumerate(batches)]
    point = _tree_means(run.aggregate, keys, where)
    names = [name for name in point if all(name in row for row in rows)]
    if "penalty" not in names or "own_ce" not in names:
        return None
    shapes = {name: point[name].shape for name in names}
    columns = np.concatenate([np.stack([row[name].reshape(-1) for row in rows]) for name in names], axis=1)
    means = resampled_means(columns, resamples, seed)
    arrays, offset = {}, 0
    for name in names:
        width = int(np.prod(shapes[name], dtype=int))
        arrays[name] = means[:, offset:offset + width].reshape((resamples,) + shapes[name])
        offset += width
    return Means(**arrays), len(batches)


# ---------------------------------------------------------------------------------------------------------------
# The measures, on Means (vectorised over the leading axis)


def direction_cells(layers: int, direction: str, distance: int) -> np.ndarray:
    """Boolean ``(layers, layers)`` mask of the cells ``(i, j)`` at ``distance``: forward ``j - i = d`` (an earlier
    layer's translator on a later layer), backward ``i - j = d``, both."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    rows, cols = np.indices((layers, layers))
    forward, backward = cols - rows == distance, rows - cols == distance
    return {"forward": forward, "backward": backward, "both": forward | backward}[direction]


def _own(m: Means) -> np.ndarray:
    return np.nanmean(m.own_ce, axis=1)


def normalised(m: Means, cells: np.ndarray, normalise: str | None) -> np.ndarray:
    """The mean penalty over ``cells`` (``(L, L)`` mask, or ``(R, L, L)``), raw or normalised: over the mean own CE,
    over the mean excess of the own CE above the model's, or as the share of the tuned lens's gain over the logit lens
    that the translators keep on those cells, ``1 - sum P / sum (g_j - c_j)``. NaN where undefined."""
    cells = np.broadcast_to(cells, m.penalty.shape)
    defined = cells & np.isfinite(m.penalty)
    count = defined.sum(axis=(1, 2))
    total = np.where(defined, m.penalty, 0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        if normalise is None:
            return mean
        if normalise == "own_ce":
            return mean / _own(m)
        if normalise == "excess":
            if m.model_ce is None:
                return np.full(len(mean), np.nan)
            return mean / np.nanmean(m.own_ce - m.model_ce[:, None], axis=1)
        if normalise == "kept_gain":
            if m.logit_ce is None:
                return np.full(len(mean), np.nan)
            gain = np.broadcast_to((m.logit_ce - m.own_ce)[:, None, :], m.penalty.shape)
            gained = np.where(defined & np.isfinite(gain), gain, 0).sum(axis=(1, 2))
            return np.where(count > 0, 1 - total / gained, np.nan)
    raise ValueError(f"normalise must be None or one of {', '.join(NORMALISATIONS)}, got {normalise!r}")


def best_row_cells(m: Means) -> np.ndarray:
    """``(R, L, L)``: per resample, the row of the translator whose mean penalty over every layer is smallest (rows
    with an undefined cell cannot be applied to every layer and are left out; none left: no cell)."""
    rows = m.penalty.mean(axis=2)  # NaN for a row with an undefined cell
    cells = np.zeros(m.penalty.shape, dtype=bool)
    usable = np.isfinite(rows).any(axis=1)
    best = np.argmin(np.where(np.isfinite(rows), rows, np.inf), axis=1)
    cells[np.flatnonzero(usable), best[usable], :] = True
    return cells


def shared_gap(m: Means, normalise: str | None = None, metric: str = "ce") -> np.ndarray:
    """The shared lens's ``metric`` (``ce`` or ``kl``) minus the tuned lens's, averaged over the layers where both are
    defined; normalised (CE only) as :func:`normalised` does, the shared lens in the place of a translator. NaN where
    no shared lens was fitted, or where it is defined at one layer only."""
    shared, tuned = (m.shared_kl, m.tuned_kl) if metric == "kl" else (m.shared_ce, m.own_ce)
    if metric == "kl" and normalise is not None:
        raise ValueError("the normalisations are of cross-entropy: pass metric='ce' with normalise")
    if shared is None or tuned is None:
        return np.full(len(m.own_ce), np.nan)
    gap = shared - tuned
    both = np.isfinite(gap)
    # The gap on the diagonal of a layer-by-layer matrix: the normalisations then read it as a penalty.
    as_penalty = Means(m.own_ce, np.where(np.eye(gap.shape[1], dtype=bool), gap[:, None, :], np.nan), m.logit_ce,
                       m.model_ce)
    if (both.sum(axis=1) < 2).all():  # one layer (an Inception's last block) is no whole network to share a lens
        return np.full(len(gap), np.nan)
    return normalised(as_penalty, np.eye(gap.shape[1], dtype=bool), normalise)


def far_distance(m: Means) -> int:
    """The largest distance between kept layers (first and last)."""
    return m.penalty.shape[1] - 1


@dataclass(frozen=True)
class Signature:
    """One scalar signature: its key, a label a table prints, whether it carries the run's unit, and its computation
    on :class:`Means` (one value per leading index)."""

    key: str
    label: str
    compute: Callable[[Means], np.ndarray]
    unitless: bool = True
    normalisation: str | None = None
    short: str = ""  # the label in a narrow table (a terminal's)


def _suffixed(key: str, normalise: str | None) -> str:
    if normalise is not None and normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be None or one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    return key if normalise is None else f"{key}/{normalise}"


def _normalised_family(key: str, label: str, short: str, cells: Callable[[Means], np.ndarray],
                       normalisations: Sequence[str | None]) -> list[Signature]:
    """One signature per normalisation of the mean penalty over ``cells``."""
    return [Signature(_suffixed(key, n), label + NORMALISATION_LABELS[n],
                      lambda m, n=n: normalised(m, cells(m), n), n is not None, n, short + NORMALISATION_SHORT[n])
            for n in normalisations]


def _registry() -> list[Signature]:
    every = (None, *NORMALISATIONS)
    found = [Signature("shared_gap_kl", "shared lens − tuned lens, KL to the model",
                       lambda m: shared_gap(m, metric="kl"), False, short="shared lens gap, KL")]
    found += [Signature(_suffixed("shared_gap", n), "shared lens − tuned lens, CE" + NORMALISATION_LABELS[n],
                        lambda m, n=n: shared_gap(m, n), n is not None, n, "shared lens gap" + NORMALISATION_SHORT[n])
              for n in every]
    found += _normalised_family("best_translator", "best single translator on every layer", "best translator",
                                best_row_cells, every)
    for direction in DIRECTIONS:
        found += _normalised_family(f"neighbour_{direction}", f"neighbours (d = 1), {direction}",
                                    f"neighbours {direction}",
                                    lambda m, d=direction: direction_cells(m.penalty.shape[1], d, 1), every)
    for direction in ("forward", "backward"):
        found += _normalised_family(f"farthest_{direction}", f"largest distance (first layer and last), {direction}",
                                    f"farthest {direction}", lambda m, d=direction: direction_cells(
                                        m.penalty.shape[1], d, far_distance(m)), (None, "own_ce"))
        found.append(Signature(f"growth_{direction}", f"{direction} penalty, largest distance / d = 1",
                               lambda m, d=direction: _growth(m, d), short=f"{direction}: farthest / d = 1"))
    return found


def _growth(m: Means, direction: str) -> np.ndarray:
    layers = m.penalty.shape[1]
    if layers < 3:  # the largest distance is 1: no growth to see
        return np.full(len(m.own_ce), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (normalised(m, direction_cells(layers, direction, far_distance(m)), None)
                / normalised(m, direction_cells(layers, direction, 1), None))


SIGNATURES: dict[str, Signature] = {s.key: s for s in _registry()}
IDENTITY_SIGNATURES = {"identity_distance_mean": "translators' distance from the identity ‖A‖/‖I‖, mean",
                       "identity_distance_max": "translators' distance from the identity ‖A‖/‖I‖, largest"}
LABELS = {**{key: s.label for key, s in SIGNATURES.items()}, **IDENTITY_SIGNATURES}
SHORT_LABELS = {**{key: s.short for key, s in SIGNATURES.items()},
                "identity_distance_mean": "‖A‖/‖I‖, mean", "identity_distance_max": "‖A‖/‖I‖, largest"}


# ---------------------------------------------------------------------------------------------------------------
# Signatures of a run


def kept_layers(run: RunResults, embedding: str = "out") -> list[int]:
    """The positions of the layers a signature reads under the embedding rule: all, or all but the first."""
    if embedding not in EMBEDDING_RULES:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDING_RULES)}, got {embedding!r}")
    layers = len(run_layers(run))
    return list(range(1 if embedding == "out" else 0, layers))


@contextmanager
def _undefined_is_nan():
    """Undefined signatures come out as NaN (then None): numpy's warnings about empty means and 0 / 0 are silenced."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _interval(samples: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if len(finite) < level * len(samples):  # undefined in too many resamples to say
        return None, None
    tails = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tails, 100 - tails])
    return float(low), float(high)


@dataclass
class RunSignatures:
    """Every signature of one run under one embedding rule: what a row of the control's and the findings' tables
    holds."""

    name: str
    path: str
    embedding: str  # "out" or "in": EMBEDDING_LABELS
    layers: list[str]  # the layers kept, as the run names them
    unit: str
    values: dict[str, Estimate]
    best_translator_layer: str | None  # the layer whose translator is best on every layer (point estimate)
    intervals: str | None  # how the intervals were made, None where the run has none
    caveats: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "embedding": self.embedding,
                "embedding_rule": EMBEDDING_LABELS[self.embedding], "layers": self.layers, "unit": self.unit,
                "best_translator_layer": self.best_translator_layer, "intervals": self.intervals,
                "caveats": list(self.caveats), "signatures": {k: v.to_dict() for k, v in self.values.items()}}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def signatures(run: ResultsLike, embedding: str = "out", resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
               lens: str | Path | None = None) -> RunSignatures:
    """Every signature of ``run`` (:data:`SIGNATURES` and the distance from the identity) under the embedding rule
    ``embedding``, with batch-bootstrap intervals where the run has ``batches.jsonl`` (``resamples``, ``seed``).
    ``lens``: a tuned-lens lens folder (``config.json`` + ``params.pt``) for a tuned-lens eval folder that lacks one
    (see :func:`translator_identity_distances`)."""
    return signature_sets(run, (embedding,), resamples, seed, lens)[0]


def signature_sets(run: ResultsLike, embeddings: Sequence[str] = EMBEDDING_RULES,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                   lens: str | Path | None = None) -> list[RunSignatures]:
    """:func:`signatures` under each rule of ``embeddings``, the run read and resampled once."""
    (run,) = as_results(run)
    for embedding in embeddings:
        kept_layers(run, embedding)  # checks the rule before the work
    point_all = point_means(run)
    resampled = batch_means(run, resamples, seed)
    distances = translator_identity_distances(run, lens)
    names = run.block_names or run_layers(run)
    method = None if resampled is None else (
        f"percentile bootstrap over the {resampled[1]} batches of batches.jsonl ({resamples:,} resamples, "
        f"{BOOTSTRAP_LEVEL:.0%}); the resampling unit is one batch")
    found = []
    for embedding in embeddings:
        keep = kept_layers(run, embedding)
        point = point_all.kept(keep)
        samples = None if resampled is None else resampled[0].kept(keep)
        values: dict[str, Estimate] = {}
        for key, signature in SIGNATURES.items():
            with _undefined_is_nan():
                value = _finite(signature.compute(point)[0])
                low = high = None
                if samples is not None and value is not None:
                    low, high = _interval(signature.compute(samples))
            values[key] = Estimate(value, low, high)
        kept_distances = None if distances is None else distances[keep]
        finite = None if kept_distances is None else kept_distances[np.isfinite(kept_distances)]
        defined = finite is not None and len(finite) > 0
        values["identity_distance_mean"] = Estimate(float(finite.mean()) if defined else None)
        values["identity_distance_max"] = Estimate(float(finite.max()) if defined else None)
        best = best_row_cells(point)[0].any(axis=1)
        found.append(RunSignatures(run.name, str(run.path), embedding, [names[k] for k in keep], reported_unit(run),
                                   values, names[keep[int(np.argmax(best))]] if best.any() else None, method,
                                   run.caveats))
    return found


def signature(run: ResultsLike, key: str, embedding: str = "out", resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0) -> Estimate:
    """One signature of :data:`SIGNATURES` (``"neighbour_forward/own_ce"``, ``"best_translator"``, ...) of ``run``,
    with its interval where the run has ``batches.jsonl``."""
    if key not in SIGNATURES:
        raise ValueError(f"no signature {key!r}; choose one of {', '.join(SIGNATURES)}")
    return signature_sets(run, (embedding,), resamples, seed)[0].values[key]


def shared_lens_gap(run: ResultsLike, normalise: str | None = None, metric: str = "kl",
                    embedding: str = "out") -> Estimate:
    """The whole-network shared lens's gap to the tuned lens, averaged over the layers: KL to the model (bits, the
    default) or CE, raw or (CE) normalised; None where no shared lens was fitted (tuned-lens output)."""
    if metric == "kl":
        if normalise is not None:
            raise ValueError("the normalisations are of cross-entropy: pass metric='ce' with normalise")
        return signature(run, "shared_gap_kl", embedding)
    return signature(run, _suffixed("shared_gap", normalise), embedding)


def best_single_translator(run: ResultsLike, normalise: str | None = None, embedding: str = "out") -> Estimate:
    """The mean penalty of the one translator that does best applied to every layer (the smallest row mean of the
    transfer penalty), raw or normalised: the shared lens's stand-in from any transfer matrix."""
    return signature(run, _suffixed("best_translator", normalise), embedding)


def neighbour_penalty(run: ResultsLike, direction: str = "both", normalise: str | None = None,
                      embedding: str = "out") -> Estimate:
    """The mean penalty between neighbouring layers (d = 1), forward, backward or both, raw or normalised."""
    direction_cells(2, direction, 1)  # checks the direction
    return signature(run, _suffixed(f"neighbour_{direction}", normalise), embedding)


@dataclass
class DirectionalProfile:
    """The mean penalty at each layer distance d = 1 .. L-1, forward and backward apart (NaN where no cell)."""

    distance: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    pairs: np.ndarray  # cells at each distance, per direction
    forward_interval: np.ndarray | None = None  # (2, distances): low, high
    backward_interval: np.ndarray | None = None


def directional_profile(run: ResultsLike, normalise: str | None = None, embedding: str = "out",
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> DirectionalProfile:
    """Penalty by distance, forward (an earlier layer's translator on a later layer) and backward apart, raw or
    normalised (:func:`normalised`), with batch-bootstrap intervals where the run has ``batches.jsonl``."""
    (run,) = as_results(run)
    keep = kept_layers(run, embedding)
    layers = len(keep)
    distances = np.arange(1, layers)
    point = point_means(run).kept(keep)
    resampled = batch_means(run, resamples, seed)
    samples = None if resampled is None else resampled[0].kept(keep)
    profile = DirectionalProfile(distances, np.full(len(distances), np.nan), np.full(len(distances), np.nan),
                                 layers - distances)
    for direction in ("forward", "backward"):
        means, bounds = getattr(profile, direction), np.full((2, len(distances)), np.nan)
        for n, d in enumerate(distances):
            with _undefined_is_nan():
                cells = direction_cells(layers, direction, d)
                means[n] = normalised(point, cells, normalise)[0]
                if samples is not None:
                    low, high = _interval(normalised(samples, cells, normalise))
                    bounds[:, n] = [np.nan if low is None else low, np.nan if high is None else high]
        if samples is not None:
            setattr(profile, f"{direction}_interval", bounds)
    return profile


# ---------------------------------------------------------------------------------------------------------------
# Distance from the identity


def identity_distance(weight, scale=None) -> float:
    """``||A||_F / ||I||_F`` for a translator residual around the identity (``h -> h + A h + b``, as tuned-lens's and
    this package's are), in the raw coordinates it acts on: ``weight`` ``(out, in)`` applied to the inputs divided by
    ``scale`` (``in``; this package's :class:`~vision_lens.lenses.Translator` standardises its inputs), so
    ``A = weight / scale``; ``||I|| = sqrt(out)``, the identity on the space it writes to. 0 for a zero translator."""
    weight = np.asarray(weight, dtype=float)
    if scale is not None:
        weight = weight / np.asarray(scale, dtype=float)[None, :]
    return float(np.linalg.norm(weight) / math.sqrt(weight.shape[0]))


def _lens_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise RunFolderError(f"{path} is not a readable torch file ({exc.__class__.__name__}); fit the lens again"
                             ) from exc
    if not isinstance(state, dict):
        raise RunFolderError(f"{path} holds no state dict of translators")
    return {k: v.double().numpy() for k, v in state.items()}


def translator_identity_distances(run: ResultsLike, lens: str | Path | None = None) -> np.ndarray | None:
    """Each layer's translator's :func:`identity_distance`, NaN where the layer has none to measure: no identity path
    (an Inception block's translator is a plain map into the head's space), or a logit lens that already is the
    model's output (KL below :data:`LOGIT_EXACT_KL` bits: this package's last block, whose translator fits to zero;
    tuned-lens lenses no such layer). None where the parameters are not at hand.

    The parameters: this package's ``lenses/tuned/params.pt`` (translators on the whole-block vectors carried into
    the head's space, standardised); tuned-lens's ``params.pt`` (``h + W h + b`` on the residual stream) in
    ``lens``, or the eval folder's ``lens/`` or itself.
    """
    (run,) = as_results(run)
    keys = run_layers(run)
    folder = Path(run.path)
    ours = folder / "lenses" / "tuned"
    distances = np.full(len(keys), np.nan)
    if run.run and (ours / "params.pt").is_file():
        state = _lens_state(ours / "params.pt")
        config = json.loads((ours / "config.json").read_text())
        strides = config["layout"]["path_stride"]
        for n, key in enumerate(keys):
            k = int(key.split("_")[1])
            if strides[k] is not None and f"{k}.linear.weight" in state:
                distances[n] = identity_distance(state[f"{k}.linear.weight"], state.get(f"{k}.scale"))
    else:
        candidates = [Path(lens)] if lens is not None else [folder / "lens", folder]
        found = next((c for c in candidates if (c / "params.pt").is_file()), None)
        if found is None:
            if lens is not None:
                raise FileNotFoundError(f"--lens {lens} holds no params.pt; pass the folder `tuned-lens train "
                                        "--output` wrote")
            return None
        state = _lens_state(found / "params.pt")
        for n, key in enumerate(keys):
            weight = state.get(f"{int(key.split('_')[1])}.weight")
            if weight is not None:
                distances[n] = identity_distance(weight)
    logit_kl = _values(run.aggregate.get("logit", {}).get("kl"), keys)
    if logit_kl is not None:
        distances[np.isfinite(logit_kl) & (logit_kl < LOGIT_EXACT_KL)] = np.nan
    return distances
