"""Fast checks of the math: bits, metrics against hand values, transfer indexing, lens parametrisation, identity paths."""

from __future__ import annotations

import math

import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder, pool
from vision_lens.fit import FitSettings, fit_lens
from vision_lens.lenses import LinearProbe, LogitLens, TunedLens, build_lenses
from vision_lens.metrics import evaluate_lenses, nats_to_bits, per_image_metrics, transfer_penalty


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


def test_transfer_penalty_keeps_nulls():
    ce = {"layer_0": {"layer_0": 1.0, "layer_1": None}, "layer_1": {"layer_0": 2.0, "layer_1": 0.5}}
    assert transfer_penalty(ce) == {
        "layer_0": {"layer_0": 0.0, "layer_1": None},
        "layer_1": {"layer_0": 1.0, "layer_1": 0.0},
    }


@pytest.mark.parametrize("grid", [1, 2])
def test_identity_path_matches_direct_computation_on_full_maps(grid):
    """Pool-then-path (what capture + lens do) equals path-then-pool on full maps (what the network does)."""
    adapter = randomised_resnet()
    model = adapter.model
    full = {}
    hooks = [model.get_submodule(b.module).register_forward_hook(
        lambda m, i, o, name=b.name: full.__setitem__(name, o)) for b in adapter.blocks]
    x = torch.randn(3, 3, 32, 32)
    with BlockRecorder(adapter, grid) as rec:
        model(x)
    for h in hooks:
        h.remove()
    lens = LogitLens(build_lenses(adapter, grid, ["logit"])["logit"].config, adapter)
    for k, block in enumerate(adapter.blocks):
        carried = full[block.name]
        for name in block.path:  # the real option-A shortcuts, on full maps
            carried = model.get_submodule(name)(carried)
        assert carried.shape[1:] == (64, 8, 8)
        direct = carried.mean((2, 3))
        torch.testing.assert_close(lens.transform_hidden(rec.pooled[k], k), direct, atol=1e-5, rtol=1e-5)
        # The pooled features are exactly the capture-side pooling of the subsampled map.
        torch.testing.assert_close(rec.pooled[k], pool(full[block.name], block.path_stride, grid))


def test_logit_lens_at_last_block_reproduces_the_model_logits():
    adapter = randomised_resnet()
    x = torch.randn(5, 3, 32, 32)
    with BlockRecorder(adapter) as rec:
        logits = adapter.logits(x)
    lens = build_lenses(adapter, 1, ["logit"])["logit"]
    last = len(adapter.blocks) - 1
    torch.testing.assert_close(lens(rec.pooled[last], last), logits, atol=1e-5, rtol=1e-5)


def test_tuned_lens_starts_as_logit_lens_and_is_residual():
    adapter = randomised_resnet()
    lenses = build_lenses(adapter, 1, ["tuned", "logit"])
    tuned, logit = lenses["tuned"], lenses["logit"]
    feats = [torch.randn(4, b.channels) for b in adapter.blocks]
    for k in range(len(adapter.blocks)):
        torch.testing.assert_close(tuned(feats[k], k), logit(feats[k], k))
    # S p + A p + b, with S the identity path and A, b the translator.
    k = 2
    translator = tuned.params[k]
    torch.nn.init.normal_(translator.weight)
    torch.nn.init.normal_(translator.bias)
    path = adapter.identity_path(k)
    carried = path(feats[k])
    expected = carried + carried @ translator.weight.T + translator.bias
    torch.testing.assert_close(tuned.transform_hidden(feats[k], k), expected)
    # Transfer: block 2's translator on block 8's features goes through block 8's path.
    carried8 = adapter.identity_path(8)(feats[8])
    torch.testing.assert_close(
        tuned.transfer(feats[8], 8, k), tuned.unembed(carried8 + carried8 @ translator.weight.T + translator.bias)
    )


def test_blocks_without_identity_path_have_no_logit_lens_or_transfer():
    adapter = randomised_resnet()
    # Pretend block 0 has no linear path, as Inception's blocks do.
    adapter.blocks[0] = type(adapter.blocks[0])("stem", "relu", 16, None, 1)
    lenses = build_lenses(adapter, 1, ["tuned", "logit"])
    feats = torch.randn(2, 16)
    assert lenses["logit"](feats, 0) is None
    assert lenses["tuned"](feats, 0).shape == (2, 10)  # plain affine translator A p + b
    assert lenses["tuned"].transfer(feats, 0, 1) is None
    assert lenses["tuned"].transfer(torch.randn(2, 16), 1, 0) is None


def test_lens_save_load_round_trip(tmp_path):
    adapter = randomised_resnet()
    tuned = build_lenses(adapter, 1, ["tuned"])["tuned"]
    for p in tuned.parameters():
        torch.nn.init.normal_(p)
    tuned.save(tmp_path / "tuned")
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == ["config.json", "params.pt"]
    loaded = TunedLens.load(tmp_path / "tuned", adapter)
    feats = [torch.randn(3, b.channels) for b in adapter.blocks]
    for k in range(len(feats)):
        torch.testing.assert_close(loaded(feats[k], k), tuned(feats[k], k), rtol=0, atol=0)
    probe = LinearProbe(tuned.config, adapter)
    with pytest.raises(ValueError, match="holds a 'tuned' lens"):
        LinearProbe.load(tmp_path / "tuned", adapter)
    del probe
    other = randomised_resnet(seed=1)
    with pytest.raises(ValueError, match="was fitted on"):
        TunedLens.load(tmp_path / "tuned", other)


def test_shared_lens_is_one_translator_for_every_block_with_a_path():
    adapter = randomised_resnet()
    adapter.blocks[0] = type(adapter.blocks[0])("stem", "relu", 16, None, 1)  # as if the stem had no path
    lenses = build_lenses(adapter, 1, ["shared", "logit"])
    shared = lenses["shared"]
    assert len(shared.params) == 1
    assert shared.fit_groups()[0][1] == list(range(1, len(adapter.blocks)))
    feats = [torch.randn(3, b.channels) for b in adapter.blocks]
    assert shared(feats[0], 0) is None
    for k in range(1, len(feats)):  # zero-initialised: the logit lens
        torch.testing.assert_close(shared(feats[k], k), lenses["logit"](feats[k], k))
    torch.nn.init.normal_(shared.params[0].weight)
    for k in (1, 5, 9):
        carried = adapter.identity_path(k)(feats[k])
        expected = carried + shared.params[0](carried)
        torch.testing.assert_close(shared.transform_hidden(feats[k], k), expected)


def test_shared_lens_fits_no_better_than_a_translator_per_block():
    """Per-block translators are the per-block optimum; sharing one costs, never gains (on the fit data)."""
    adapter = randomised_resnet()
    gen = torch.Generator().manual_seed(0)
    feats = [torch.rand(256, b.channels, generator=gen) for b in adapter.blocks]
    final = torch.randn(256, 10, generator=gen) * 3
    labels = final.argmax(-1)
    settings = FitSettings(max_iter=200, weight_decay=1e-6)
    lenses = build_lenses(adapter, 1, ["tuned", "shared", "logit"])
    start = [float(kl_nats(lenses["logit"](f, k), final)) for k, f in enumerate(feats)]  # where both start
    tuned = fit_lens(lenses["tuned"], feats, labels, final, settings)
    shared = fit_lens(lenses["shared"], feats, labels, final, settings)
    assert len(tuned) == len(shared) == len(feats)
    assert sum(shared) >= sum(tuned) - 1e-3
    assert sum(shared) < sum(start)  # it did learn


def kl_nats(logits, final):
    return (final.softmax(-1) * (final.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
