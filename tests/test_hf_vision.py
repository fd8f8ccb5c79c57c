"""transformers' image classifiers (``hf:``), offline: tiny random ViT and DeiT configs built here, saved with
save_pretrained beside an image processor config, and read back through the same code as a hub id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from vision_lens.adapters import ModelError, create_adapter  # noqa: E402
from vision_lens.adapters.weights import CIFAR10_CLASSES  # noqa: E402
from vision_lens.adapters.zoo import TransformersTask  # noqa: E402
from vision_lens.capture import BlockRecorder  # noqa: E402
from vision_lens.cli import main  # noqa: E402
from vision_lens.lenses import build_lenses  # noqa: E402
from vision_lens.readout import FeatureLayout  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)
LABELS = dict(id2label=dict(enumerate(CIFAR10_CLASSES)), label2id={c: i for i, c in enumerate(CIFAR10_CLASSES)})


def save_classifier(folder: Path, model_class: str, processor, labels: dict | None = None, seed: int = 0) -> Path:
    """A random ``model_class`` (ViT..., DeiT...) of the small config with the image processor beside it."""
    config_class = transformers.DeiTConfig if model_class.startswith("DeiT") else transformers.ViTConfig
    torch.manual_seed(seed)
    getattr(transformers, model_class)(config_class(**SMALL, **(labels or LABELS))).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


VIT_PROCESSOR = dict(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                     image_std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("hf") / "vit", "ViTForImageClassification",
                           transformers.ViTImageProcessor(**VIT_PROCESSOR))


@pytest.fixture(scope="module")
def deit(tmp_path_factory) -> Path:
    """A DeiT (class and distillation tokens) whose processor resizes to 35x37, then centre-crops 32: odd margins."""
    processor = transformers.DeiTImageProcessor(size={"height": 35, "width": 37}, crop_size={"height": 32, "width": 32})
    return save_classifier(tmp_path_factory.mktemp("hf") / "deit", "DeiTForImageClassification", processor)


def pictures(n: int = 3, size=(41, 50)) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.unit
@pytest.mark.parametrize("which", ["vit", "deit"])
def test_the_blocks_are_the_hidden_states_and_the_last_ones_logit_lens_is_exact(which, request):
    folder = request.getfixturevalue(which)
    adapter = create_adapter(f"hf:{folder}")
    prefix = "deit" if which == "deit" else "vit"
    assert [b.name for b in adapter.blocks] == [f"{prefix}.embeddings", f"{prefix}.encoder.layer.0",
                                                f"{prefix}.encoder.layer.1"]
    assert {b.tokens for b in adapter.blocks} == {(2 if which == "deit" else 1, 4, 4)}
    assert adapter.class_names == CIFAR10_CLASSES == adapter.class_folders
    x = torch.stack([adapter.transform(p) for p in pictures()])
    layout = FeatureLayout.of(adapter.blocks, 1)
    with torch.no_grad(), BlockRecorder(adapter, layout) as recorder:
        logits = adapter.logits(x)
    with torch.no_grad():
        own = adapter.model(pixel_values=x, output_hidden_states=True)
        reference = getattr(transformers, type(adapter.model).__name__).from_pretrained(folder).eval()(pixel_values=x)
    for pooled, hidden in zip(recorder.pooled, own.hidden_states, strict=True):
        torch.testing.assert_close(pooled, hidden[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(logits, reference.logits, rtol=0, atol=0)  # the saved weights, loaded
    lens = build_lenses(adapter, layout, ["logit"])["logit"]
    with torch.no_grad():
        torch.testing.assert_close(lens(recorder.pooled[-1], len(adapter.blocks) - 1), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
@pytest.mark.parametrize("which", ["vit", "deit"])
def test_the_preprocessing_is_the_image_processors(which, request):
    folder = request.getfixturevalue(which)
    adapter = create_adapter(f"hf:{folder}", weights="random")
    processor = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    for picture in pictures(size=(41, 50)) + pictures(size=(30, 27)):
        expected = torch.from_numpy(processor(picture, return_tensors="np").pixel_values[0])
        torch.testing.assert_close(adapter.transform(picture), expected, rtol=0, atol=2e-6)


@pytest.mark.unit
def test_random_weights_come_from_the_config_seeded_and_placeholder_labels_match_by_position(tmp_path):
    folder = save_classifier(tmp_path / "vit", "ViTForImageClassification",
                             transformers.ViTImageProcessor(**VIT_PROCESSOR), labels={"num_labels": 3})
    one, again = (create_adapter(f"hf:{folder}", weights="random", seed=1) for _ in range(2))
    other = create_adapter(f"hf:{folder}", weights="random", seed=2)
    assert one.weights_id == again.weights_id != other.weights_id
    assert one.weights_id.startswith("random-init:") and one.class_folders is None and one.num_classes == 3
    assert create_adapter(f"hf:{folder}", weights="random", num_classes=5).num_classes == 5


@pytest.mark.unit
def test_weights_path_reads_the_safetensors_that_save_pretrained_writes(vit):
    pretrained = create_adapter(f"hf:{vit}")
    from_file = create_adapter(f"hf:{vit}", weights=str(vit / "model.safetensors"))
    x = torch.stack([pretrained.transform(p) for p in pictures()])
    with torch.no_grad():
        assert torch.equal(pretrained.logits(x), from_file.logits(x))


@pytest.mark.unit
def test_the_task_takes_image_classifiers_only_and_never_raises(vit, tmp_path):
    task = TransformersTask("image-classification")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    assert task(str(vit))
    for arch in (str(lm), str(damaged), str(tmp_path), str(tmp_path / "absent"), "./absent", "a b/c d", "::"):
        assert task(arch) is False, arch


@pytest.mark.unit
def test_models_it_cannot_read_exactly_are_refused_by_name(tmp_path):
    teacher = save_classifier(tmp_path / "teacher", "DeiTForImageClassificationWithTeacher",
                              transformers.DeiTImageProcessor())
    with pytest.raises(ModelError, match="DeiTForImageClassificationWithTeacher averages two classifiers"):
        create_adapter(f"hf:{teacher}", weights="random")
    swin = tmp_path / "swin"
    swin.mkdir()
    (swin / "config.json").write_text(json.dumps({"architectures": ["SwinForImageClassification"],
                                                  "model_type": "swin"}))
    with pytest.raises(ModelError, match="names SwinForImageClassification; the hf: image classifiers vision-lens "
                                         "reads are ViTForImageClassification"):
        create_adapter(f"hf:{swin}", weights="random")


@pytest.mark.unit
def test_a_folder_without_its_image_processor_or_weights_says_what_to_save(tmp_path):
    folder = tmp_path / "bare"
    transformers.ViTConfig(**SMALL, architectures=["ViTForImageClassification"]).save_pretrained(folder)
    with pytest.raises(ModelError, match=r"no image processor config beside the model .*processor.save_pretrained"):
        create_adapter(f"hf:{folder}", weights="random")
    transformers.ViTImageProcessor(**VIT_PROCESSOR).save_pretrained(folder)
    with pytest.raises(ValueError, match="--weights pretrained: transformers cannot load its weights"):
        create_adapter(f"hf:{folder}")
    (folder / "preprocessor_config.json").write_text(json.dumps({**VIT_PROCESSOR, "do_pad": True,
                                                                 "image_processor_type": "ViTImageProcessor"}))
    with pytest.raises(ModelError, match="its image processor sets do_pad, which vision-lens does not reproduce"):
        create_adapter(f"hf:{folder}", weights="random")


@pytest.mark.integration
@pytest.mark.parametrize("weights", ["pretrained", "random"])
def test_vision_lens_run_on_a_transformers_vit_has_an_exact_logit_lens_at_its_last_block(weights, vit, tiny_data,
                                                                                         tmp_path):
    out = tmp_path / "run"
    main(["run", "--model", f"hf:{vit}", "--weights", weights, "--data", str(tiny_data), "--out", str(out),
          "--workers", "0", "--max-iter", "3", "--weight-decay", "1e-3", "--fit-limit", "20", "--eval-limit", "10"])
    aggregate = json.loads((out / "aggregate_metrics.json").read_text())
    assert aggregate["logit"]["kl"]["layer_2"] < 1e-6 and aggregate["tuned"]["kl"]["layer_0"] is not None
    run = json.loads((out / "run.json").read_text())
    assert run["blocks"] == ["vit.embeddings", "vit.encoder.layer.0", "vit.encoder.layer.1"]
