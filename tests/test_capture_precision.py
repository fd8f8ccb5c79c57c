"""The GPU path on CPU: bf16 autocast changes pooled features and logits only within bfloat16
rounding, and a channels_last input changes no value beyond float32 summation order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.capture import capture
from vision_lens.data import ImageFolderSource
from vision_lens.readout import FeatureLayout

from .conftest import write_image_folder

pytestmark = pytest.mark.unit


def test_bf16_capture_stays_close_to_fp32_and_float32(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=2, per_class=4))
    layout = FeatureLayout.of(adapter.blocks, 2)
    args = (adapter, source, np.arange(8), tmp_path / "cache", np.arange(2), layout)
    fp32 = capture(*args, batch_size=4, workers=0)
    bf16 = capture(*args, batch_size=4, workers=0, bf16=True)
    assert bf16.path != fp32.path  # the precision is part of the cache key
    for a, b in zip([*fp32.features, fp32.logits], [*bf16.features, bf16.logits]):
        a, b = np.asarray(a), np.asarray(b)
        assert b.dtype == np.float32
        # bfloat16 keeps 8 significant bits: relative error of a few 1e-3 per op, a few 1e-2 through the net.
        np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * np.abs(a).max())
        assert not np.array_equal(a, b)  # autocast did run in bf16


@pytest.mark.parametrize("model", ["cifar:resnet8", "cifar:inceptionv1"])
def test_channels_last_capture_keeps_every_value(tmp_path, model):
    adapter = create_adapter(model, weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=2, per_class=4))
    layout = FeatureLayout.of(adapter.blocks, 2)

    def capture_into(root, **kw):
        return capture(adapter, source, np.arange(8), root, np.arange(2), layout, batch_size=4, workers=0, **kw)

    plain = capture_into(tmp_path / "plain")
    spatial = []  # for each block output map larger than 1x1 that reached a hook: is it channels_last?
    hooks = [adapter.model.get_submodule(b.module).register_forward_hook(
        lambda m, i, out: spatial.append(out.is_contiguous(memory_format=torch.channels_last))
        if out.shape[-1] > 1 else None) for b in adapter.blocks]
    try:
        last = capture_into(tmp_path / "last", channels_last=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert spatial and all(spatial)  # the hooks pooled channels_last maps
    assert last.path.name == plain.path.name  # the layout is not part of the cache key
    for a, b in zip([*plain.features, plain.logits], [*last.features, last.logits]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5 * np.abs(a).max())
