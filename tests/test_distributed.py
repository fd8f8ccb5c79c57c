"""``torchrun --nproc_per_node=2 -m vision_lens run``: two Gloo processes on CPU give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vision_lens.cli import main

pytestmark = pytest.mark.integration


def numbers(tree, path=()):
    """Every number in a nested JSON tree, by its path (None kept, so a null must stay null)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, (*path, key))
    else:
        yield path, tree


def test_two_processes_match_one(tmp_path, tiny_data):
    args = ["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--workers", "0",
            "--max-iter", "30", "--batch-size", "8", "--weight-decay", "1e-3"]  # one fit per lens: capture is tested
    env = {**os.environ, "VISION_LENS_CACHE": str(tmp_path / "cache-2")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vision_lens", *args, "--out", str(tmp_path / "two")]
    # The time limit guards against a hang (e.g. a rank that never joins), generous for a shared, busy machine.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache-1")]) == 0

    one = dict(numbers(json.loads((tmp_path / "one" / "aggregate_metrics.json").read_text())))
    two = dict(numbers(json.loads((tmp_path / "two" / "aggregate_metrics.json").read_text())))
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert (value is None) == (two[key] is None), key
        if value is not None:
            assert two[key] == pytest.approx(value, abs=1e-5), key

    # Each image landed exactly once: per split, two disjoint shards that, in order, are the whole split.
    def caches(root: Path) -> dict[int, list[Path]]:
        by_rows: dict[int, list[Path]] = {}
        for manifest in (root / "features").glob("*/manifest.json"):
            by_rows.setdefault(json.loads(manifest.read_text())["shapes"]["labels"][0], []).append(manifest.parent)
        return by_rows

    sharded, whole = caches(tmp_path / "cache-2"), caches(tmp_path / "cache-1")
    assert {n: len(d) for n, d in sharded.items()} == {20: 2, 10: 2} and sorted(whole) == [20, 40]
    for n_total in (40, 20):
        # Images are in class order, so the first shard is the one whose first label is lower.
        shards = sorted(sharded[n_total // 2], key=lambda d: np.load(d / "labels.npy")[0])
        (single,) = whole[n_total]
        for name in ("labels.npy", "logits.npy", "block_0.npy"):
            joined = np.concatenate([np.load(d / name) for d in shards])
            np.testing.assert_allclose(joined, np.load(single / name), atol=1e-5, err_msg=name)
