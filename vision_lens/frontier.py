"""``vision-lens frontier``: the transfer penalty across the whole range of regularisation, not at one fit.

A run's lenses fitted to the model's output (tuned and shared; every such kind the run fitted, as the
lens-kind registry declares them) are refitted from its feature cache, as its run.json records the run
(the cache folder too), at a common
sweep of L2 strengths, the same strength for every block (``FRONTIER_STRENGTHS``:
1e-6 ... 1 in half-decades), each a direct fit at that strength (``fit_lens`` with
``weight_decay`` fixed), and evaluated on the run's eval images. Per strength
``frontier.json`` beside the run holds the mean own CE (each translator on its own
block), the mean transfer penalty between neighbouring blocks within a stage and
across stages, the penalty by block distance, and the shared lens's gap (its CE
minus the tuned lens's, averaged over blocks). A strong penalty keeps every
translator near the logit lens, and a weak one fits each block best: the
penalty against own CE along the sweep is the frontier that one chosen fit sits
on (``plotting.penalty_frontier`` draws it).

Resumable: each strength's point is written to ``frontier.partial.json`` in the run folder as it is done, with the
sha256 of the run's run.json; a rerun on the same run reuses the points of the strengths it asks for again and
refits only the rest. The last write removes the file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import torch

from .analysis import summarise_transfer
from .artifacts import (FRONTIER_FILE, FRONTIER_PARTIAL, RunFolderError, RunResults, add_to_manifest, holding_lock,
                        load_results, require_complete, writing_into)
from .files import write_text_atomic
from .fit import FitSettings, fit_lens
from .lens_kinds import kind_names, lens_kind
from .lenses import build_lenses
from .metrics import evaluate_lenses
from .options import RunOptions, default_cache_dir
from .pipeline import capture_split, load_model, preflight
from .readout import FeatureLayout

RUN_FOLDER = "run folder"  # how the messages name the folder frontier adds to
FRONTIER_STRENGTHS = tuple(float(f"{10 ** (e / 2):.3g}") for e in range(-12, 1))  # 1e-6, 3.16e-6, ..., 1


def run_options(run_dir: Path, **overrides) -> RunOptions:
    """The options a run was made with (its run.json), as RunOptions; ``overrides`` replace some. A run that did not
    record its feature cache (written before run.json held it) gets the default one."""
    recorded = load_results(run_dir).run.get("options", {})
    known = {f.name for f in fields(RunOptions)}
    defaults = {"cache_dir": default_cache_dir()}
    return RunOptions(**(defaults | {k: v for k, v in recorded.items() if k in known} | {"out": str(run_dir)}
                         | overrides))


def frontier(run_dir: str | Path, strengths: Sequence[float] = FRONTIER_STRENGTHS, **overrides) -> Path:
    """Refit ``run_dir``'s lenses fitted to the model's output at every strength, evaluate them, write
    ``frontier.json``.

    The run folder's writer lock is held from before the first check to the last write, as a run holds its --out:
    no other process writes the folder, nor removes it with ``--overwrite``, while it is refitted.
    """
    run_dir = Path(run_dir)
    load_results(run_dir)  # a run folder (else an error naming it), before a lock file is created in it
    with holding_lock(run_dir, RUN_FOLDER):
        result = sweep(run_dir, strengths, **overrides)  # reads the run again, now that no other process writes it
        out = run_dir / FRONTIER_FILE
        with writing_into(run_dir, RUN_FOLDER, kept=KEPT):
            add_to_manifest(run_dir, FRONTIER_FILE)  # first: a frontier.json it does not list would block --overwrite
            write_text_atomic(out, json.dumps(result, indent=1, allow_nan=False) + "\n")
            (run_dir / FRONTIER_PARTIAL).unlink(missing_ok=True)
    return out


KEPT = ("the run's own files are as they were, and the strengths already done are kept. Free space there and rerun "
        "the same command")


def finished_points(run_dir: Path, run_id: str, strengths: Sequence[float]) -> dict[float, dict]:
    """The points of ``strengths`` that an earlier, interrupted sweep of this run (``run_id``) finished."""
    partial = run_dir / FRONTIER_PARTIAL
    try:
        saved = json.loads(partial.read_text())
        if saved["run_id"] != run_id:
            return {}  # the run was redone since: its points are not this run's
        return {p["weight_decay"]: p for p in saved["points"] if p["weight_decay"] in strengths}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: refitted, and rewritten as points finish
        print(f"[vision-lens] frontier: {partial} is unreadable ({exc}); refitting every strength", file=sys.stderr)
        return {}


def sweep(run_dir: Path, strengths: Sequence[float], **overrides) -> dict:
    """What ``frontier.json`` holds: the sweep of refits of the complete run ``run_dir``, evaluated."""
    require_complete(run_dir)
    base = load_results(run_dir)
    if base.run.get("model") is None:
        raise RunFolderError(f"{run_dir} has no run.json of `vision-lens run`; the frontier refits a run of ours")
    adapter, opts = load_model(run_options(run_dir, **overrides))
    layout = FeatureLayout.of(adapter.blocks, opts.pool_grid)
    plans = preflight(opts, adapter, (opts.fit_split, opts.eval_split), layout)
    fit = capture_split(adapter, opts, plans[opts.fit_split], layout)
    held_out = capture_split(adapter, opts, plans[opts.eval_split], layout)
    target = fit.logits if opts.loss == "kl" else None
    refitted = [name for name in kind_names(base.run.get("fit")) if lens_kind(name).fitted_to == "output"]
    stages = [b.stage for b in adapter.blocks]
    layers = {f"layer_{k}": b.name for k, b in enumerate(adapter.blocks)}
    run_id = hashlib.sha256((run_dir / "run.json").read_bytes()).hexdigest()
    done = finished_points(run_dir, run_id, strengths)
    if done:
        print(f"[vision-lens] frontier: resuming; {len(done)} of the {len(strengths)} strengths are done "
              f"({run_dir / FRONTIER_PARTIAL})", file=sys.stderr)
    points, finished = [], dict(done)
    for strength in strengths:
        if strength in done:
            points.append(done[strength])
            continue
        print(f"[vision-lens] frontier: weight decay {strength:g}", file=sys.stderr)
        lenses = build_lenses(adapter, layout, refitted)
        settings = FitSettings(opts.max_iter, strength, seed=opts.seed)
        for lens_type, lens in lenses.items():
            fit_lens(lens, fit.features, fit.labels, target, settings, desc=f"fit {lens_type} at {strength:g}")
        with torch.no_grad():
            aggregate, _ = evaluate_lenses(lenses, held_out.features, held_out.logits, held_out.labels,
                                           transfer=tuple(name for name in lenses if lens_kind(name).transfers))
        point = RunResults(run_dir, base.name, aggregate, layers, {"block_stages": stages})
        points.append({"weight_decay": strength} | summarise_transfer(point))
        finished[strength] = points[-1]
        with writing_into(run_dir, RUN_FOLDER, kept=KEPT):
            write_text_atomic(run_dir / FRONTIER_PARTIAL, json.dumps(
                {"run_id": run_id, "points": list(finished.values())}, indent=1, allow_nan=False) + "\n")
    return {
        "model": base.name, "run": str(run_dir), "loss": opts.loss, "fit_images": len(fit.labels),
        "eval_images": len(held_out.labels), "max_iter": opts.max_iter, "strengths": list(strengths),
        "points": points, "run_fit": summarise_transfer(base),
        "command": f"vision-lens frontier {run_dir}" + ("" if tuple(strengths) == FRONTIER_STRENGTHS else
                                                          " --strengths " + " ".join(f"{s:g}" for s in strengths)),
    }
