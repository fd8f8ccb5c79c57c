"""Fitting: the L2 penalty chosen on held-out fit images, what is recorded about it, the convex solver's
preconditioning and stacking, the solvers against each other, and targets computed a chunk of rows at a time."""

from __future__ import annotations

import pytest
import torch

from vision_lens.fit import PENALTY_GRID, FitSettings, fit_lens, validation_split
from vision_lens.lenses import LensConfig, LinearProbe
from vision_lens.readout import FeatureLayout

pytestmark = pytest.mark.unit


def probe_for(channels: int, classes: int) -> LinearProbe:
    layout = FeatureLayout(("block",), (channels,), (None,), 1)
    return LinearProbe(LensConfig("synthetic", "", layout.to_dict(), channels, classes, "linear_probe"))


def test_penalty_is_weak_for_a_well_posed_problem_and_strong_for_noise():
    gen = torch.Generator().manual_seed(0)
    # Well posed: many images, few features, labels drawn from a linear softmax model.
    x = torch.randn(3000, 5, generator=gen)
    y = torch.multinomial((x @ torch.randn(5, 3, generator=gen) * 3).softmax(-1), 1, generator=gen)[:, 0]
    (record,) = fit_lens(probe_for(5, 3), [x], y, settings=FitSettings())
    assert record.weight_decay <= 1e-5, record
    # Noise: few images, many features, labels unrelated to them: only a strong penalty generalises.
    x = torch.randn(80, 200, generator=gen)
    y = torch.randint(0, 3, (80,), generator=gen)
    (record,) = fit_lens(probe_for(200, 3), [x], y, settings=FitSettings())
    assert record.weight_decay == max(PENALTY_GRID), record
    assert set(record.validation_loss_nats) == {repr(wd) for wd in PENALTY_GRID}
    assert record.weight_decay == float(min(record.validation_loss_nats, key=record.validation_loss_nats.get))


def test_a_fixed_penalty_skips_the_search_and_is_recorded():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    (record,) = fit_lens(probe_for(4, 2), [x], y, settings=FitSettings(weight_decay=1e-3))
    assert record.weight_decay == 1e-3 and record.validation_loss_nats is None
    assert "validation_loss_nats" not in record.to_dict() and record.solver == "convex"
    assert record.steps > 0 and record.loss_nats < 0.3


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


