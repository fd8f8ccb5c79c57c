#!/usr/bin/env python
"""``vision-lens`` with every stage of the pipeline timed, in a fresh interpreter; prints one line of JSON.
(Also the stopwatch and the memory gauge of the benchmark scripts.)

    python scripts/timed_run.py run --model cifar:resnet20 --data DATA --out OUT ...

runs the command line exactly as ``vision-lens`` would (``vision_lens.cli.main``), after timing
its imports: ``import_torch_torchvision`` (what a plain forward pass needs too), then
``import_vision_lens`` (the package's command line and pipeline, beyond torch). The pipeline
reports each of its stages as it starts and ends (``on_stage``, see ``vision_lens.pipeline``;
its ``STAGES``: ``load_model``, ``preflight``, ``prepare_output``, ``capture_fit`` and
``capture_eval`` (capture into a fresh or resumed cache, and loading it), ``fit_lens`` and
``fit_by_recipe`` (the lens fits), ``save_lenses``, ``evaluate_lenses`` (metrics and bootstrap
intervals), ``write_results``, ``save_run_figures`` and ``write_report``); :class:`StageTimer`
keeps each stage's time, exclusive of the stages it holds. ``main`` is the rest of the command:
option parsing and what the pipeline does between stages. ``total_s`` runs from the first import
to the end of ``main`` and is the sum of the stages. The interpreter's own start and exit are
outside it: a caller that times the whole process (``scripts/benchmark_pipeline.py``) sees them.

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


class StageTimer:
    """The pipeline's ``on_stage`` observer: per stage, its seconds exclusive of the stages it holds, and its
    number of calls (``seconds`` and ``calls``, by stage name)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._open: list[list] = []  # per stage under way: its name, its start, the time of the stages inside it

    def __call__(self, stage: str, starting: bool) -> None:
        synchronize()
        now = clock()
        if starting:
            self._open.append([stage, now, 0.0])
            return
        name, start, inner = self._open.pop()
        if name != stage:
            raise RuntimeError(f"stage {stage!r} ended while {name!r} was under way")
        elapsed = now - start
        if self._open:
            self._open[-1][2] += elapsed
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
        self.calls[stage] = self.calls.get(stage, 0) + 1


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
            from vision_lens import cli
        imports["import_vision_lens"] = elapsed["s"]
        timer = StageTimer()
        with stopwatch() as command:
            code = cli.main(argv, on_stage=timer)
    main = {"main": command["s"] - sum(timer.seconds.values())}
    return {"exit": code, "total_s": total["s"], "command_s": command["s"], "stages": imports | timer.seconds | main,
            "calls": timer.calls | {name: 1 for name in (*imports, "main")}}


if __name__ == "__main__":
    result = timed_run(sys.argv[1:])
    print(json.dumps(result))
    sys.exit(result["exit"])
