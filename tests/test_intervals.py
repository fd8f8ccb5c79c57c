"""Bootstrap intervals and the within/across-stage split of transfer penalties, on synthetic numbers (no ../shared)."""

from __future__ import annotations

import json

import pytest
import numpy as np
import torch
from torch import nn

from vision_lens import analysis
from vision_lens.artifacts import RunResults, load_results, write_results
from vision_lens.metrics import bootstrap_intervals, evaluate_lenses, mean_by_distance, pair_groups

from .conftest import RESNET20_BLOCKS, RESNET20_STAGES

pytestmark = pytest.mark.unit


def test_intervals_cover_the_true_mean_at_their_nominal_rate():
    """1,000 synthetic data sets each of Bernoulli and normal per-image values: about 95 % of the 95 % intervals
    hold the mean, and about 90 % of the 90 % intervals. Each window is 2 to 3 binomial standard errors wide and
    leaves out the other level, so an interval of the wrong width fails."""
    rng = np.random.default_rng(0)
    images, datasets = 150, 1000
    p, mu = 0.3, 2.0
    per_image = {"tuned": {
        "acc": (rng.random((images, datasets)) < p).astype(np.float32),
        "ce": rng.normal(mu, 1.5, (images, datasets)).astype(np.float32),
    }}
    for level, window in ((0.95, (0.93, 0.97)), (0.90, (0.875, 0.925))):
        intervals = bootstrap_intervals(per_image, resamples=1000, seed=1, level=level)
        for metric, truth in (("acc", p), ("ce", mu)):
            bounds = np.array([intervals["tuned"][metric][f"layer_{k}"] for k in range(datasets)])
            covered = np.mean((bounds[:, 0] <= truth) & (truth <= bounds[:, 1]))
            assert window[0] <= covered <= window[1], (level, metric, covered)


def test_intervals_are_seeded_skip_nan_images_and_null_undefined_blocks():
    rng = np.random.default_rng(0)
    ce = rng.normal(1, 1, (100, 3)).astype(np.float32)
    ce[:10, 0] = np.nan  # unlabelled images: left out of that mean
    ce[:, 2] = np.nan  # an undefined block
    per_image = {"tuned": {"ce": ce}, "baseline": {"acc": np.ones(100, np.float32)}}
    first, again = bootstrap_intervals(per_image, 200, seed=3), bootstrap_intervals(per_image, 200, seed=3)
    assert first == again and first != bootstrap_intervals(per_image, 200, seed=4)
    low, high = first["tuned"]["ce"]["layer_0"]
    assert low < np.nanmean(ce[:, 0]) < high
    assert first["tuned"]["ce"]["layer_2"] is None
    assert first["baseline"]["acc"] == {"final": [1.0, 1.0]}


