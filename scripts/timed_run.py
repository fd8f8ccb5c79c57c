#!/usr/bin/env python
"""``vision-lens`` with every stage of ``pipeline.run`` timed, in a fresh interpreter; prints one line of JSON.
(Also the stopwatch and the memory gauge of the benchmark scripts.)

    python scripts/timed_run.py run --model cifar:resnet20 --data DATA --out OUT ...

runs the command line exactly as ``vision-lens`` would (``vision_lens.cli.main``), after timing
its imports: ``import_torch_torchvision`` (what a plain forward pass needs too), then
``import_vision_lens`` (the package's command line and pipeline, beyond torch). Every stage is
the time measured inside one function of ``vision_lens.pipeline`` (or ``cli.main``), exclusive
of the stages it calls: ``capture_fit`` and ``capture_eval`` (``capture_split`` of each split:
capture into a fresh or resumed cache, and loading it), ``fit_lens`` and ``fit_by_recipe`` (the
lens fits), ``train`` (the rest of it: building, checking and saving the lenses),
``evaluate_lenses`` (metrics and bootstrap intervals), ``write_results``, ``save_run_figures``,
``write_report``, ``evaluate`` (the rest of it), ``preflight``, ``load_model``,
``_prepare_output``, ``run`` and ``main`` (option parsing and what they do between stages).
``total_s`` runs from the first import to the end of ``main``; what no stage holds of it is
``total_s`` minus their sum. The interpreter's own start and exit are outside ``total_s``: a
caller that times the whole process (``scripts/benchmark_pipeline.py``) sees them.

Only the standard library is imported here before the timed imports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

clock = time.perf_counter  # the stopwatches' clock (a test gives them one of its own)

# The functions of vision_lens.pipeline that are timed; run() and the stages reach them through the module.
PIPELINE_STAGES = ("run", "_prepare_output", "load_model", "preflight", "capture_split", "train", "fit_lens",
                   "fit_by_recipe", "evaluate", "evaluate_lenses", "write_results", "save_run_figures",
                   "write_report")


def synchronize() -> None:
    """Wait for the GPU, if torch is imported and has one, so that a stage holds the work it queued."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def stopwatch():
    """Yields a dict whose ``"s"`` holds the elapsed seconds once the block is left."""
    synchronize()
    elapsed = {"s": None}
    start = clock()
    try:
        yield elapsed
    finally:
        synchronize()
        elapsed["s"] = clock() - start


@contextmanager
def timed_stages(targets: list[tuple[object, tuple[str, ...]]], fit_split: str | None = None):
    """Wrap the functions ``names`` of each ``(module, names)`` of ``targets``; yields ``(seconds, calls,
    results)``: per stage its exclusive seconds (the time of the stages it calls is theirs) and its number of
    calls, and ``capture_split``'s results by stage.

    ``capture_split`` counts as ``capture_fit`` when its split is ``fit_split``, else as ``capture_eval``.
    """
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    results: dict[str, object] = {}
    originals = {(module, name): getattr(module, name) for module, names in targets for name in names}
    nested: list[float] = []  # per active wrapped call, the time spent in wrapped calls inside it

    def wrapped(name, fn):
        def call(*args, **kwargs):
            stage = name
            if name == "capture_split":
                split = args[2] if len(args) > 2 else kwargs["split"]
                stage = "capture_fit" if split == fit_split else "capture_eval"
            nested.append(0.0)
            try:
                with stopwatch() as elapsed:
                    result = fn(*args, **kwargs)
            finally:
                inner = nested.pop()
                if nested:
                    nested[-1] += elapsed["s"]
                seconds[stage] = seconds.get(stage, 0.0) + elapsed["s"] - inner
                calls[stage] = calls.get(stage, 0) + 1
            if name == "capture_split":
                results[stage] = result
            return result

        return call

    for (module, name), fn in originals.items():
        setattr(module, name, wrapped(name, fn))
    try:
        yield seconds, calls, results
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)


def _glibc():
    """glibc, for ``malloc_trim``; None on other C libraries."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def rss_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def max_rss_mb() -> float:
    """getrusage's peak resident memory of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


@contextmanager
def peak_memory():
    """Yields a dict whose ``"mb"`` holds, once the block is left, the peak resident memory of this process
    during the block above its memory at the start, in MiB (Linux: the peak is reset at the start by
    ``5 > /proc/self/clear_refs``); None where the OS does not say.

    Memory freed before the block is first handed back to the OS (glibc's ``malloc_trim``): otherwise the block
    reuses pages still resident from earlier work and its own peak reads as zero."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    before = rss_mb("VmRSS")
    if before is not None:
        Path("/proc/self/clear_refs").write_text("5")
    gauge = {"mb": None}
    try:
        yield gauge
    finally:
        peak = rss_mb("VmHWM")
        gauge["mb"] = None if peak is None or before is None else peak - before


def option(argv: list[str], flag: str, default: str) -> str:
    """The value of ``flag`` in a command line, or ``default``."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def timed_run(argv: list[str]) -> dict:
    """Import torch and torchvision, then the package, then run ``vision_lens.cli.main(argv)`` with every stage
    timed; returns ``{"exit", "total_s", "command_s", "stages": {stage: s}, "calls": {stage: n}}``, ``command_s`` the
    time in ``cli.main`` (see the module docstring)."""
    imports = {}
    with stopwatch() as total:
        with stopwatch() as elapsed:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        imports["import_torch_torchvision"] = elapsed["s"]
        with stopwatch() as elapsed:
            from vision_lens import cli, pipeline
        imports["import_vision_lens"] = elapsed["s"]
        targets = [(pipeline, PIPELINE_STAGES), (cli, ("main",))]
        with timed_stages(targets, option(argv, "--fit-split", "train")) as (seconds, calls, _), stopwatch() as command:
            code = cli.main(argv)
    return {"exit": code, "total_s": total["s"], "command_s": command["s"], "stages": imports | seconds,
            "calls": calls | {name: 1 for name in imports}}


if __name__ == "__main__":
    result = timed_run(sys.argv[1:])
    print(json.dumps(result))
    sys.exit(result["exit"])
