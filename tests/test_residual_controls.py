"""The residual-stream controls: cifar:vit, timm ViTs, cifar:preact_resnet and the plain CNN cifar:plain (no
stream), their readout and their training."""

from __future__ import annotations

import json

import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.capture import BlockRecorder
from vision_lens.cli import main
from vision_lens.readout import FeatureLayout

from .conftest import load_script


@pytest.mark.unit
def test_vit_blocks_are_the_embedding_and_every_block_read_at_the_class_token():
    adapter = create_adapter("cifar:vit", weights="random", seed=0)
    assert [b.name for b in adapter.blocks] == ["embed"] + [f"blocks.{i}" for i in range(6)]
    assert {b.stage for b in adapter.blocks} == {"blocks"}
    assert all(b.path is not None and b.path.stride == 1 and torch.equal(b.path.weight, torch.eye(192))
               for b in adapter.blocks)
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    handle = adapter.model.blocks[2].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad(), BlockRecorder(adapter, FeatureLayout.of(adapter.blocks, 1)) as recorder:
        adapter.logits(x)
    handle.remove()
    torch.testing.assert_close(recorder.pooled[3], seen["out"][:, 0])  # blocks.2's class token, nothing else
    # A grid adds the patch tokens' cell averages after the class token.
    layout = FeatureLayout.of(adapter.blocks, 2)
    with torch.no_grad(), BlockRecorder(adapter, layout) as recorder:
        adapter.logits(x)
    patches = seen["out"][:, 1:].reshape(2, 8, 8, 192)
    torch.testing.assert_close(recorder.pooled[3][:, 192:384], patches[:, :4, :4].mean((1, 2)))


@pytest.mark.unit
def test_the_plain_cnn_is_resnet20_without_its_shortcuts_read_through_the_same_channel_embedding():
    plain, resnet = (create_adapter(f"cifar:{arch}", weights="random", seed=0) for arch in ("plain20", "resnet20"))
    assert [(b.name, b.module, b.channels, b.stage) for b in plain.blocks] == [
        (b.name, b.module, b.channels, b.stage) for b in resnet.blocks]
    for p, r in zip(plain.blocks, resnet.blocks):  # the option-A embedding, though the network has no such path
        assert p.path.stride == r.path.stride and torch.equal(p.path.weight, r.path.weight)
    assert not any("shortcut" in name for name, _ in plain.model.named_modules())
    resnet.model.load_state_dict(plain.model.state_dict())  # the same parameters, shortcuts have none
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # what the shortcuts add is the whole difference
        assert not torch.allclose(plain.logits(x), resnet.logits(x))
        block = plain.model.layer1[1]
        h = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(block(h), torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h)))))))


@pytest.mark.unit
def test_stages_come_from_the_adapters():
    assert [b.stage for b in create_adapter("cifar:resnet8", weights="random").blocks] == [
        "stem", "layer1", "layer2", "layer3"]
    assert [b.stage for b in create_adapter("cifar:inceptionv1", weights="random").blocks][3:5] == [
        "inception3a", "inception3b"]
    assert {b.stage for b in create_adapter("timm:vit_tiny_patch16_224", weights="random").blocks} == {"blocks"}
    stages = [b.stage for b in create_adapter("torchvision:resnet18", weights="random").blocks]
    assert stages[:3] == ["stem", "layer1", "layer1"] and stages[-1] == "layer4"


@pytest.mark.integration
def test_a_timm_vit_saved_to_a_file_runs_through_the_pipeline_offline(tmp_path, tiny_data):
    model = create_adapter("timm:vit_tiny_patch16_224", weights="random", seed=3, num_classes=10).model
    checkpoint = tmp_path / "vit_tiny.pth"
    torch.save(model.state_dict(), checkpoint)
    adapter = create_adapter("timm:vit_tiny_patch16_224", weights=str(checkpoint))
    assert [b.tokens for b in adapter.blocks][0] == (1, 14, 14) and adapter.num_classes == 10
    out = tmp_path / "run"
    code = main(["run", "--model", "timm:vit_tiny_patch16_224", "--weights", str(checkpoint), "--data",
                 str(tiny_data), "--out", str(out), "--workers", "0", "--max-iter", "3"])
    assert code == 0
    aggregate = json.loads((out / "aggregate_metrics.json").read_text())
    assert all(v is not None for v in aggregate["logit"]["kl"].values())  # one residual stream: every block has a path
    penalty = aggregate["tuned"]["layer_transfer"]["penalty"]
    assert all(v is not None for row in penalty.values() for v in row.values())  # every pair is defined
    run = json.loads((out / "run.json").read_text())
    assert run["block_stages"] == ["blocks"] * 13


