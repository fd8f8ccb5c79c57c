"""Result files: plain JSON and CSV a person can open, readable back by the plotting tools.

A run folder holds::

    aggregate_metrics.json   nested as tuned-lens eval writes it (see vision_lens.metrics)
    aggregate_metrics_ci.json  its 95 % bootstrap intervals, [low, high] leaves (when evaluated with intervals)
    batches.jsonl            per-batch means, one JSON list as tuned-lens writes it
    layers.json              {"layer_k": block name}
    metrics.csv              one row per (lens, layer, metric)
    run.json                 settings and provenance
    lenses/<type>/           config.json + params.pt per fitted lens
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

INTERVALS_FILE = "aggregate_metrics_ci.json"
RESULT_FILES = ("aggregate_metrics.json", "batches.jsonl", "layers.json", "metrics.csv", "run.json")


class OutputExistsError(FileExistsError):
    pass


def prepare_output(out: str | Path, overwrite: bool) -> Path:
    """Create ``out``; refuse to write into a non-empty folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"--out {out} already exists and is not empty; pass --overwrite to replace it, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def layer_keys(keys) -> list[str]:
    """``layer_k`` keys in block order (``layer_10`` after ``layer_9``)."""
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def _dump(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def tidy_rows(aggregate: dict, layers: dict[str, str]) -> list[dict]:
    """One row per (lens, layer, metric); baseline rows have layer 'final'."""
    rows = []
    for lens_type, metrics in aggregate.items():
        for metric, by_layer in metrics.items():
            if metric == "layer_transfer":
                continue
            for layer, value in by_layer.items():
                rows.append({
                    "lens": lens_type,
                    "layer": layer,
                    "block": layers.get(layer, layer),
                    "metric": metric,
                    "value": "" if value is None else value,
                })
    return rows


def write_results(
    out: Path, aggregate: dict, batches: list[dict], layers: dict[str, str], run: dict, intervals: dict | None = None
) -> None:
    _dump(out / "aggregate_metrics.json", aggregate)
    if intervals is not None:
        _dump(out / INTERVALS_FILE, intervals)
    with open(out / "batches.jsonl", "w") as f:
        json.dump(batches, f)
        f.write("\n")
    _dump(out / "layers.json", layers)
    _dump(out / "run.json", run)
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["lens", "layer", "block", "metric", "value"])
        writer.writeheader()
        writer.writerows(tidy_rows(aggregate, layers))


@dataclass
class RunResults:
    """A run folder read back: what the plotting and report helpers take."""

    path: Path
    name: str
    aggregate: dict
    layers: dict[str, str]
    run: dict
    intervals: dict | None = None  # aggregate_metrics_ci.json; None where absent (e.g. tuned-lens output)

    @property
    def block_names(self) -> list[str]:
        return [self.layers[k] for k in layer_keys(self.layers)]


def load_results(path: str | Path) -> RunResults:
    """A run folder, or a bare ``aggregate_metrics.json`` (e.g. from ``tuned-lens eval``) named after its folder."""
    path = Path(path)
    if path.is_file():
        return RunResults(path.parent, path.parent.name, json.loads(path.read_text()), {}, {})
    agg = path / "aggregate_metrics.json"
    if not agg.is_file():
        raise FileNotFoundError(f"{path} holds no aggregate_metrics.json; pass a folder written by `vision-lens run`")
    layers_path, run_path = path / "layers.json", path / "run.json"
    aggregate = json.loads(agg.read_text())
    layers = json.loads(layers_path.read_text()) if layers_path.is_file() else {}
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    intervals = json.loads((path / INTERVALS_FILE).read_text()) if (path / INTERVALS_FILE).is_file() else None
    return RunResults(path, run.get("model", path.name), aggregate, layers, run, intervals)
