"""Mechanics of capture, cache, fitting and the command line, on tiny random-init models and random images."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.adapters.base import ClassMatchError
from vision_lens import capture as capture_module
from vision_lens.capture import capture, capture_key
from vision_lens.cli import main
from vision_lens.data import DataError, ImageFolderSource, select
from vision_lens.readout import FeatureLayout

from .conftest import write_image_folder


class Crash(RuntimeError):
    pass


class CrashingSource(ImageFolderSource):
    """Loads normally until ``crash_at`` images were loaded, then dies like a killed run; counts loads."""

    crash_at: int | None = None
    loads: int = 0

    def load_with_content_id(self, index):
        if self.crash_at is not None and self.loads >= self.crash_at:
            raise Crash("simulated crash")
        self.loads += 1
        return super().load_with_content_id(index)


@pytest.mark.unit
def test_capture_commits_every_commit_bytes_of_rows(tmp_path, monkeypatch):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=10, per_class=2))
    layout = FeatureLayout.of(adapter.blocks, 1)
    row = 4 * (sum(layout.width(k) for k in range(len(adapter.blocks))) + adapter.num_classes) + 8  # int64 label
    monkeypatch.setattr(capture_module, "COMMIT_BYTES", 7 * row)  # a commit once 7 rows are written
    cache = capture(adapter, source, np.arange(20), tmp_path / "cache", np.arange(10), layout, batch_size=4, workers=0)
    assert cache.row_bytes == row
    assert [chunk["stop"] for chunk in cache.manifest["chunks"]] == [8, 16, 20]  # whole batches; the rest at the end


@pytest.mark.unit
def test_cache_resumes_after_a_crash(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    root = write_image_folder(tmp_path / "imgs", classes=10, per_class=3)
    source = CrashingSource(**vars(ImageFolderSource.scan(root)))
    indices = np.arange(len(source))
    labels = np.arange(10)
    source.crash_at = 12
    with pytest.raises(Crash):
        capture(adapter, source, indices, tmp_path / "cache", labels, FeatureLayout.of(adapter.blocks, 1), batch_size=4, workers=0)
    manifest = json.loads(next((tmp_path / "cache").glob("*/manifest.json")).read_text())
    assert manifest["done"] == 12  # the three whole batches written before the crash are committed
    source.crash_at, source.loads = None, 0
    resumed = capture(adapter, source, indices, tmp_path / "cache", labels, FeatureLayout.of(adapter.blocks, 1), batch_size=4, workers=0)
    assert source.loads == len(indices) - 12  # only the rest was loaded again
    assert resumed.complete
    fresh = capture(adapter, ImageFolderSource.scan(root), indices, tmp_path / "fresh", labels, FeatureLayout.of(adapter.blocks, 1), batch_size=7, workers=0)
    for a, b in zip([*resumed.features, resumed.logits, resumed.labels], [*fresh.features, fresh.logits, fresh.labels]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # A complete cache is reused without touching the images: the loader's hashes of the bytes it decoded are in
    # the hash index, each under the file's size and mtime, so checking the rows' images only stats the files.
    source.loads = 0
    capture(adapter, source, indices, tmp_path / "cache", labels, FeatureLayout.of(adapter.blocks, 1), batch_size=4, workers=0)
    assert source.loads == 0
    with sqlite3.connect(tmp_path / "cache" / "content-hashes.sqlite") as db:
        index = {path: entry for path, *entry in db.execute("SELECT path, size, mtime_ns, sha256 FROM files")}
    for path in source.paths:
        stat = os.stat(path)
        assert index[os.path.abspath(path)] == [stat.st_size, stat.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()]


@pytest.mark.unit
def test_an_image_gone_after_the_scan_is_named(tmp_path):
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=2, per_class=2))
    image, content_id, (size, _) = source.load_with_content_id(0)
    assert content_id == hashlib.sha256(Path(source.paths[0]).read_bytes()).hexdigest() and size > 0
    Path(source.paths[1]).unlink()
    for load in (source.load_with_content_id, source.load):  # capture's read, and a plain one (preflight's)
        with pytest.raises(DataError, match=rf"cannot read image {source.paths[1]} .*Replace the file \(same name\)"):
            load(1)


@pytest.mark.unit
def test_capture_returns_the_free_heap_every_few_batches(tmp_path, monkeypatch):
    from vision_lens import capture as capture_module

    trims = []
    monkeypatch.setattr(capture_module, "_malloc_trim", trims.append)
    monkeypatch.setattr(capture_module, "TRIM_EVERY", 2)
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=2, per_class=5))
    capture(adapter, source, np.arange(10), tmp_path / "cache", np.arange(2), FeatureLayout.of(adapter.blocks, 1),
            batch_size=2, workers=0)
    assert trims == [0, 0]  # batches 2 and 4 of 5
    assert (capture_module._heap_trimmer() is not None) == (platform.libc_ver()[0] == "glibc")


@pytest.mark.unit
def test_cache_key_changes_with_settings(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=0)
    source = ImageFolderSource.scan(write_image_folder(tmp_path / "imgs", classes=2, per_class=2))
    layout = FeatureLayout.of(adapter.blocks, 1)
    key = capture_key(adapter, source, np.arange(4), layout)
    assert key != capture_key(adapter, source, np.arange(3), layout)
    assert key != capture_key(adapter, source, np.arange(4), FeatureLayout.of(adapter.blocks, 2))
    other = create_adapter("cifar:resnet8", weights="random", seed=1)
    assert key != capture_key(other, source, np.arange(4), layout)


@pytest.mark.unit
def test_select_is_seeded_and_sorted():
    a, b = select(100, 10, seed=3), select(100, 10, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 10
    assert not np.array_equal(a, select(100, 10, seed=4))
    assert np.array_equal(select(5, None, 0), np.arange(5))


def _run(tmp_path, data, out="out", *extra):
    return main(["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(data),
                 "--out", str(tmp_path / out), "--workers", "0", "--max-iter", "30", *extra])


@pytest.mark.integration
def test_run_writes_the_tuned_lens_bundle_and_is_deterministic(tmp_path, tiny_data):
    assert _run(tmp_path, tiny_data, "a") == 0
    assert _run(tmp_path, tiny_data, "b", "--cache-dir", str(tmp_path / "cache-b")) == 0  # captured again, not reused
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("aggregate_metrics.json", "batches.jsonl", "layers.json", "metrics.csv", "layerwise.png",
                 "transfer_penalty.png", "lenses/tuned/config.json", "lenses/tuned/params.pt",
                 "lenses/shared/params.pt", "lenses/linear_probe/params.pt"):
        assert (a / name).is_file(), name
    assert (a / "aggregate_metrics.json").read_bytes() == (b / "aggregate_metrics.json").read_bytes()
    agg = json.loads((a / "aggregate_metrics.json").read_text())
    layers = json.loads((a / "layers.json").read_text())
    assert layers == {"layer_0": "stem", "layer_1": "layer1.0", "layer_2": "layer2.0", "layer_3": "layer3.0"}
    assert set(agg) == {"tuned", "shared", "logit", "linear_probe", "baseline"}
    assert set(agg["tuned"]) == {"ce", "kl", "entropy", "acc", "agree", "top5", "layer_transfer"}
    assert set(agg["tuned"]["layer_transfer"]) == {"ce", "kl", "penalty", "agree", "acc"}
    assert set(agg["baseline"]) == {"ce", "entropy", "acc"} and set(agg["baseline"]["ce"]) == {"final"}
    batches = json.loads((a / "batches.jsonl").read_text())
    assert isinstance(batches, list) and set(batches[0]) == set(agg)
    rows = (a / "metrics.csv").read_text().splitlines()
    assert rows[0] == "lens,layer,block,metric,value" and len(rows) == 1 + 4 * 6 * 4 + 3


@pytest.mark.integration
def test_eval_reads_lenses_written_by_train(tmp_path, tiny_data):
    common = ["--model", "cifar:resnet8", "--weights", "random", "--data", str(tiny_data), "--workers", "0"]
    fitting = ["--max-iter", "20", "--pool-grid", "2"]
    # eval reads the feature layout (here 2x2 cells) from the lenses: it takes no fitting or pooling options.
    assert main(["train", *common, *fitting, "--out", str(tmp_path / "t")]) == 0
    assert main(["eval", *common, "--lens", str(tmp_path / "t"), "--out", str(tmp_path / "e")]) == 0
    assert main(["run", *common, *fitting, "--out", str(tmp_path / "r")]) == 0
    e = json.loads((tmp_path / "e" / "aggregate_metrics.json").read_text())
    r = json.loads((tmp_path / "r" / "aggregate_metrics.json").read_text())
    assert e == r


@pytest.mark.integration
def test_existing_output_is_not_clobbered(tmp_path, tiny_data, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    assert _run(tmp_path, tiny_data) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


@pytest.mark.integration
def test_unreadable_image_is_named(tmp_path, tiny_data, capsys):
    bad = tiny_data / "train" / "cat" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert _run(tmp_path, tiny_data) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "rerun" in err


@pytest.mark.integration
def test_missing_data_and_split_are_named(tmp_path, tiny_data, capsys):
    assert _run(tmp_path, tmp_path / "nowhere") == 2
    assert f"--data {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert _run(tmp_path, tiny_data, "out", "--eval-split", "val") == 2
    assert "has no split folder 'val' (found: test, train)" in capsys.readouterr().err


@pytest.mark.integration
def test_classes_are_matched_by_name_or_by_position_when_asked(tmp_path, capsys):
    for seed, split in enumerate(("train", "test")):  # other images per split: eval refuses the fit images
        write_image_folder(tmp_path / "d" / split, classes=10, per_class=2, seed=seed)  # class_0 ... class_9
    assert _run(tmp_path, tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'd' / 'train'} (split 'train')" in err
    assert "unknown to the model: class_0, class_1," in err and "missing: airplane, automobile," in err
    assert _run(tmp_path, tmp_path / "d", "out", "--match-classes-by-position", "--max-iter", "2") == 0
    assert "matched to cifar:resnet8's outputs by their sorted position" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["options"]["match_classes_by_position"] is True


@pytest.mark.unit
def test_label_map_follows_the_names_not_the_order():
    adapter = create_adapter("cifar:resnet8", weights="random")
    names = list(adapter.class_folders)
    assert adapter.label_map(names[::-1]).tolist() == list(range(9, -1, -1))
    assert adapter.label_map(names[::-1], by_position=True).tolist() == list(range(10))
    # Outputs known only by index (no class_folders) are matched by position, and counted.
    indexed = create_adapter("cifar:resnet8", weights="random", num_classes=3)
    assert indexed.class_folders is None and indexed.label_map(["c", "b", "a"]).tolist() == [0, 1, 2]
    with pytest.raises(ClassMatchError, match="the data has 2 classes but cifar:resnet8 has 3 outputs"):
        indexed.label_map(["a", "b"])


@pytest.mark.integration
def test_mismatched_checkpoint_lists_keys(tmp_path, tiny_data, capsys):
    ckpt = tmp_path / "resnet14.th"
    model = create_adapter("cifar:resnet14", weights="random").model
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    code = main(["run", "--model", "cifar:resnet8", "--weights", str(ckpt), "--data", str(tiny_data),
                 "--out", str(tmp_path / "o"), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} does not match" in err and "unexpected keys" in err and "layer1.1.conv1.weight" in err
    assert not (tmp_path / "o" / "aggregate_metrics.json").exists()


@pytest.mark.unit
def test_local_checkpoint_round_trip_is_bit_identical(tmp_path):
    adapter = create_adapter("cifar:resnet8", weights="random", seed=5)
    ckpt = tmp_path / "r8.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in adapter.model.state_dict().items()}, "best_prec1": 0.0}, ckpt)
    loaded = create_adapter("cifar:resnet8", weights=str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(adapter.logits(x), loaded.logits(x))


@pytest.mark.unit
def test_pretrained_download_failure_says_how_to_pass_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="pass --weights PATH"):
        create_adapter("cifar:resnet20")


@pytest.mark.integration
def test_demo_runs_offline(tmp_path):
    from vision_lens.artifacts import read_manifest

    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "3"]) == 0
    agg = json.loads((tmp_path / "demo" / "aggregate_metrics.json").read_text())
    assert "vision-lens demo: sklearn digits" in (tmp_path / "demo" / "report.html").read_text()  # says what it is
    assert read_manifest(tmp_path / "demo")["complete"]
    assert set(agg) == {"tuned", "shared", "logit", "linear_probe", "baseline"}
    assert agg["baseline"]["acc"]["final"] > 0.5  # a ResNet-14 learns the digits in a few epochs
    blocks = list(agg["tuned"]["kl"])
    assert len(blocks) == 7
    # Before the last block the model's own read-out is far from its output; the tuned lens reads the blocks.
    assert all(agg["tuned"]["kl"][k] < agg["logit"]["kl"][k] for k in blocks[:-1])


@pytest.mark.unit
def test_torchvision_cifar10_source(monkeypatch, tmp_path):
    """The torchvision downloader path, with torchvision's CIFAR10 replaced by an offline stand-in."""
    import urllib.error

    import torchvision.datasets

    from vision_lens.adapters.weights import CIFAR10_CLASSES
    from vision_lens.data import DataError, open_split

    class OfflineCIFAR10:
        classes = CIFAR10_CLASSES

        def __init__(self, root, train, download):
            assert download and str(root) == str(tmp_path)
            self.data = np.full((5 if train else 2, 32, 32, 3), 7, dtype=np.uint8)
            self.targets = list(range(len(self.data)))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    train = open_split("torchvision:cifar10", "train", tmp_path)
    assert len(train) == 5 and train.classes == CIFAR10_CLASSES and train.load(3).size == (32, 32)
    assert train.fingerprint != open_split("torchvision:cifar10", "test", tmp_path).fingerprint

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(DataError, match="could not download CIFAR-10.*pass --data a folder"):
        open_split("torchvision:cifar10", "test", tmp_path)

