"""Contract tests over the architecture registry: every registered architecture, an open-ended one through its
example, is built at random init and held to what every adapter promises and to what its registration states.

A new family is picked up by registering it: nothing here names a model. Every registration is built on the meta
device (shapes, no values) for its stated block count. The full contract (forward pass, logit lens, global state,
preprocessing, a checkpoint file read back) runs on each architecture of at most ``FULL_CONTRACT_PARAMETERS``
parameters and on the smallest of every family, which stands for its larger ones (the same code builds them): so
the whole set takes seconds. Each is built once (a module-scoped fixture, so its tests run together) and fed the
inputs its own preprocessing makes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from vision_lens.adapters import architectures, base, create_adapter
from vision_lens.adapters.weights import class_folders
from vision_lens.capture import BlockRecorder, TokenRecorder, hook_block
from vision_lens.lenses import build_lenses
from vision_lens.readout import FeatureLayout

pytestmark = pytest.mark.contract

REGISTERED = architectures()
FULL_CONTRACT_PARAMETERS = 15_000_000


def built_name(architecture) -> str:
    return architecture.example or architecture.name


class _NoInPlaceFill(TorchFunctionMode):
    """In-place ops on meta tensors (the weight init's ``normal_``, ``uniform_``, ...) do nothing: on the meta device
    they run as Python reference code, and would cost as long as filling real weights."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__") and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


_META: dict[str, "base.ModelAdapter"] = {}


def on_meta_device(name: str, monkeypatch: pytest.MonkeyPatch) -> "base.ModelAdapter":
    """The adapter built through its family's real build and wrap (module tree, blocks, identity paths, head) with
    meta tensors: no weights are allocated, so ResNet-152 costs nothing."""
    if name not in _META:
        hashed = base.state_dict_sha256
        with monkeypatch.context() as patch:
            patch.setattr(base, "state_dict_sha256",
                          lambda state: "meta" if any(t.is_meta for t in state.values()) else hashed(state))
            with torch.device("meta"), _NoInPlaceFill():
                _META[name] = create_adapter(name, weights="random")
        assert all(p.is_meta for p in _META[name].model.parameters())
    return _META[name]


def parameters(name: str, monkeypatch: pytest.MonkeyPatch) -> int:
    return sum(p.numel() for p in on_meta_device(name, monkeypatch).model.parameters())


def represented_by(architecture, monkeypatch) -> str | None:
    """None where the full contract runs on ``architecture``; else the smallest of its family, which stands for it."""
    size = parameters(built_name(architecture), monkeypatch)
    family = [built_name(a) for a in REGISTERED if a.family == architecture.family]
    smallest = min(family, key=lambda n: parameters(n, monkeypatch))
    return None if size <= FULL_CONTRACT_PARAMETERS or smallest == built_name(architecture) else smallest


def global_state() -> dict:
    """What building a model must leave as it was."""
    return {
        "torch RNG": torch.get_rng_state(), "numpy RNG": np.random.get_state()[1], "Python RNG": random.getstate(),
        "default dtype": torch.get_default_dtype(), "grad mode": torch.is_grad_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "registrations": [a.name for a in architectures()],
    }


def changed(before: dict, after: dict) -> list[str]:
    same = {k: torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else np.array_equal(v, after[k])
            if isinstance(v, np.ndarray) else v == after[k] for k, v in before.items()}
    return [k for k, equal in same.items() if not equal]


