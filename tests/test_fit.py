"""Fitting: the L2 penalty chosen on held-out fit images, and what is recorded about it."""

from __future__ import annotations

import torch

from vision_lens.fit import PENALTY_GRID, FitSettings, fit_lens, validation_split
from vision_lens.lenses import LensConfig, LinearProbe
from vision_lens.readout import FeatureLayout


def probe_for(channels: int, classes: int) -> LinearProbe:
    layout = FeatureLayout(("block",), (channels,), (None,), 1)
    return LinearProbe(LensConfig("synthetic", "", layout.to_dict(), channels, classes, "linear_probe"))


def test_penalty_is_weak_for_a_well_posed_problem_and_strong_for_noise():
    gen = torch.Generator().manual_seed(0)
    # Well posed: many images, few features, labels drawn from a linear softmax model.
    x = torch.randn(3000, 5, generator=gen)
    y = torch.multinomial((x @ torch.randn(5, 3, generator=gen) * 3).softmax(-1), 1, generator=gen)[:, 0]
    (record,) = fit_lens(probe_for(5, 3), [x], y, settings=FitSettings())
    assert record["weight_decay"] <= 1e-5, record
    # Noise: few images, many features, labels unrelated to them: only a strong penalty generalises.
    x = torch.randn(80, 200, generator=gen)
    y = torch.randint(0, 3, (80,), generator=gen)
    (record,) = fit_lens(probe_for(200, 3), [x], y, settings=FitSettings())
    assert record["weight_decay"] == max(PENALTY_GRID), record
    assert set(record["validation_loss_nats"]) == {repr(wd) for wd in PENALTY_GRID}


def test_a_fixed_penalty_skips_the_search_and_is_recorded():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    (record,) = fit_lens(probe_for(4, 2), [x], y, settings=FitSettings(weight_decay=1e-3))
    assert record["weight_decay"] == 1e-3 and "validation_loss_nats" not in record
    assert record["iterations"] > 0 and record["loss_nats"] < 0.3


def test_validation_split_is_seeded_disjoint_and_complete():
    fit, val = validation_split(100, 0.2, seed=3)
    assert len(val) == 20 and len(fit) == 80
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(100))
    again, _ = validation_split(100, 0.2, seed=3)
    assert torch.equal(fit, again)


def test_translators_that_transfer_share_one_standardisation():
    """A translator applied to another block's features meets them in the coordinates it was fitted in."""
    from vision_lens.adapters import create_adapter
    from vision_lens.lenses import build_lenses

    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    layout = FeatureLayout.of(adapter.blocks, 1)
    gen = torch.Generator().manual_seed(0)
    features = [torch.rand(64, layout.width(k), generator=gen) * (k + 1) for k in range(len(adapter.blocks))]
    final = torch.randn(64, 10, generator=gen)
    lenses = build_lenses(adapter, layout, ["tuned", "linear_probe"])
    fit_lens(lenses["tuned"], features, final.argmax(-1), final, FitSettings(max_iter=5))
    fit_lens(lenses["linear_probe"], features, final.argmax(-1), settings=FitSettings(max_iter=5))
    tuned = lenses["tuned"].params
    assert all(torch.equal(t.mean, tuned[0].mean) and torch.equal(t.scale, tuned[0].scale) for t in tuned)
    probe = lenses["linear_probe"].params  # never transferred: each block standardised on its own
    assert not torch.allclose(probe[0].mean, probe[1].mean[: probe[0].mean.numel()])