def test_penalty_intervals_keep_the_pairing_of_images():
    """ce[i][j] shares a large per-image difficulty across cells: the penalty (a paired difference) is tight."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(3, 2, (400, 1, 1))
    shift = np.array([[0.0, 1.0], [0.5, 0.0]])
    ce = (difficulty + shift + rng.normal(0, 0.05, (400, 2, 2))).astype(np.float32)
    intervals = bootstrap_intervals({"tuned": {"layer_transfer": {"ce": ce}}}, 500, seed=0)
    transfer = intervals["tuned"]["layer_transfer"]
    ce_low, ce_high = transfer["ce"]["layer_0"]["layer_1"]
    low, high = transfer["penalty"]["layer_0"]["layer_1"]
    observed = ce.astype(float).mean(0)
    assert low < observed[0, 1] - observed[1, 1] < high and high - low < 0.1 * (ce_high - ce_low)
    assert transfer["penalty"]["layer_1"]["layer_1"] == [0.0, 0.0]
    assert set(transfer["penalty_by_distance"]) == {"all"}  # no block names, no stages
    low, high = transfer["penalty_by_distance"]["all"]["1"]
    assert low < (observed[0, 1] + observed[1, 0]) / 2 - np.diag(observed).mean() < high


def test_resnet20_stages_split_the_pairs():
    groups = pair_groups(RESNET20_STAGES)
    within, across = groups["within_stage"], groups["across_stage"]
    assert within.sum() == 3 * 3 * 2  # three stages of three blocks, ordered pairs i != j
    assert across.sum() == 10 * 10 - 10 - 18 and not (within & across).any()
    assert not within[0].any()  # stem is a stage of its own
    assert within[1, 3] and within[4, 6] and not within[3, 4] and not within[6, 7]
    ones = np.ones((10, 10))
    assert list(mean_by_distance(ones, within)[1]) == [0, 12, 6] + [0] * 7
    assert list(mean_by_distance(ones, across)[1]) == [0, 6, 10, 14, 12, 10, 8, 6, 4, 2]  # 2 (10 - d) cells, less those within


def resnet20_like_run(intervals: dict | None = None) -> RunResults:
    """A run whose penalty[i][j] = |i - j| within a stage and 10 |i - j| across stages; cell (3, 9) undefined."""
    groups = pair_groups(RESNET20_STAGES)
    rows, cols = np.indices((10, 10))
    penalty = np.abs(rows - cols) * np.where(groups["across_stage"], 10.0, 1.0)
    table = {f"layer_{i}": {f"layer_{j}": None if (i, j) == (3, 9) else penalty[i, j] for j in range(10)}
             for i in range(10)}
    ce = {i: {j: None if v is None else v + 1.0 for j, v in row.items()} for i, row in table.items()}
    aggregate = {"tuned": {"layer_transfer": {"ce": ce, "penalty": table}}}
    layers = {f"layer_{k}": name for k, name in enumerate(RESNET20_BLOCKS)}
    return RunResults(None, "resnet20-like", aggregate, layers, {"model": "x"}, intervals)


def test_penalty_profiles_within_and_across_stage():
    profiles = analysis.penalty_profiles(resnet20_like_run())
    within, across, every = profiles["within_stage"], profiles["across_stage"], profiles["all"]
    assert np.allclose(within.mean[1:3], [1, 2]) and np.isnan(within.mean[[0, *range(3, 10)]]).all()
    assert list(within.pairs[:3]) == [0, 12, 6]
    assert np.allclose(across.mean[1:], 10 * np.arange(1, 10)) and np.isnan(across.mean[0])
    assert list(across.pairs) == [0, 6, 10, 14, 12, 10, 7, 6, 4, 2]  # (3, 9) is undefined: left out
    assert every.mean[0] == 0 and every.pairs[0] == 10 and every.low is None
    relative = analysis.penalty_profiles(resnet20_like_run(), relative=True)["within_stage"]
    assert np.allclose(relative.distance, np.arange(10) / 9)


def test_penalty_profiles_over_some_blocks():
    """``blocks`` keeps the pairs among those blocks, with their stages and their own CE as the normaliser."""
    run = resnet20_like_run()
    kept = analysis.penalty_profiles(run, blocks=range(4, 10))  # layer2.0 .. layer3.2
    assert list(kept["within_stage"].pairs[:3]) == [0, 8, 4] and np.allclose(kept["within_stage"].mean[1:3], [1, 2])
    assert list(kept["across_stage"].pairs) == [0, 2, 4, 6, 4, 2]
    assert analysis.mean_diagonal_ce(run, blocks=range(4, 10)) == 1.0  # ce = penalty + 1 on the diagonal
    normalised = analysis.penalty_profiles(run, normalise=True, blocks=range(4, 10))["within_stage"]
    assert np.allclose(normalised.mean[1:3], [1, 2]) and normalised.low is None
    with pytest.raises(ValueError, match="consecutive"):
        analysis.penalty_profiles(run, blocks=[1, 3])


def test_penalty_profiles_read_the_bootstrap_intervals_and_stage_boundaries():
    saved = {"tuned": {"layer_transfer": {"penalty_by_distance": {
        "within_stage": {str(d): [d - 0.5, d + 0.5] if d in (1, 2) else None for d in range(10)},
    }}}}
    profiles = analysis.penalty_profiles(resnet20_like_run(saved))
    within = profiles["within_stage"]
    assert np.allclose(within.low[1:3], [0.5, 1.5]) and np.isnan(within.high[0])
    assert profiles["across_stage"].low is None
    assert analysis.penalty_profiles(resnet20_like_run(saved), normalise=True)["within_stage"].low is None
    every = analysis.penalty_profiles(resnet20_like_run(saved), blocks=range(10))["within_stage"]  # as if none given
    assert np.allclose(every.low[1:3], [0.5, 1.5]) and np.array_equal(every.pairs, within.pairs)
    assert analysis.stage_boundaries(resnet20_like_run()) == [1, 4, 7]


class ScaledLens(nn.Module):
    """A stand-in lens with transfers: block j's features times translator i's scale."""

    def __init__(self, blocks: int):
        super().__init__()
        self.scale = torch.linspace(0.5, 2.0, blocks)

    def forward(self, features, j):
        return features * self.scale[j]

    def transfer(self, features, j, i):
        return features * self.scale[i]


def test_evaluate_lenses_returns_intervals_beside_the_aggregate(tmp_path):
    torch.manual_seed(0)
    blocks, images = 4, 300
    labels = torch.randint(0, 5, (images,))
    final = torch.randn(images, 5) + 3 * nn.functional.one_hot(labels, 5)
    features = [final + torch.randn(images, 5) * (blocks - k) for k in range(blocks)]
    stages = ["stem", "layer1", "layer1", "layer2"]
    aggregate, batches, intervals = evaluate_lenses(
        {"tuned": ScaledLens(blocks)}, features, final, labels, batch_size=128, intervals=True, block_stages=stages,
        resamples=300,
    )
    assert len(batches) == 3
    tuned, bounds = aggregate["tuned"], intervals["tuned"]
    assert set(bounds) == {"acc", "ce", "kl", "layer_transfer"}
    for metric in ("acc", "ce", "kl"):
        for layer, value in tuned[metric].items():
            low, high = bounds[metric][layer]
            assert low <= value <= high
    transfer = bounds["layer_transfer"]
    assert set(transfer) == {"ce", "penalty", "penalty_by_distance"}
    low, high = transfer["penalty"]["layer_0"]["layer_3"]
    assert low <= tuned["layer_transfer"]["penalty"]["layer_0"]["layer_3"] <= high
    assert set(transfer["penalty_by_distance"]) == {"all", "within_stage", "across_stage"}
    assert transfer["penalty_by_distance"]["within_stage"]["3"] is None  # no pair of one stage is 3 apart
    low, high = intervals["baseline"]["acc"]["final"]
    assert low <= aggregate["baseline"]["acc"]["final"] <= high

    names = ["stem", "layer1.0", "layer1.1", "layer2.0"]
    write_results(tmp_path, aggregate, batches, {f"layer_{k}": n for k, n in enumerate(names)},
                  {"model": "m", "block_stages": stages}, intervals)
    assert json.loads((tmp_path / "aggregate_metrics_ci.json").read_text()) == intervals
    run = load_results(tmp_path)
    assert run.intervals == intervals
    profile = analysis.penalty_profiles(run)["within_stage"]
    assert profile.low[1] <= profile.mean[1] <= profile.high[1]
