"""Property tests (hypothesis) of the metric code: per_image_metrics, evaluate_lenses, transfer_penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vision_lens import metrics
from vision_lens.metrics import evaluate_lenses, per_image_metrics, transfer_penalty

pytestmark = pytest.mark.unit

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(-30, 30, allow_nan=False, width=32)


@st.composite
def logits_and_labels(draw, max_rows: int = 12, max_classes: int = 7):
    """(lens logits, model logits, labels) with some unlabelled rows (label -1)."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(2, max_classes))
    lens = torch.from_numpy(draw(arrays(np.float32, (n, c), elements=finite)))
    final = torch.from_numpy(draw(arrays(np.float32, (n, c), elements=finite)))
    labels = torch.tensor(draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)))
    return lens, final, labels


@FAST
@given(logits_and_labels())
def test_kl_is_non_negative_and_zero_for_identical_inputs(data):
    lens, final, labels = data
    assert (per_image_metrics(lens, final, labels)["kl"] >= -1e-9).all()
    same = per_image_metrics(final, final, labels)
    assert torch.allclose(same["kl"], torch.zeros_like(same["kl"]), atol=1e-9)
    assert (same["agree"] == 1).all()


@FAST
@given(logits_and_labels())
def test_bits_are_nats_over_ln2(data):
    lens, final, labels = data
    bits = per_image_metrics(lens, final, labels)
    lps, final_lps = lens.double().log_softmax(-1), final.double().log_softmax(-1)
    nats_kl = (final_lps.exp() * (final_lps - lps)).sum(-1)
    nats_entropy = -(lps.exp() * lps).sum(-1)
    assert torch.allclose(bits["kl"] * math.log(2), nats_kl, rtol=1e-9, atol=1e-12)
    assert torch.allclose(bits["entropy"] * math.log(2), nats_entropy, rtol=1e-9, atol=1e-12)
    labelled = labels >= 0
    nats_ce = -lps[labelled, labels[labelled]]
    assert torch.allclose(bits["ce"][labelled] * math.log(2), nats_ce, rtol=1e-9, atol=1e-12)
    assert bits["ce"][~labelled].isnan().all()  # unlabelled images have no CE


class RowLens(torch.nn.Module):
    """A lens that decodes block k with its own fixed linear map (transfer: translator i on block j)."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weights = weights

    def forward(self, features, k):
        return features @ self.weights[k]

    def transfer(self, features, index, translator):
        return features @ self.weights[translator]


@st.composite
def lens_problems(draw):
    """Features of 3 blocks, model logits, labels and a RowLens, for evaluate_lenses."""
    n = draw(st.integers(2, 20))
    c, d = 4, 3
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    features = [torch.randn(n, d, generator=gen) for _ in range(3)]
    weights = [torch.randn(d, c, generator=gen) for _ in range(3)]
    final = torch.randn(n, c, generator=gen) * 3
    labels = torch.tensor(draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)))
    return features, final, labels, RowLens(weights)


def _evaluate(problem, order=None, batch_size=500):
    features, final, labels, lens = problem
    order = torch.arange(len(labels)) if order is None else order
    aggregate, _ = evaluate_lenses({"tuned": lens}, [f[order] for f in features], final[order], labels[order],
                                   batch_size=batch_size)
    return aggregate


def _assert_same_numbers(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_numbers(a[k], b[k])
    elif a is None or b is None:
        assert a is None and b is None
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


@FAST
@given(lens_problems(), st.randoms(use_true_random=False))
def test_evaluate_lenses_is_invariant_to_image_order(problem, rng):
    order = list(range(len(problem[2])))
    rng.shuffle(order)
    _assert_same_numbers(_evaluate(problem), _evaluate(problem, torch.tensor(order)))


@FAST
@given(lens_problems(), st.integers(1, 25))
def test_evaluate_lenses_is_invariant_to_batch_size(problem, batch_size):
    _assert_same_numbers(_evaluate(problem), _evaluate(problem, batch_size=batch_size))


@FAST
@given(lens_problems(), st.integers(1, 7), st.integers(1, 3))
def test_batches_do_not_depend_on_how_many_a_chunk_holds(problem, batch_size, per_chunk):
    """Lenses run on chunks of whole batches; batches.jsonl's means are still those of each batch alone."""
    features, final, labels, lens = problem
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "EVAL_CHUNK_ELEMENTS", per_chunk * batch_size * final.shape[1])
        aggregate, batches = evaluate_lenses({"tuned": lens}, features, final, labels, batch_size=batch_size)
    assert len(batches) == math.ceil(len(labels) / batch_size)
    for k, batch in enumerate(batches):
        rows = slice(k * batch_size, (k + 1) * batch_size)
        alone = evaluate_lenses({"tuned": lens}, [f[rows] for f in features], final[rows], labels[rows])[0]
        del alone["tuned"]["layer_transfer"]["penalty"]  # an aggregate's, not a batch's
        _assert_same_numbers(batch, alone)
    _assert_same_numbers(aggregate, _evaluate(problem))


@FAST
@given(lens_problems())
def test_penalty_diagonal_is_exactly_zero(problem):
    tuned = _evaluate(problem)["tuned"]
    penalty, transfer_ce = tuned["layer_transfer"]["penalty"], tuned["layer_transfer"]["ce"]
    for k in penalty:
        assert penalty[k][k] == 0.0 or (penalty[k][k] is None)
        # The diagonal is a translator on its own block, i.e. the lens itself: its CE is the lens's CE there.
        assert (transfer_ce[k][k] is None) == (tuned["ce"][k] is None)
        assert transfer_ce[k][k] is None or transfer_ce[k][k] == pytest.approx(tuned["ce"][k], rel=1e-5, abs=1e-6)


@st.composite
def transfer_tables(draw, max_blocks: int = 6):
    """``ce[layer_i][layer_j]``: a square table of finite values and None (undefined) anywhere, the diagonal too."""
    n = draw(st.integers(1, max_blocks))
    keys = [f"layer_{k}" for k in range(n)]
    return {i: {j: draw(st.one_of(st.none(), finite)) for j in keys} for i in keys}


@FAST
@given(transfer_tables())
def test_transfer_penalty_is_each_cell_minus_its_columns_diagonal_and_none_propagates(ce):
    penalty = transfer_penalty(ce)
    assert list(penalty) == list(ce) and all(list(penalty[i]) == list(ce[i]) for i in ce)
    for i in ce:
        for j in ce:
            if ce[i][j] is None or ce[j][j] is None:  # undefined on either side: undefined, never a number
                assert penalty[i][j] is None
            else:  # the same block's translator on block j is the reference, so the diagonal is exactly 0
                assert penalty[i][j] == ce[i][j] - ce[j][j] and (i != j or penalty[i][j] == 0.0)