@pytest.fixture(scope="module", params=REGISTERED, ids=built_name)
def built(request):
    """``(registration, adapter, what its build changed globally)``."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        stands_in = represented_by(request.param, monkeypatch)
    if stands_in is not None:
        pytest.skip(f"over {FULL_CONTRACT_PARAMETERS:,} parameters: {stands_in} stands for its family")
    torch.manual_seed(0)
    before = global_state()
    adapter = create_adapter(built_name(request.param), weights="random", seed=0)
    return request.param, adapter, changed(before, global_state())


def images(adapter, n: int = 2) -> torch.Tensor:
    """``n`` random images through the adapter's own preprocessing, at the size it requires, else 48x40; for a
    model that reads text, ``n`` windows of 8 random tokens."""
    if adapter.data_kind == "text":
        return torch.randint(0, adapter.num_classes, (n, 8), generator=torch.Generator().manual_seed(0))
    height, width = adapter.input_size or (40, 48)
    generator = np.random.default_rng(0)
    pictures = [Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(n)]
    return torch.stack([adapter.transform(p) for p in pictures])


def test_building_changes_no_global_state(built):
    _, adapter, changes = built
    assert not changes, f"building changed: {', '.join(changes)}"
    assert not adapter.model.training and not any(p.requires_grad for p in adapter.model.parameters())


@pytest.mark.parametrize("architecture", REGISTERED, ids=built_name)
def test_every_registration_builds_with_its_stated_block_count(architecture, monkeypatch):
    adapter = on_meta_device(built_name(architecture), monkeypatch)
    modules = dict(adapter.model.named_modules())
    assert all(b.module in modules for b in adapter.blocks)
    if architecture.blocks is not None:
        assert len(adapter.blocks) == architecture.blocks


def test_blocks_are_modules_that_run_once_each_in_forward_order_with_their_stated_width(built):
    _, adapter, _ = built
    assert len({b.name for b in adapter.blocks}) == len(adapter.blocks)
    ran, widths = [], {}

    def hook(name):
        def record(output):
            ran.append(name)
            # A map (N, C, H, W) or a token sequence (N, tokens, C).
            widths[name] = output.shape[1] if output.dim() == 4 else output.shape[-1]
        return record

    handles = [hook_block(adapter.model, b, hook(b.name)) for b in adapter.blocks]
    try:
        with torch.no_grad():
            adapter.logits(images(adapter))
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [b.name for b in adapter.blocks]
    assert widths == {b.name: b.channels for b in adapter.blocks}


def test_the_last_blocks_logit_lens_is_the_models_output(built):
    _, adapter, _ = built
    last = adapter.blocks[-1]
    assert last.path is not None and last.path.stride == 1 and last.channels == adapter.head_dim
    layout = FeatureLayout.of(adapter.blocks, 1)
    x = images(adapter)
    if adapter.data_kind == "text":  # every token position a row
        with torch.no_grad(), TokenRecorder(adapter) as recorder:
            windows, positions = x.shape
            recorder.select(torch.arange(windows).repeat_interleave(positions), torch.arange(positions).repeat(windows))
            logits = adapter.logits(x).flatten(0, 1)
        last = recorder.rows[-1]
    else:
        with torch.no_grad(), BlockRecorder(adapter, layout) as recorder:
            logits = adapter.logits(x)
        last = recorder.pooled[-1]
    lens = build_lenses(adapter, layout, ["logit"])["logit"]
    with torch.no_grad():
        decoded = lens(last, len(adapter.blocks) - 1)
    torch.testing.assert_close(decoded, logits, rtol=1e-5, atol=1e-5 * max(1.0, float(logits.abs().max())))


@pytest.mark.parametrize("architecture", REGISTERED, ids=built_name)
def test_the_weights_entry_states_the_preprocessing_and_class_order(architecture, monkeypatch):
    adapter = on_meta_device(built_name(architecture), monkeypatch)
    entry = architecture.weights
    if entry.classes is not None:
        assert adapter.class_folders == class_folders(entry.classes)
    if entry.preprocessing is None:
        pytest.skip(f"{architecture.name}: the preprocessing is read from each model's config")
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (260, 300, 3), dtype=np.uint8))
    if adapter.input_size is not None:
        picture = picture.resize(adapter.input_size[::-1])
    torch.testing.assert_close(adapter.transform(picture), entry.preprocessing.transform()(picture),
                               rtol=0, atol=1e-5)


def test_the_unembedding_takes_any_leading_dimensions(built):
    """The fitters and the transfer matrices run several translators' outputs through it at once."""
    _, adapter, _ = built
    h = torch.randn(3, 2, adapter.head_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = adapter.unembed(h)
        one_by_one = torch.stack([adapter.unembed(row) for row in h])
    assert batched.shape == (3, 2, adapter.num_classes)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_random_weights_saved_to_a_file_load_back_through_weights_path(built, tmp_path):
    """``--weights PATH`` reads the same network back (BatchNorm statistics randomised, so they must load too)."""
    architecture, adapter, _ = built
    generator = torch.Generator().manual_seed(2)
    state = {k: torch.rand(v.shape, generator=generator) + 0.5 if k.endswith(("running_mean", "running_var")) else v
             for k, v in adapter.model.state_dict().items()}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = create_adapter(built_name(architecture), weights=str(path))
    adapter.model.load_state_dict(state)
    x = images(adapter)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), adapter.logits(x))
    assert [b.name for b in loaded.blocks] == [b.name for b in adapter.blocks]


@pytest.mark.parametrize("architecture", [a for a in REGISTERED if a.weights.kind != "none" and not a.open_ended],
                         ids=built_name)
def test_the_weights_entry_states_what_its_publisher_publishes(architecture):
    """Facts the registration restates from a library are the library's: URLs, weights names, accuracies, hub ids."""
    entry, (namespace, arch) = architecture.weights, architecture.name.split(":")
    if namespace == "torchvision":
        from torchvision import models

        published = models.get_model_weights(arch).DEFAULT
        assert (entry.source, entry.name) == (published.url, f"{type(published).__name__}.{published.name}")
        assert entry.accuracy == pytest.approx(published.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100, abs=1e-9)
    elif namespace == "timm":
        from timm.models import get_pretrained_cfg

        assert entry.source == f"hf-hub:{get_pretrained_cfg(arch).hf_hub_id}"
    elif namespace == "lucent":
        from lucent.modelzoo.inceptionv1.InceptionV1 import model_urls

        assert entry.source == model_urls[arch]
    elif entry.kind == "url":  # a torch.hub file: its name carries the sha256 prefix that torch.hub checks
        assert entry.sha256() and entry.source.rsplit("/", 1)[-1].startswith(f"{arch}-{entry.sha256()}")
    else:
        assert entry.kind == "file" and entry.train.startswith("python scripts/train_cifar.py --arch ")
