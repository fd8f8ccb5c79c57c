"""The pipeline on the real CIFAR-10 checkpoints and images of ../shared (bounded image counts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vision_lens.adapters import create_adapter

from .conftest import RESNET_WEIGHTS

pytestmark = [pytest.mark.shared, pytest.mark.integration]


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet44"])
def test_published_checkpoints_load_strictly(arch):
    (path,) = RESNET_WEIGHTS.glob(f"{arch}-*.th")
    adapter = create_adapter(f"cifar:{arch}", weights=str(path))
    n = (int(arch[6:]) - 2) // 6
    assert [b.name for b in adapter.blocks] == ["stem"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(n)]
    assert adapter.weights_id.startswith(path.name.split("-")[1].split(".")[0])  # the file name carries its sha256


def test_resnet20_on_the_full_test_split(resnet20_run):
    """Acceptance: baseline accuracy 0.9173 on all 10,000 test PNGs; lenses rise from about chance to the model."""
    out = resnet20_run
    agg = json.loads((out / "aggregate_metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["eval_images"] == 10000
    assert agg["baseline"]["acc"]["final"] == pytest.approx(0.9173, abs=1e-12)
    last = f"layer_{len(run['blocks']) - 1}"
    assert agg["tuned"]["agree"][last] >= 0.99
    assert agg["logit"]["agree"][last] == 1.0
    acc = np.array(list(agg["tuned"]["acc"].values()))
    assert agg["logit"]["acc"]["layer_0"] < 0.2  # about chance (0.1) at the stem
    assert acc[0] < 0.4 and abs(acc[-1] - 0.9173) < 0.01
    assert np.all(np.diff(acc) > -0.02), acc  # rises with depth
    # One translator for all blocks decodes the last block worse than its own, on held-out images too.
    assert agg["shared"]["ce"][last] >= agg["tuned"]["ce"][last]
    # A translator on its own block is the tuned lens: the transfer CE's diagonal is the lens's CE.
    transfer_ce = agg["tuned"]["layer_transfer"]["ce"]
    assert all(transfer_ce[f"layer_{k}"][f"layer_{k}"] == pytest.approx(agg["tuned"]["ce"][f"layer_{k}"], rel=1e-5)
               for k in range(len(acc)))
