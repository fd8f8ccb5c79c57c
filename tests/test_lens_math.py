"""Fast checks of the math: bits, metrics against hand values, transfer indexing, lens parametrisation, identity paths."""

from __future__ import annotations

import math

import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder
from vision_lens.fit import FitSettings, fit_lens
from vision_lens.lenses import build_lenses
from vision_lens.metrics import evaluate_lenses, nats_to_bits, per_image_metrics, transfer_penalty
from vision_lens.readout import Block, FeatureLayout

pytestmark = pytest.mark.unit


def randomised_resnet(arch: str = "resnet20", seed: int = 0):
    """A random-init CIFAR ResNet whose BatchNorms have non-trivial statistics (so paths are not trivially exact)."""
    adapter = create_adapter(f"cifar:{arch}", weights="random", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for m in adapter.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return adapter


def test_bits_conversion():
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bits(math.log(10)) == pytest.approx(math.log2(10))


def test_metrics_against_hand_values():
    # Lens: uniform over 2 classes. Model output: p = (0.75, 0.25). Label: class 0.
    lens_logits = torch.zeros(1, 2)
    final_logits = torch.log(torch.tensor([[0.75, 0.25]]))
    m = per_image_metrics(lens_logits, final_logits, torch.tensor([0]))
    assert m["ce"].item() == pytest.approx(1.0)  # -log2(1/2)
    assert m["entropy"].item() == pytest.approx(1.0)
    assert m["kl"].item() == pytest.approx(0.75 * math.log2(0.75 / 0.5) + 0.25 * math.log2(0.25 / 0.5))
    # Ties resolve to class 0 in argmax: lens and model agree and are right.
    assert m["acc"].item() == 1.0 and m["agree"].item() == 1.0 and m["top5"].item() == 1.0
    m = per_image_metrics(torch.tensor([[0.0, 3.0]]), final_logits, torch.tensor([0]))
    assert m["acc"].item() == 0.0 and m["agree"].item() == 0.0
    assert m["ce"].item() == pytest.approx(math.log2(1 + math.exp(3.0)))


def test_unlabelled_images_are_skipped_by_label_metrics_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    m = per_image_metrics(logits, logits, torch.tensor([0, -1]))
    assert m["acc"][0] == 1 and m["acc"][1].isnan() and m["ce"][1].isnan()
    assert not m["kl"].isnan().any() and not m["agree"].isnan().any()


class KnownTransfer(torch.nn.Module):
    """Translator i on block j predicts class 0 with logit margin 10*i + j, so each cell is identifiable."""

    def forward(self, features, index):
        return self.transfer(features, index, index)

    def transfer(self, features, index, translator):
        margin = 10.0 * translator + index
        return torch.tensor([[margin, 0.0]]).expand(len(features), 2)


def test_transfer_matrix_indexing_and_penalty():
    feats = [torch.zeros(4, 1) for _ in range(3)]
    labels = torch.zeros(4, dtype=torch.long)
    agg, batches = evaluate_lenses({"tuned": KnownTransfer()}, feats, torch.zeros(4, 2), labels, batch_size=3)
    ce = agg["tuned"]["layer_transfer"]["ce"]

    def expected(i, j):
        return math.log2(1 + math.exp(-(10.0 * i + j)))

    for i in range(3):
        for j in range(3):
            # layer_transfer.ce[layer_i][layer_j]: translator of block i on block j's features.
            assert ce[f"layer_{i}"][f"layer_{j}"] == pytest.approx(expected(i, j))
            pen = agg["tuned"]["layer_transfer"]["penalty"][f"layer_{i}"][f"layer_{j}"]
            assert pen == pytest.approx(expected(i, j) - expected(j, j))
    assert len(batches) == 2 and batches[0]["tuned"]["layer_transfer"]["ce"]["layer_2"]["layer_0"] == pytest.approx(
        expected(2, 0)
    )


class SignFlippingTransfer(torch.nn.Module):
    """Translator i predicts class (i + j) % 2 on block j, with a margin of 100 (a huge CE where wrong)."""

    def forward(self, features, index):
        return self.transfer(features, index, index)

    def transfer(self, features, index, translator):
        logits = torch.zeros(len(features), 2)
        logits[:, (index + translator) % 2] = 100.0
        return logits


def test_transfer_agreement_and_accuracy_do_not_depend_on_the_logits_scale():
    feats = [torch.zeros(6, 1) for _ in range(3)]
    labels = torch.tensor([0, 0, 0, 0, 1, -1])  # one unlabelled image: no accuracy, still an agreement
    final = torch.tensor([[1.0, 0.0]]).expand(6, 2)  # the model says class 0 throughout
    agg, _ = evaluate_lenses({"tuned": SignFlippingTransfer()}, feats, final, labels, batch_size=4)
    transfer = agg["tuned"]["layer_transfer"]
    for i in range(3):
        for j in range(3):
            predicts_zero = (i + j) % 2 == 0
            assert transfer["agree"][f"layer_{i}"][f"layer_{j}"] == (1.0 if predicts_zero else 0.0)
            assert transfer["acc"][f"layer_{i}"][f"layer_{j}"] == pytest.approx(0.8 if predicts_zero else 0.2)
            assert transfer["ce"][f"layer_{i}"][f"layer_{j}"] > (100 if not predicts_zero else 0)


def test_transfer_penalty_keeps_nulls():
    ce = {"layer_0": {"layer_0": 1.0, "layer_1": None}, "layer_1": {"layer_0": 2.0, "layer_1": 0.5}}
    assert transfer_penalty(ce) == {
        "layer_0": {"layer_0": 0.0, "layer_1": None},
        "layer_1": {"layer_0": 1.0, "layer_1": 0.0},
    }


def capture_full_maps(adapter, x, layout):
    """The pooled rows that capture keeps, and every block's full output map, from one forward pass."""
    full = {}
    hooks = [adapter.model.get_submodule(b.module).register_forward_hook(
        lambda m, i, o, name=b.name: full.__setitem__(name, o)) for b in adapter.blocks]
    with BlockRecorder(adapter, layout) as rec:
        logits = adapter.logits(x)
    for h in hooks:
        h.remove()
    return rec.pooled, full, logits


@pytest.mark.parametrize("grid", [1, 2])
def test_identity_path_matches_direct_computation_on_full_maps(grid):
    """Pool-then-path (what capture + logit lens do) equals path-then-pool on full maps (what the network does)."""
    adapter = randomised_resnet()
    layout = FeatureLayout.of(adapter.blocks, grid)
    pooled, full, _ = capture_full_maps(adapter, torch.randn(3, 3, 32, 32), layout)
    lens = build_lenses(adapter, layout, ["logit"])["logit"]
    for k, block in enumerate(adapter.blocks):
        carried = full[block.name]
        for name in block.path.source:  # the real option-A shortcuts, on full maps
            carried = adapter.model.get_submodule(name)(carried)
        assert carried.shape[1:] == (64, 8, 8)
        torch.testing.assert_close(lens.transform_hidden(pooled[k], k), carried.mean((2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [1, 3])
def test_whole_block_pooling_is_the_average_over_every_position(grid):
    adapter = randomised_resnet()
    layout = FeatureLayout.of(adapter.blocks, grid)
    pooled, full, _ = capture_full_maps(adapter, torch.randn(2, 3, 32, 32), layout)
    for k, block in enumerate(adapter.blocks):
        x = full[block.name]
        whole = layout.whole(pooled[k], k).view(2, layout.slots, block.channels)
        torch.testing.assert_close(whole[:, 0], x.mean((2, 3)))
        if grid > 1:  # cells over the full map, row-major
            h, w = x.shape[2:]
            cell = x[:, :, : -(-h // grid), : -(-w // grid)].mean((2, 3))
            torch.testing.assert_close(whole[:, 1], cell)
        stride = block.path.stride
        # Stage 1 reaches the head through two option-A shortcuts: every 4th pixel; stage 2 every 2nd.
        assert stride == {16: 4, 32: 2, 64: 1}[block.channels]
        torch.testing.assert_close(layout.path_input(pooled[k], k), x[:, :, ::stride, ::stride].mean((2, 3)))
        assert pooled[k].shape[1] == layout.width(k) == (layout.slots + (stride > 1)) * block.channels


def random_rows(adapter, layout, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, layout.width(k), generator=gen) for k in range(len(adapter.blocks))]


def test_tuned_lens_reads_the_whole_block_through_the_identity_path():
    """(That every kind starts as the logit lens is a contract test, tests/test_lens_kinds.py.)"""
    adapter = randomised_resnet()
    layout = FeatureLayout.of(adapter.blocks, 2)
    tuned = build_lenses(adapter, layout, ["tuned"])["tuned"]
    feats = random_rows(adapter, layout)
    # h = P(p_path) + A (W p_whole) + b: the path on the sub-grid mean, its channel map on the whole block.
    k = 2
    translator = tuned.params[k]
    torch.nn.init.normal_(translator.linear.weight)
    torch.nn.init.normal_(translator.linear.bias)
    translator.standardize(torch.randn(translator.mean.numel()), torch.rand(translator.mean.numel()) + 0.5)
    path = adapter.blocks[k].path

    def carried_whole(rows, j):
        return (layout.whole(rows, j).view(len(rows), layout.slots, -1) @ adapter.blocks[j].path.weight.T).flatten(1)

    expected = path(layout.path_input(feats[k], k)) + translator(carried_whole(feats[k], k))
    torch.testing.assert_close(tuned.transform_hidden(feats[k], k), expected)
    # The path input is the separate sub-grid mean for a strided path, not the whole-block mean.
    assert not torch.equal(layout.path_input(feats[k], k), layout.whole(feats[k], k)[:, : path.weight.shape[1]])
    # Transfer: block 2's translator on block 8's features goes through block 8's path.
    p8 = adapter.blocks[8].path
    torch.testing.assert_close(
        tuned.transfer(feats[8], 8, k),
        tuned.unembed(p8(layout.path_input(feats[8], 8)) + translator(carried_whole(feats[8], 8))),
    )


def without_stem_path(adapter):
    """Pretend block 0 has no linear path, as Inception's blocks do."""
    adapter.blocks[0] = Block("stem", "relu", 16, None)
    return FeatureLayout.of(adapter.blocks, 1)


def test_blocks_without_identity_path_have_no_logit_lens_or_transfer():
    adapter = randomised_resnet()
    layout = without_stem_path(adapter)
    lenses = build_lenses(adapter, layout, ["tuned", "logit"])
    feats = random_rows(adapter, layout, n=2)
    assert lenses["logit"](feats[0], 0) is None
    assert lenses["tuned"](feats[0], 0).shape == (2, 10)  # plain affine translator A p + b
    assert lenses["tuned"].transfer(feats[0], 0, 1) is None
    assert lenses["tuned"].transfer(feats[1], 1, 0) is None


def test_shared_lens_is_one_translator_for_every_block_with_a_path():
    adapter = randomised_resnet()
    layout = without_stem_path(adapter)
    lenses = build_lenses(adapter, layout, ["shared", "tuned", "logit"])
    shared, tuned = lenses["shared"], lenses["tuned"]
    assert len(shared.params) == 1
    assert shared.fit_groups()[0][1] == list(range(1, len(adapter.blocks)))
    feats = random_rows(adapter, layout, n=3)
    assert shared(feats[0], 0) is None
    for k in range(1, len(feats)):  # zero-initialised: the logit lens
        torch.testing.assert_close(shared(feats[k], k), lenses["logit"](feats[k], k))
    torch.nn.init.normal_(shared.params[0].linear.weight)
    for k in (1, 5, 9):  # the one translator, on each block's carried whole-block features
        tuned.params[k].load_state_dict(shared.params[0].state_dict())
        torch.testing.assert_close(shared(feats[k], k), tuned(feats[k], k))


def test_shared_lens_fits_no_better_than_a_translator_per_block():
    """Per-block translators are the per-block optimum; sharing one costs, never gains (on the fit data)."""
    adapter = randomised_resnet()
    layout = FeatureLayout.of(adapter.blocks, 1)
    feats = [f.abs() for f in random_rows(adapter, layout, n=256)]
    final = torch.randn(256, 10, generator=torch.Generator().manual_seed(1)) * 3
    labels = final.argmax(-1)
    settings = FitSettings(max_iter=200, weight_decay=1e-6)
    lenses = build_lenses(adapter, layout, ["tuned", "shared", "logit"])
    start = [float(kl_nats(lenses["logit"](f, k), final)) for k, f in enumerate(feats)]  # where both start
    tuned = [r.loss_nats for r in fit_lens(lenses["tuned"], feats, labels, final, settings)]
    shared = [r.loss_nats for r in fit_lens(lenses["shared"], feats, labels, final, settings)]
    assert len(tuned) == len(shared) == len(feats)
    assert sum(shared) >= sum(tuned) - 1e-3
    assert sum(shared) < sum(start)  # it did learn


def kl_nats(logits, final):
    return (final.softmax(-1) * (final.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
