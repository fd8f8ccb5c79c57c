"""ImageNet adapters (torchvision GoogLeNet and ResNets, timm ResNets, lucent InceptionV1), offline.

Published weights cannot be downloaded here, so every test uses seeded random
initialisations, saved to files where a test needs a checkpoint and loaded back
through the adapters' own code paths.
"""

from __future__ import annotations

import functools
import json
import urllib.error

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from torch import nn

from vision_lens.adapters import ModelAdapter, WeightsError, create_adapter
from vision_lens.adapters.base import file_sha256
from vision_lens.capture import BlockRecorder
from vision_lens.cli import main
from vision_lens.lenses import LensConfig, LogitLens
from vision_lens.readout import FeatureLayout
from vision_lens.resources import devkit_synsets

from .conftest import write_image_folder

GOOGLENET_BLOCKS = [
    "conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
    "inception4c", "inception4d", "inception4e", "inception5a", "inception5b",
]
LUCENT_BLOCKS = [
    "conv2d0", "conv2d1", "conv2d2", "mixed3a", "mixed3b", "mixed4a", "mixed4b",
    "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b",
]
RESNET_DEPTHS = {
    "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3),
}
CLASSES = 3  # random-init heads; lucent's is fixed at 1008


@pytest.fixture(autouse=True)
def _small_cpu_work():
    """One thread, denormals flushed: these small forward passes then run several times faster.

    Thread synchronisation dominates tiny batches (badly so on a busy 2-core
    machine), and deep random-init networks produce denormal floats, which are
    slow on CPU; flushing them to zero changes nothing that these tests compare.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def random_adapter(name: str) -> ModelAdapter:
    """A seeded random-init adapter, shared by the tests that only read it."""
    return create_adapter(name, weights="random", **({} if name.startswith("lucent:") else {"num_classes": CLASSES}))


def resnet_block_names(depths) -> list[str]:
    return ["stem"] + [f"layer{s + 1}.{b}" for s, n in enumerate(depths) for b in range(n)]


def images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters, so identity paths are not near-identity maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def run_blocks(adapter: ModelAdapter, x: torch.Tensor):
    """One forward pass: (full output map of every block, pooled features from capture, logits)."""
    full = {}
    handles = [
        adapter.model.get_submodule(b.module).register_forward_hook(
            lambda module, inputs, output, name=b.name: full.__setitem__(name, output)
        )
        for b in adapter.blocks
    ]
    with torch.no_grad(), BlockRecorder(adapter, FeatureLayout.of(adapter.blocks, 1)) as recorder:
        logits = adapter.logits(x)
    for handle in handles:
        handle.remove()
    return full, recorder.pooled, logits


def logit_lens(adapter: ModelAdapter) -> LogitLens:
    return LogitLens(LensConfig.from_adapter(adapter, FeatureLayout.of(adapter.blocks, 1), "logit"), adapter)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the size of the logits."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


BLOCK_CASES = [
    # (model, block names, channels that the architecture fixes)
    ("torchvision:googlenet", GOOGLENET_BLOCKS, {"inception3a": 256, "inception4a": 512, "inception5b": 1024}),
    ("lucent:inceptionv1", LUCENT_BLOCKS, {"mixed3b": 480, "mixed4a": 508, "mixed4e": 832, "mixed5b": 1024}),
    *[
        (f"torchvision:{arch}", resnet_block_names(depths),
         {"stem": 64, f"layer4.{depths[3] - 1}": 512 if arch in ("resnet18", "resnet34") else 2048})
        for arch, depths in RESNET_DEPTHS.items()
    ],
    ("timm:resnet26d", resnet_block_names((2, 2, 2, 2)), {"layer1.0": 256, "layer4.1": 2048}),
    ("timm:legacy_seresnet18", resnet_block_names(RESNET_DEPTHS["resnet18"]), {"stem": 64, "layer4.1": 512}),
]


@pytest.mark.unit
@pytest.mark.parametrize("name, names, channels", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_blocks_are_the_architectures_named_blocks_with_their_widths(name, names, channels):
    """The names and widths each architecture fixes; that blocks run in forward order and the last block's logit
    lens is the model's output is every architecture's contract (tests/test_architecture_contract.py)."""
    adapter = random_adapter(name)
    assert [b.name for b in adapter.blocks] == names
    assert {k: adapter.blocks[names.index(k)].channels for k in channels} == channels


@pytest.mark.unit
def test_inception_blocks_have_no_path_but_the_last():
    for name in ("torchvision:googlenet", "lucent:inceptionv1"):
        assert [b.path is None for b in random_adapter(name).blocks] == [True] * 11 + [False]


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, side",
    [
        ("torchvision:resnet18", 224),  # layer1.0 has no downsample: the stem's path starts at layer2
        ("torchvision:resnet50", 104),  # layer1.0.downsample has stride 1; odd maps (13, 7) on the way
        ("timm:resnet18d", 224),  # avg_down: 2x2 average pool, 1x1 conv, BN
    ],
)
def test_logit_lens_follows_the_real_shortcuts(tmp_path, name, side):
    """At every block, the logit lens on captured features = the real downsample modules on the full map, GAP, fc."""
    model = create_adapter(name, weights="random", num_classes=CLASSES).model
    randomise_batchnorm(model)
    torch.save(model.state_dict(), tmp_path / "weights.pth")  # paths are read off when the adapter is built
    adapter = create_adapter(name, weights=str(tmp_path / "weights.pth"))
    full, pooled, _ = run_blocks(adapter, images(2, side))
    lens = logit_lens(adapter)
    for k, block in enumerate(adapter.blocks):
        assert all(p.endswith(".downsample") for p in block.path.source)
        with torch.no_grad():
            h = full[block.name]
            for module in block.path.source:
                h = adapter.model.get_submodule(module)(h)
            expected = adapter.unembed(h.mean((2, 3)))
        close(lens(pooled[k], k), expected)


@pytest.mark.unit
def test_resnet_paths_and_strides():
    r18 = random_adapter("torchvision:resnet18")
    blocks = {b.name: b for b in r18.blocks}
    assert blocks["stem"].path.source == ("layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample")
    assert [blocks[n].path.stride for n in ("stem", "layer1.1", "layer2.0", "layer3.1", "layer4.0")] == [8, 8, 4, 2, 1]
    # Blocks of a stage share one path module.
    assert blocks["layer1.0"].path is blocks["layer1.1"].path is blocks["stem"].path
    r50 = random_adapter("torchvision:resnet50")
    assert r50.blocks[0].path.source[0] == "layer1.0.downsample" and r50.blocks[0].path.stride == 8
    # timm's avg_down averages instead of subsampling: the path reads the full map.
    assert {b.path.stride for b in random_adapter("timm:resnet26d").blocks} == {1}
    # A GroupNorm shortcut is not per-pixel affine: no path until the last stage.
    gn = create_adapter("timm:resnet50_gn", weights="random")
    assert all((b.path is None) == (not b.name.startswith("layer4")) for b in gn.blocks)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:googlenet", "lucent:inceptionv1", "timm:resnet18d"])
def test_local_weights_give_identical_logits(tmp_path, name):
    original = random_adapter(name)
    path = tmp_path / "weights.pth"
    torch.save(original.model.state_dict(), path)
    loaded = create_adapter(name, weights=str(path))
    assert loaded.weights_id == file_sha256(path)
    assert [b.name for b in loaded.blocks] == [b.name for b in original.blocks]
    x = images(1, 224)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), original.logits(x))


@pytest.mark.unit
@pytest.mark.parametrize("name, other", [("torchvision:resnet18", "torchvision:resnet34"), ("timm:resnet18d", "timm:resnet34d")])
def test_a_checkpoint_of_another_architecture_lists_the_keys(tmp_path, name, other):
    path = tmp_path / "weights.pth"
    torch.save(random_adapter(name).model.state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys") as info:
        create_adapter(other, weights=str(path))
    assert "layer1.2" in str(info.value)


@pytest.mark.unit
def test_googlenet_aux_classifiers_read_full_block_maps(tmp_path, monkeypatch):
    adapter = random_adapter("torchvision:googlenet")
    assert set(adapter.aux_classifiers) == {"inception4a", "inception4d"}
    full, _, _ = run_blocks(adapter, images(2, 224))
    with torch.no_grad():
        for block, aux in adapter.aux_classifiers.items():
            assert aux(full[block]).shape == (2, CLASSES)
    # A checkpoint without the auxiliary heads loads, and reports none.
    state = adapter.model.state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("aux")}, tmp_path / "no-aux.pth")
    assert not create_adapter("torchvision:googlenet", weights=str(tmp_path / "no-aux.pth")).aux_classifiers
    # A copy of torchvision's published file: its auxiliary heads were never trained, so none are reported.
    torch.save(state, tmp_path / "published.pth")
    monkeypatch.setattr("vision_lens.adapters.base.file_sha256", lambda path: "1378be20" + "0" * 56)
    assert not create_adapter("torchvision:googlenet", weights=str(tmp_path / "published.pth")).aux_classifiers


@pytest.mark.unit
def test_lucent_logits_are_the_pre_softmax_head_output():
    adapter = random_adapter("lucent:inceptionv1")
    assert (adapter.num_classes, adapter.head_dim) == (1008, 1024)
    x = images(1, 224)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x).softmax(-1), adapter.model(x))
    white = adapter.transform(Image.new("RGB", (300, 260), (255, 255, 255)))
    torch.testing.assert_close(white, torch.full((3, 224, 224), 255.0 - 117))  # Lucid's x * 255 - 117


@pytest.mark.unit
def test_lucent_outputs_1_to_1000_are_the_devkit_classes():
    adapter = random_adapter("lucent:inceptionv1")
    synsets = sorted(s for s, _ in devkit_synsets())  # an ImageNet ImageFolder's class order
    assert len(synsets) == len(set(synsets)) == 1000
    outputs = adapter.label_map(synsets)
    assert sorted(outputs.tolist()) == list(range(1, 1001))  # a permutation; output 0 and 1001..1007 are no class
    assert outputs[synsets.index("n02119789")] == 1  # kit fox, the devkit's ID 1
    assert outputs[synsets.index("n03255030")] == 1000  # dumbbell, ID 1000
    assert adapter.class_names[1] == "kit fox" and adapter.class_names[0] == "dummy" and len(adapter.class_names) == 1008
    # A class that is no ILSVRC-2012 synset is unlabelled; data with none at all is refused.
    assert adapter.label_map(["n02119789", "extra"]).tolist() == [1, -1]
    with pytest.raises(ValueError, match="ILSVRC-2012 synset"):
        adapter.label_map(["class_0", "class_1"])


@pytest.mark.unit
def test_preprocessing_and_class_names_follow_the_published_weights():
    image = Image.new("RGB", (300, 260))
    r50 = create_adapter("torchvision:resnet50", weights="random")
    assert (r50.transform.resize_size, r50.transform.crop_size) == ([232], [224])  # IMAGENET1K_V2's
    timm_r50 = create_adapter("timm:resnet50", weights="random")
    for adapter in (r50, timm_r50):
        assert adapter.transform(image).shape == (3, 224, 224)
        assert adapter.class_names[:2] == ["tench", "goldfish"]


@pytest.mark.unit
def test_imagenet_outputs_are_matched_to_synset_folders_by_name():
    synsets = sorted(s for s, _ in devkit_synsets())
    for name in ("torchvision:resnet18", "timm:resnet18"):
        adapter = create_adapter(name, weights="random")  # 1000 ImageNet outputs
        assert adapter.class_folders == synsets
        assert adapter.label_map(synsets).tolist() == list(range(1000))
        with pytest.raises(ValueError, match=r"unknown to the model: tench; missing: n01440764\b"):
            adapter.label_map(["tench", *synsets[1:]])


@pytest.mark.unit
def test_building_an_adapter_changes_neither_batchnorm_statistics_nor_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    adapter = create_adapter("timm:resnet18", weights="random", seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # seeded on a forked generator
    # timm's build reads the identity paths (to check the layout) while the model is still in training mode.
    for name in ("layer2.0.downsample.1", "layer3.0.downsample.1", "layer4.0.downsample.1"):
        bn = adapter.model.get_submodule(name)
        assert bn.running_mean.abs().max() == 0 and torch.all(bn.running_var == 1), name
    again = create_adapter("timm:resnet18", weights="random", seed=5)
    assert again.weights_id == adapter.weights_id  # still seeded by seed


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: torch.hub downloads fail as urllib does offline, the Hugging Face hub is offline, caches are empty."""

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.unit
@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:googlenet", "lucent:inceptionv1", "timm:resnet18"])
def test_pretrained_by_name_offline_says_how_to_pass_a_file(offline, name):
    with pytest.raises(WeightsError, match="--weights PATH"):
        create_adapter(name)