def test_modules_stack_by_shape_and_active_inputs():
    from vision_lens.fit.convex import stacks
    from vision_lens.fit.selection import SOLVE_PARAMETERS, solve_plan

    shapes = [(1, 10)] * 5 + [(2, 10)]
    found = stacks(shapes, [64, 60, 16, 15, 32, 32])
    assert found == [[0, 1], [4], [2, 3], [5]]  # 60 >= 0.75 * 64 stacks with 64; 32 does not; (2, 10) apart
    assert solve_plan([[0, 1], [4]], [10 * 64] * 5) == [[0, 1], [4]]
    budget = SOLVE_PARAMETERS  # a stack over the parameter budget is split, down to one module per solve
    assert solve_plan([[0, 1, 2]], [budget // 2] * 3) == [[0, 1], [2]]
    assert solve_plan([[0, 1]], [budget * 2] * 2) == [[0], [1]]


def _direct_optimum(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor, wd: float) -> float:
    """The probe's penalised objective minimised directly from zero with autograd L-BFGS, far past convergence."""
    import copy

    import torch.nn.functional as F

    alone = copy.deepcopy(probe)
    linear = alone.params[0].linear
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(list(linear.parameters()), max_iter=2000, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(alone(x, 0), y) + wd / 2 * sum(p.square().sum() for p in linear.parameters())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(closure().detach())


def test_preconditioned_solve_reaches_the_optimum_in_few_iterations():
    """Correlated features (a random mixing with condition number 1e3) and fewer images than features: the solve
    runs in the span of the images' features, scaled by a curvature model, and still lands on the optimum."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    for images, channels in ((2000, 20), (40, 100)):
        u, _, v = torch.linalg.svd(torch.randn(channels, channels, generator=gen))
        mixing = u @ torch.diag(torch.logspace(0, 3, channels)) @ v
        x = torch.randn(images, channels, generator=gen) @ mixing
        y = torch.multinomial((x @ torch.randn(channels, 4, generator=gen) / 30).softmax(-1), 1, generator=gen)[:, 0]
        probe, wd = probe_for(channels, 4), 1e-3
        (record,) = fit_lens(probe, [x], y, settings=FitSettings(weight_decay=wd))
        with torch.no_grad():
            ours = float(F.cross_entropy(probe(x, 0), y)) + wd / 2 * sum(
                float(p.square().sum()) for p in probe.params[0].linear.parameters())
        assert ours <= _direct_optimum(probe, x, y, wd) + 1e-5, (images, channels)
        assert record.steps < 50, record


def test_symmetric_eigh_holds_where_lapack_eigh_fails_to_converge():
    """A label mean spread over 81 of 1,000 classes: the softmax curvature has 920 exactly zero and 80 exactly
    equal eigenvalues, on which this torch's LAPACK eigh fails to converge (a ResNet-50 run on 100 synthetic
    ImageNet images stopped there)."""
    from vision_lens.fit.convex import _symmetric_eigh

    mean = torch.zeros(1000, dtype=torch.float64)
    mean[torch.arange(81) * 12] = 1 / 81
    curvature = torch.diag(mean) - torch.outer(mean, mean)
    values, vectors = _symmetric_eigh(curvature)
    torch.testing.assert_close(curvature @ vectors, vectors * values)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(1000, dtype=torch.float64))


def test_the_svd_fallback_is_an_eigendecomposition_and_moves_no_optimum(monkeypatch):
    from vision_lens.fit.convex import _symmetric_eigh

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=gen)
    y = torch.multinomial((x @ torch.randn(6, 4, generator=gen)).softmax(-1), 1, generator=gen)[:, 0]
    settings = FitSettings(weight_decay=1e-3, max_iter=200)
    with_eigh = probe_for(6, 4)
    fit_lens(with_eigh, [x], y, settings=settings)

    def failing(matrix):
        raise torch.linalg.LinAlgError("forced")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    a = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    matrices = a @ a.transpose(1, 2)
    values, vectors = _symmetric_eigh(matrices)
    torch.testing.assert_close(matrices @ vectors, vectors * values[:, None])
    torch.testing.assert_close(vectors.transpose(1, 2) @ vectors, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
    with_svd = probe_for(6, 4)
    fit_lens(with_svd, [x], y, settings=settings)  # every solve preconditioned through the SVD
    for p, q in zip(with_eigh.parameters(), with_svd.parameters()):  # the same optimum, to the solver's tolerance
        torch.testing.assert_close(p, q, rtol=0, atol=1e-3)


def test_the_autograd_fitter_reaches_the_fast_solvers_optimum_on_a_linear_head():
    """Both fitters, on one linear-head problem (penalty chosen on the grid), land on the same translators."""
    from vision_lens.adapters import create_adapter
    from vision_lens.lenses import build_lenses

    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    layout = FeatureLayout.of(adapter.blocks, 1)
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(600, layout.width(k), generator=gen) * (k + 1) for k in range(len(adapter.blocks))]
    final = features[-1][:, :64] @ adapter.unembed.weight.T * 3 + torch.randn(600, 10, generator=gen)
    fitted = {}
    for solver in ("convex", "autograd"):
        lens = build_lenses(adapter, layout, ["tuned"])["tuned"]
        records = fit_lens(lens, features, final.argmax(-1), final, FitSettings(max_iter=500), solver=solver)
        fitted[solver] = (lens, records)
    (fast, fast_records), (general, general_records) = fitted["convex"], fitted["autograd"]
    assert {r.solver for r in fast_records} == {"convex"} and {r.solver for r in general_records} == {"autograd"}
    assert [r.weight_decay for r in general_records] == [r.weight_decay for r in fast_records]
    for a, b, ra, rb in zip(fast.params, general.params, fast_records, general_records):
        assert abs(ra.loss_nats - rb.loss_nats) < 1e-4 * max(1.0, ra.loss_nats), (ra, rb)
        torch.testing.assert_close(b.linear.weight, a.linear.weight, atol=2e-3, rtol=2e-2)
