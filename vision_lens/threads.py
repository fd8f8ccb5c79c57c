"""Compute threads: a run never starts more of them than the cores it may use.

torch's default thread count can exceed the cores a process is allowed on (a
container's affinity mask, a shared machine), and oversubscribed OpenMP threads
spin against each other. DataLoader workers need nothing from us: torch's worker
loop already sets one thread per worker process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def limit_torch_threads(most: int | None = None) -> int:
    """Cap torch's intra-op threads at the usable cores (and at ``most``); a lower setting
    (``OMP_NUM_THREADS``, ``torch.set_num_threads``) is kept. Returns the thread count."""
    import torch

    threads = min(torch.get_num_threads(), usable_cores(), most or torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


@contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
