"""`vision-lens models`: every catalogued model is real, with the blocks it says; unknown names get near matches."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from vision_lens.adapters import UnknownModelError, base, create_adapter
from vision_lens.catalogue import CATALOGUE


class _NoInPlaceFill(TorchFunctionMode):
    """In-place ops on meta tensors (the weight init's ``normal_``, ``uniform_``, ...) do nothing: on the meta device
    they run as Python reference code, and would cost as long as filling real weights."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__") and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.name)
def test_every_catalogued_model_builds_with_its_block_count(entry, monkeypatch):
    """Each entry goes through its family's real build and adapter (module tree, blocks, identity paths, head) on
    the meta device: shapes without values, so ResNet-152 and the ViTs cost no weights. Random init and the weights
    hash, which need values, are tested on the small models (test_imagenet_adapters, test_residual_controls)."""
    hashed = base.state_dict_sha256
    monkeypatch.setattr(base, "state_dict_sha256", lambda state: "meta" if any(t.is_meta for t in state.values())
                        else hashed(state))
    with torch.device("meta"), _NoInPlaceFill():
        adapter = create_adapter(entry.name, weights="random")
    assert all(p.is_meta for p in adapter.model.parameters())  # no weights were allocated
    assert len(adapter.blocks) == entry.blocks


def test_models_lists_every_family_without_importing_torch():
    code = ("import sys; from vision_lens.cli import main; main(['models']); "
            "assert 'torch' not in sys.modules, 'listing imported torch'")
    listing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("cifar:", "torchvision:", "timm:", "lucent:", "cifar:vit", "cifar:preact_resnet20"):
        assert name in listing


@pytest.mark.parametrize("name, near", [("cifar:resnt20", "cifar:resnet20"), ("cifar:vitt", "cifar:vit"),
                                        ("timm:vit_smal_patch16_224", "timm:vit_small_patch16_224"),
                                        ("torchvision:resnet05", "torchvision:resnet50")])
def test_an_unknown_architecture_names_its_near_matches(name, near):
    with pytest.raises(UnknownModelError, match=f"near matches: .*{near}"):
        create_adapter(name, weights="random")


def test_the_public_api_resolves_lazily(tmp_path, tiny_data):
    code = "import sys, vision_lens; assert 'torch' not in sys.modules; print(sorted(vision_lens.__all__))"
    subprocess.run([sys.executable, "-c", code], check=True)
    import vision_lens

    assert all(getattr(vision_lens, name) is not None for name in vision_lens.__all__)
    # A small run: a fixed penalty fits each lens once, not once per strength of the held-out grid.
    run = vision_lens.run_pipeline(model="cifar:resnet8", weights="random", data=str(tiny_data),
                                   out=str(tmp_path / "run"), workers=0, max_iter=3, weight_decay=1e-3,
                                   fit_limit=12, eval_limit=6)
    assert isinstance(run, vision_lens.RunResults) and run.block_names == ["stem", "layer1.0", "layer2.0", "layer3.0"]
    with pytest.raises(TypeError, match="unknown options fit_limt"):
        vision_lens.run_pipeline(model="cifar:resnet8", data=str(tiny_data), out=str(tmp_path / "x"), fit_limt=3)
