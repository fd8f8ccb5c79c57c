"""A full disk under the feature cache: checked before a file is created or grown, and a disk that fills up
anyway stops capture with a message naming the cache, keeping every committed row for the rerun to resume."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vision_lens import cache as cache_module
from vision_lens import capture as capture_module
from vision_lens.adapters import create_adapter
from vision_lens.cache import CacheError
from vision_lens.capture import capture
from vision_lens.data import ImageFolderSource
from vision_lens.readout import FeatureLayout

from .conftest import write_image_folder

pytestmark = pytest.mark.unit


class CountingSource(ImageFolderSource):
    loads: int = 0

    def load_with_content_id(self, index):
        self.loads += 1
        return super().load_with_content_id(index)


@pytest.fixture
def setting(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = CountingSource(**vars(ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=10,
                                                                             per_class=2))))
    return adapter, source, FeatureLayout.of(adapter.blocks, 1)


def run_capture(setting, root: Path):
    adapter, source, layout = setting
    return capture(adapter, source, np.arange(len(source)), root, np.arange(10), layout, batch_size=4, workers=0)


def rows(cache) -> list[np.ndarray]:
    return [np.asarray(a).copy() for a in (*cache.features, cache.logits, cache.labels)]


def test_a_disk_without_room_stops_before_the_first_forward_pass(setting, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "free_bytes", lambda path: 1000)
    with pytest.raises(CacheError) as caught:
        run_capture(setting, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()
    message = str(caught.value)
    assert message.startswith(f"not enough free disk space for the feature cache {folder}: it needs ")
    assert "MiB more and its disk has 0.0 MiB free; nothing had been captured yet" in message
    assert "pass --cache-dir a folder on a disk with room" in message
    assert setting[1].loads == 0 and not list(folder.glob("*.npy"))


def test_a_disk_that_fills_during_capture_keeps_the_committed_rows_and_resumes(setting, tmp_path, monkeypatch):
    monkeypatch.setattr(capture_module, "COMMIT_BYTES", 0)  # a commit after every batch of 4
    pwrite, calls = os.pwrite, []
    arrays = len(setting[0].blocks) + 2  # one pwrite per array and batch

    def fills_up(fd, data, offset):
        calls.append(1)
        if len(calls) > 2 * arrays + 3:  # in the third batch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fills_up)
    with pytest.raises(CacheError) as caught:
        run_capture(setting, tmp_path / "cache")
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert str(caught.value).startswith(f"the disk under the feature cache {folder} is full (block_3.npy: ")
    assert "the 8 rows captured before it are kept, and the same command resumes from them once there is room" in (
        str(caught.value))
    assert json.loads((folder / "manifest.json").read_text())["done"] == 8
    monkeypatch.setattr(os, "pwrite", pwrite)
    setting[1].loads = 0
    resumed = run_capture(setting, tmp_path / "cache")
    assert resumed.complete and setting[1].loads == 20 - 8  # only the rows not committed are captured again
    fresh = run_capture(setting, tmp_path / "fresh")
    for a, b in zip(rows(resumed), rows(fresh)):
        np.testing.assert_array_equal(a, b)


def test_a_manifest_that_cannot_be_written_leaves_the_cache_at_its_last_commit(setting, tmp_path, monkeypatch):
    monkeypatch.setattr(capture_module, "COMMIT_BYTES", 0)
    write, calls = cache_module.write_text_atomic, []

    def full_from_the_third(path, text):
        calls.append(1)
        if len(calls) >= 3:  # the first is the new cache's empty manifest, then one per batch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, text)

    monkeypatch.setattr(cache_module, "write_text_atomic", full_from_the_third)
    with pytest.raises(CacheError, match=r"is full \(manifest.json: .*the 4 rows captured before it are kept"):
        run_capture(setting, tmp_path / "cache")
    (manifest,) = (tmp_path / "cache").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["done"] == 4


def mount_small_disk(mount: Path) -> None:
    """A 1 MiB tmpfs on the new folder ``mount``; where it cannot be mounted (it needs root and a container that
    allows mounts), the test is skipped, in CI too: the command-level full-cache case of tests/test_faults.py
    fills the disk with a file-size limit instead, which needs no privilege."""
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and a container that allows mounts)")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount_small_disk(mount)
    try:
        yield mount
    finally:
        gc.collect()  # the caches' memory maps
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes free on ``disk`` (or as few as the file system's blocks allow)."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_really_full_disk_ends_in_a_message_not_a_bus_error(setting, small_disk, monkeypatch):
    # Before the fix, stores into the memory-mapped cache on a full disk killed the process with SIGBUS.
    adapter, source, _ = setting
    wide = (adapter, source, FeatureLayout.of(adapter.blocks, 4))  # rows of 9 KB: every batch takes fresh pages
    monkeypatch.setattr(capture_module, "COMMIT_BYTES", 0)
    filler = fill(small_disk, leave=8192)
    with pytest.raises(CacheError, match="not enough free disk space for the feature cache"):
        run_capture(wide, small_disk / "cache")
    filler.unlink()
    # The disk fills after the check (another writer, or a file system that cannot allocate ahead): here, right
    # after the first batch is committed.
    monkeypatch.setattr(cache_module, "free_bytes", lambda path: None)
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    commit = cache_module.FeatureCache.commit

    def commit_then_fill(self, *args):
        commit(self, *args)
        fill(small_disk, leave=0)

    monkeypatch.setattr(cache_module.FeatureCache, "commit", commit_then_fill)
    with pytest.raises(CacheError, match=r"the disk under the feature cache .* is full \(block_0.npy: .*the 4 rows "
                                         r"captured before it are kept, and the same command resumes from them"):
        run_capture(wide, small_disk / "cache")
    assert json.loads(next((small_disk / "cache").glob("*/manifest.json")).read_text())["done"] == 4
    monkeypatch.setattr(cache_module.FeatureCache, "commit", commit)
    filler.unlink()
    source.loads = 0
    resumed = run_capture(wide, small_disk / "cache")
    assert resumed.complete and source.loads == 20 - 4
