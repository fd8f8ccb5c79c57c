"""The architecture registry: `vision-lens models` and the near matches are derived from it, a name is registered
once, and a family outside the package registers without touching it. (What every registration must hold is
tests/test_architecture_contract.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from vision_lens.adapters import (Architecture, ModelAdapter, ModelFamily, UnknownModelError, Weights, architectures,
                                  create_adapter, register, register_family, registry)
from vision_lens.adapters.listing import markdown, table
from vision_lens.readout import Block, IdentityPath


@pytest.mark.unit
def test_models_lists_every_registration_without_importing_torch():
    code = ("import sys; from vision_lens.cli import main; main(['models']); "
            "assert 'torch' not in sys.modules, 'listing imported torch'")
    listing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in listing.splitlines()[1:] if line[:1].strip() and ":" in line.split()[0]]
    assert names == [a.name for a in architectures()]
    assert "cifar10-vit.th, test acc 0.838" in listing  # read from the checkpoint's training record


@pytest.mark.unit
def test_the_markdown_table_has_every_registration():
    rows = markdown().splitlines()[2:]
    assert all(f"`{a.name}`" in "\n".join(rows) for a in architectures())
    assert sum(row.count("`") // 2 for row in rows) == len(architectures())
    assert table().count("\n") == 2 * len(architectures())


@pytest.mark.unit
@pytest.mark.parametrize("name, near", [("cifar:resnt20", "cifar:resnet20"), ("cifar:vitt", "cifar:vit"),
                                        ("timm:vit_smal_patch16_224", "timm:vit_small_patch16_224"),
                                        ("torchvision:resnet05", "torchvision:resnet50")])
def test_an_unknown_architecture_names_its_near_matches(name, near):
    with pytest.raises(UnknownModelError, match=f"near matches: .*{near}"):
        create_adapter(name, weights="random")


@pytest.mark.unit
def test_an_unknown_family_names_the_families():
    with pytest.raises(ValueError, match="one of the families cifar:…, hf:…, lucent:…, timm:…, torchvision:…"):
        create_adapter("keras:resnet20", weights="random")


class Tiny(nn.Module):
    """A two-block network that a family outside the package would bring."""

    def __init__(self, classes: int):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.second(self.first(x).relu()).mean((2, 3)))


class TinyAdapter(ModelAdapter):
    input_size = None

    def __init__(self, model: Tiny):
        self.model, self.class_names = model, [str(i) for i in range(model.head.out_features)]
        self.blocks = [Block("first", "first", 4, None), Block("second", "second", 4, IdentityPath.identity(4))]

    @property
    def unembed(self):
        return self.model.head

    @property
    def transform(self):
        from torchvision import transforms

        return transforms.ToTensor()


def build_tiny(arch: str, state: dict | None, num_classes: int | None) -> Tiny:
    if arch not in ("tiny", "tiny3"):
        raise UnknownModelError(f"--model lab:{arch}: the lab: family has lab:tiny and lab:tiny3")
    return Tiny(state["head.weight"].shape[0] if state is not None else num_classes or int(arch[4:] or 2))


TINY = ModelFamily(build_tiny, lambda model, arch, weights: TinyAdapter(model))


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test."""
    architectures()  # the built-in registrations first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.unit
def test_a_family_outside_the_package_registers_and_is_listed(scratch_registry, tmp_path):
    register(Architecture("lab:tiny", TINY, "first + second; linear head", blocks=2))
    adapter = create_adapter("lab:tiny", weights="random")
    assert [b.name for b in adapter.blocks] == ["first", "second"] and adapter.name == "lab:tiny"
    assert "lab:tiny" in table() and "`lab:tiny`" in markdown()
    torch.save(adapter.model.state_dict(), tmp_path / "tiny.pth")  # --weights PATH reads it back
    assert create_adapter("lab:tiny", weights=str(tmp_path / "tiny.pth")).weights_id != adapter.weights_id
    with pytest.raises(ValueError, match="--model lab:tiny has no published weights; pass --weights PATH"):
        create_adapter("lab:tiny")
    with pytest.raises(ValueError, match="lab:tiny is already registered"):
        register(Architecture("lab:tiny", TINY, "again"))


@pytest.mark.unit
def test_register_family_takes_every_name_its_build_knows(scratch_registry):
    register_family("lab", TINY, example="lab:tiny3", weights=Weights(None))
    assert create_adapter("lab:tiny3", weights="random").num_classes == 3
    with pytest.raises(UnknownModelError, match="the lab: family has lab:tiny and lab:tiny3"):
        create_adapter("lab:huge", weights="random")


@pytest.mark.integration
def test_the_public_api_resolves_lazily(tmp_path, tiny_data):
    code = ("import sys, vision_lens, vision_lens.adapters.registry; assert 'torch' not in sys.modules; "
            "print(sorted(vision_lens.__all__))")
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
