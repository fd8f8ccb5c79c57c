"""A network in memory, named by a few arguments (vision_lens.adapters.module), or a small adapter class of one's
own: built, checked against what the arguments claim, and run through the whole pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import vision_lens
from vision_lens.adapters import ModelAdapter, ModelError, Preprocessing, create_adapter
from vision_lens.adapters.weights import CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD
from vision_lens.readout import Block, IdentityPath

CIFAR = Preprocessing(IMAGENET_MEAN, IMAGENET_STD)


class SmallCNN(nn.Module):
    """Two conv blocks, the last one's map averaged into a linear head: a network of one's own."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.features(self.stem(x).relu()).mean((2, 3)))


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=10)


VIT_ARGS = dict(blocks=["norm_pre", "blocks.0", "blocks.1"], unembed=["norm", "fc_norm", "head"],
                preprocessing=CIFAR, input_size=(32, 32), residual_stream=True, classes=CIFAR10_CLASSES)


@pytest.mark.unit
def test_a_token_model_in_memory_reads_its_class_token_with_identity_paths_and_an_exact_last_block():
    adapter = create_adapter(tiny_vit(), **VIT_ARGS)
    assert [b.name for b in adapter.blocks] == VIT_ARGS["blocks"] and adapter.name == "module:VisionTransformer"
    assert all(b.tokens == (1, 4, 4) and b.path is not None and b.stage == "stream" for b in adapter.blocks)
    assert adapter.class_folders == CIFAR10_CLASSES and adapter.weights_id.startswith("module:")
    assert not adapter.model.training and not any(p.requires_grad for p in adapter.model.parameters())


@pytest.mark.unit
def test_a_map_model_has_a_path_at_its_last_block_only_unless_it_is_one_stream():
    adapter = create_adapter(SmallCNN(), blocks=["stem", "features"], unembed=["head"], preprocessing=CIFAR,
                             input_size=(32, 32), model_name="lab:cnn")
    assert [b.path is not None for b in adapter.blocks] == [False, True] and adapter.name == "lab:cnn"
    assert [b.channels for b in adapter.blocks] == [8, 16] and adapter.class_folders is None


@pytest.mark.unit
@pytest.mark.parametrize("arguments, message", [
    (dict(blocks=["stem", "featurs"]), r"blocks: SmallCNN has no module 'featurs'; name modules as "
                                       r"model.named_modules\(\) does, e.g. stem, features"),
    (dict(blocks=["features", "stem"]), "they ran in the order stem, features, not as given"),
    (dict(blocks=["stem", "head"]), r"blocks: head gives \(2, 10\), not a map"),
    (dict(unembed=["fc"]), "unembed: SmallCNN has no module 'fc'"),
    (dict(blocks=["stem"]), r"does not take the last block stem's pooled output \(2, 8\)"),
    (dict(blocks=["stem", "features.0"]), "features.0's averaged map does not give the model's logits"),
    (dict(unembed=nn.Sequential(nn.ReLU(), SmallCNN().head)), "does not give the model's logits"),
    (dict(input_size=None), "preprocessing does not crop to a fixed size: pass input_size"),
    (dict(preprocessing=None), "needs preprocessing: blocks=.*preprocessing=Preprocessing"),
    (dict(classes=["a", "b"]), "classes: 2 names, but the model has 10 outputs"),
])
def test_wrong_arguments_stop_naming_the_argument_and_what_to_pass(arguments, message):
    given = dict(blocks=["stem", "features"], unembed=["head"], preprocessing=CIFAR, input_size=(32, 32)) | arguments
    with pytest.raises(ModelError, match=message):
        create_adapter(SmallCNN(), **given)


@pytest.mark.unit
def test_module_arguments_belong_to_a_module_and_a_module_brings_its_weights():
    with pytest.raises(TypeError, match="blocks describe a torch.nn.Module passed as the model"):
        create_adapter("cifar:resnet8", weights="random", blocks=["stem"])
    with pytest.raises(TypeError, match="a model in memory brings its own weights"):
        create_adapter(SmallCNN(), weights="random", **VIT_ARGS)


class MyAdapter(ModelAdapter):
    """The small adapter class a user writes where the arguments do not say enough."""

    input_size = (32, 32)

    def __init__(self):
        self.model, self.class_names, self.class_folders = SmallCNN(), CIFAR10_CLASSES, CIFAR10_CLASSES
        self.blocks = [Block("stem", "stem", 8), Block("features", "features", 16, IdentityPath.identity(16))]

    @property
    def unembed(self):
        return self.model.head

    @property
    def transform(self):
        return CIFAR.transform()


@pytest.mark.integration
@pytest.mark.parametrize("model, arguments", [(tiny_vit, VIT_ARGS), (MyAdapter, {})], ids=["module", "adapter"])
def test_a_model_in_memory_runs_through_the_pipeline_with_an_exact_logit_lens_at_its_last_block(
        model, arguments, tiny_data, tmp_path):
    run = vision_lens.run_pipeline(model=model(), data=str(tiny_data), out=str(tmp_path / "run"), workers=0,
                                   max_iter=3, weight_decay=1e-3, fit_limit=20, eval_limit=10, **arguments)
    last = f"layer_{len(run.block_names) - 1}"
    assert run.aggregate["logit"]["kl"][last] < 1e-6
    assert run.aggregate["tuned"]["kl"][last] is not None
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    expected = "module:VisionTransformer" if model is tiny_vit else "module:SmallCNN"
    assert (recorded["model"], recorded["weights"]) == (expected, "in-memory")
    with pytest.raises(TypeError, match="a model in memory brings its own weights"):
        vision_lens.run_pipeline(model=model(), weights="random", data=str(tiny_data), out=str(tmp_path / "x"),
                                 **arguments)