@pytest.mark.unit
def test_other_timm_layouts_are_refused():
    # resnetv2's stages.N.blocks.M and regnet's are no registered layout; ViTs, MBConv networks and ConvNeXt are.
    for name in ("timm:resnetv2_50", "timm:regnetx_002"):
        with pytest.raises(ValueError, match="not supported yet"):
            create_adapter(name, weights="random")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:googlenet", "timm:resnet18", "lucent:inceptionv1",
                                  "timm:mobilenetv3_small_050", "timm:convnext_atto"])
def test_cli_run_on_an_imagefolder(tmp_path, name):
    """``vision-lens run`` end to end on 224x224 images of 3 classes, from a saved checkpoint."""
    weights = tmp_path / "weights.pth"
    torch.save(random_adapter(name).model.state_dict(), weights)
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("test", 2)):
        write_image_folder(data / split, classes=CLASSES, per_class=2, size=224, seed=seed)
        if name.startswith("lucent:"):  # lucent's outputs are ImageNet synsets: name the class folders so
            for c, (synset, _) in enumerate(devkit_synsets()[:CLASSES]):
                (data / split / f"class_{c}").rename(data / split / synset)
    out = tmp_path / "out"
    code = main([
        "run", "--model", name, "--weights", str(weights), "--data", str(data), "--out", str(out),
        "--workers", "0", "--batch-size", "6", "--max-iter", "2",
        "--weight-decay", "1e-3",  # one fit per lens, not one per strength of the held-out grid
    ])
    assert code == 0
    aggregate = json.loads((out / "aggregate_metrics.json").read_text())
    layers = json.loads((out / "layers.json").read_text())
    last = f"layer_{len(layers) - 1}"
    assert layers[last] == {"resnet18": "layer4.1", "googlenet": "inception5b", "inceptionv1": "mixed5b",
                            "mobilenetv3_small_050": "blocks.5.0", "convnext_atto": "stages.3.blocks.1"}[name.split(":")[1]]
    assert aggregate["logit"]["kl"][last] is not None
    # The ResNets' stems have a linear path to the head; the first blocks of the Inceptions, MBConv and ConvNeXt none.
    no_path = ("googlenet", "inceptionv1", "mobilenetv3_small_050", "convnext_atto")
    assert (aggregate["logit"]["kl"]["layer_0"] is None) == (name.split(":")[1] in no_path)
    assert (out / "report.html").is_file() and (out / "layerwise.png").is_file()
    # Every model reports label metrics, lucent's through the devkit class map.
    assert aggregate["tuned"]["acc"][last] is not None and aggregate["baseline"]["acc"]["final"] is not None
    assert "linear_probe" in aggregate


@pytest.mark.unit
def test_a_convnext_that_normalises_the_map_before_pooling_is_read_at_that_norm():
    """convnext_tiny_hnf applies norm_pre (a LayerNorm2d, per pixel) to the last block's map: its output, the block
    ``features``, is the head's input, and no stage block has a path."""
    adapter = create_adapter("timm:convnext_tiny_hnf", weights="random", num_classes=CLASSES)
    assert adapter.blocks[-1].name == "features" and adapter.blocks[-1].module == "norm_pre"
    assert all(b.path is None for b in adapter.blocks[:-1]) and adapter.unembed is adapter.model.head.fc
    full, pooled, logits = run_blocks(adapter, images(2, 64))
    close(logit_lens(adapter)(pooled[-1], len(adapter.blocks) - 1), logits)
