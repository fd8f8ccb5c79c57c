"""data.phased_batches: the loader's workers decode a phase while the caller waits, never ahead of it; capture
on the CPU loads that way and keeps every value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from vision_lens.adapters import create_adapter
from vision_lens.capture import capture, loads_in_phases
from vision_lens.data import ImageFolderSource, phased_batches
from vision_lens.readout import FeatureLayout

from .conftest import write_image_folder

pytestmark = pytest.mark.unit


class Logged(Dataset):
    """Item i is a (3, 4, 4) tensor of i; loading it leaves a file named i (from whichever process loads it)."""

    def __init__(self, n: int, folder):
        self.n, self.folder = n, folder

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        (self.folder / str(i)).touch()
        return torch.full((3, 4, 4), float(i)), i


def test_phases_keep_the_order_and_no_worker_runs_ahead_of_its_phase(tmp_path):
    per_image = 3 * 4 * 4 * 4
    # Batches of 3 and 2 workers: a first phase of one batch per worker (6 rows), then phases of 12 rows.
    ends = [6, 18, 23]
    seen = []
    for images, labels in phased_batches(Logged(23, tmp_path), 3, 2, phase_bytes=12 * per_image):
        end = next(e for e in ends if labels[-1] < e)
        decoded = {int(p.name) for p in tmp_path.iterdir()}
        assert decoded == set(range(end))  # the whole phase before its first batch, and nothing of the next
        assert torch.equal(images[:, 0, 0, 0], labels.float())
        seen += labels.tolist()
    assert seen == list(range(23))


def test_capture_on_the_cpu_decodes_in_phases_and_keeps_every_value(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=10, per_class=3))
    layout = FeatureLayout.of(adapter.blocks, 1)
    assert loads_in_phases("cpu") and not loads_in_phases("cuda")
    caches = [capture(adapter, source, np.arange(30), tmp_path / f"cache-{w}", np.arange(10), layout, batch_size=4,
                      workers=w) for w in (0, 2)]
    for a, b in zip(*[[*c.features, c.logits, c.labels] for c in caches]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