@pytest.mark.unit
def test_a_distilled_vit_that_averages_two_heads_is_refused_by_name():
    with pytest.raises(ValueError, match="--model timm:deit_tiny_distilled_patch16_224: this ViT averages two heads"):
        create_adapter("timm:deit_tiny_distilled_patch16_224", weights="random")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["timm:vit_medium_patch16_gap_256", "timm:vit_base_patch16_siglip_224"])
def test_vits_that_pool_tokens_before_the_head_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"--model {name}: this ViT pools its tokens before the head"):
        create_adapter(name, weights="random")


@pytest.mark.integration
def test_a_head_no_fitter_can_take_is_refused_before_capture(tmp_path, tiny_data, monkeypatch, capsys):
    """A head with no gradient (here: rounding) is refused by preflight, before any image is captured."""
    from vision_lens.adapters import cifar_resnet
    from vision_lens import capture

    class Rounded(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x).round()

    original = cifar_resnet.CifarResNetAdapter.unembed
    monkeypatch.setattr(cifar_resnet.CifarResNetAdapter, "unembed",
                        property(lambda self: Rounded(original.fget(self))))
    monkeypatch.setattr(capture, "capture", lambda *a, **k: pytest.fail("captured before refusing the head"))
    code = main(["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--out",
                 str(tmp_path / "run"), "--workers", "0"])
    assert code != 0
    assert "unembedding" in capsys.readouterr().err


def _train(script, tmp_path, data, *extra):
    args = script.parse_args(["--arch", "preact_resnet8", "--data", str(data), "--out", str(tmp_path / "w.th"),
                              "--batch-size", "8", "--workers", "0", "--checkpoint-dir", str(tmp_path / "ckpt"),
                              *extra])
    return args, script.train(args)


@pytest.mark.integration
def test_training_resumes_to_the_same_weights_and_writes_its_record(tmp_path, tiny_data):
    script = load_script("train_cifar")
    _, straight = _train(script, tmp_path / "a", tiny_data, "--epochs", "3")
    # The same run, interrupted right after its first epoch's checkpoint, then resumed.
    args = script.parse_args(["--arch", "preact_resnet8", "--data", str(tiny_data), "--out", str(tmp_path / "b.th"),
                              "--batch-size", "8", "--workers", "0", "--checkpoint-dir", str(tmp_path / "ckptb"),
                              "--epochs", "3"])
    calls = {"n": 0}
    real_save = script._save_atomic

    def crash_after_first_epoch(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt

    script._save_atomic = crash_after_first_epoch
    with pytest.raises(KeyboardInterrupt):
        script.train(args)
    script._save_atomic = real_save
    with pytest.raises(SystemExit, match="--resume"):
        script.train(args)  # never restarts silently over a checkpoint
    args.resume = True
    resumed = script.train(args)
    a = torch.load(tmp_path / "a" / "w.th", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.th", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps"] == straight["steps"] == 3 * (40 // 8)
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["epochs"] == 3 and len(record["history"]) == 3 and record["arch"] == "cifar:preact_resnet8"
    assert record["test_acc"] == resumed["test_acc"] and record["bytes"] == (tmp_path / "b.th").stat().st_size


@pytest.mark.integration
def test_the_vit_trains_a_step_into_a_checkpoint_the_pipeline_loads(tmp_path, tiny_data):
    """(The inceptionv1's smoke step is in test_cifar_inception.py, the pre-activation net's above.)"""
    script = load_script("train_cifar")
    arch = "vit"
    args = script.parse_args(["--arch", arch, "--data", str(tiny_data), "--out", str(tmp_path / "w.th"),
                              "--batch-size", "4", "--workers", "0", "--max-steps", "1", "--fp16",
                              "--checkpoint-dir", str(tmp_path / "ckpt")])
    summary = script.train(args)
    assert summary["steps"] == 1 and 0 <= summary["test_acc"] <= 1
    saved = torch.load(tmp_path / "w.th", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for k, v in saved.items() if v.is_floating_point() and k != "width")
    adapter = create_adapter(f"cifar:{arch}", weights=str(tmp_path / "w.th"))
    assert adapter.num_classes == 10
