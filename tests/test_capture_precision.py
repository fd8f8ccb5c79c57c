"""bf16 autocast during capture changes pooled features and logits only within bfloat16 rounding."""

from __future__ import annotations

import numpy as np

from vision_lens.adapters import create_adapter
from vision_lens.capture import capture
from vision_lens.data import ImageFolderSource
from vision_lens.readout import FeatureLayout

from .conftest import write_image_folder


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
