"""Schema versions: lens configs, run.json and the manifest carry one; the shims that read older folders apply only
to the version they were written for, and a newer version is refused by name."""

from __future__ import annotations

import json

import pytest

from vision_lens.artifacts import RunFolderError, load_results, read_manifest, write_results
from vision_lens.lenses import LensConfig
from vision_lens.schema import LENS_CONFIG, MANIFEST, RUN_INFO, SchemaError, upgrade_fit_v1

from .conftest import REPO

pytestmark = pytest.mark.unit

COMMITTED = REPO / "results" / "cifar10-resnet20"  # written before versions were recorded: version 1
RECORD = {"blocks": 1, "solver": "convex", "weight_decay": 0.01, "steps": 12, "loss_nats": 0.5}


def test_a_version_1_lens_config_reads_through_its_shims_and_a_current_one_needs_every_field():
    path = COMMITTED / "lenses" / "tuned" / "config.json"
    saved = json.loads(path.read_text())
    assert "schema" not in saved and "iterations" in next(r for r in saved["fit"]["blocks"].values() if r)
    config = LensConfig.read(saved, path)
    assert config.schema == 1
    records = [r for r in config.fit["blocks"].values() if r]
    assert all(r["solver"] == "convex" and "steps" in r and "iterations" not in r for r in records)
    current = config.to_dict() | {"schema": LENS_CONFIG}
    assert list(current)[0] == "schema" and LensConfig.read(current, path).schema == LENS_CONFIG
    del current["fit_images"]
    with pytest.raises(TypeError, match="missing fit_images"):  # a shim of version 1 only
        LensConfig.read(current, path)
    saved_without = {k: v for k, v in saved.items() if k != "fit_images"}
    assert LensConfig.read(saved_without, path).fit_images == {}
    with pytest.raises(SchemaError, match=f"{path} has schema version 3, newer than this vision-lens reads"):
        LensConfig.read(saved | {"schema": 3}, path)
    with pytest.raises(SchemaError, match="not a version number"):
        LensConfig.read(saved | {"schema": "2"}, path)


def test_version_1_fit_records_are_upgraded_to_the_typed_record():
    v1 = {"loss": "kl", "blocks": {
        "a": {"blocks": 1, "validation_loss_nats": {"0.1": 1.0}, "weight_decay": 0.1, "iterations": 7, "loss_nats": 1},
        "b": {"blocks": 1, "solver": "autograd L-BFGS through the unembedding", "weight_decay": 0.1, "iterations": 3,
              "loss_nats": 1},
        "c": {"blocks": 2, "solver": "tuned-lens recipe (SGD)", "weight_decay": 1e-3, "steps": 250, "loss_nats": 1},
        "d": None}}
    upgraded = upgrade_fit_v1(v1)["blocks"]
    assert [(r["solver"], r["steps"]) for r in (upgraded[k] for k in "abc")] == [
        ("convex", 7), ("autograd", 3), ("recipe", 250)]
    assert upgraded["d"] is None and upgraded["a"]["validation_loss_nats"] == {"0.1": 1.0}
    assert v1["blocks"]["a"]["iterations"] == 7  # the input is left as it was


def test_run_json_versions_shims_and_refusals(tmp_path):
    committed = load_results(COMMITTED)
    assert committed.schema == 1 and all("steps" in r for fit in committed.run["fit"].values()
                                         for r in fit["blocks"].values() if r)
    aggregate = json.loads((COMMITTED / "aggregate_metrics.json").read_text())
    layers = json.loads((COMMITTED / "layers.json").read_text())
    run = {"schema": RUN_INFO, "model": "m", "fit": {"tuned": {"blocks": {"layer1.0": RECORD}}}}
    written = write_results(tmp_path, aggregate, [], layers, run)
    again = load_results(tmp_path)
    assert written.run == again.run and written.aggregate == again.aggregate and written.layers == again.layers
    with pytest.raises(RunFolderError, match="lacks block_stages"):  # version 1's stage shim is not applied
        again.block_stages
    v1 = {k: v for k, v in run.items() if k != "schema"}
    (tmp_path / "run.json").write_text(json.dumps(v1))
    assert load_results(tmp_path).block_stages == [name.split(".")[0] for name in load_results(tmp_path).block_names]
    (tmp_path / "run.json").write_text(json.dumps(run | {"schema": RUN_INFO + 1}))
    with pytest.raises(SchemaError, match="newer than this vision-lens reads"):
        load_results(tmp_path)


def test_the_manifest_carries_its_version_and_refuses_a_newer_one(tmp_path):
    from vision_lens.artifacts import MANIFEST_NAME, mark_complete, prepare_output

    out = prepare_output(tmp_path / "out", overwrite=False)
    mark_complete(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["schema"] == MANIFEST and read_manifest(out)["complete"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest | {"schema": MANIFEST + 1}))
    with pytest.raises(SchemaError, match="newer than this vision-lens reads"):
        read_manifest(out)
    (out / MANIFEST_NAME).write_text(json.dumps({"complete": True, "files": []}))  # version 1: as before
    assert read_manifest(out) == {"complete": True, "files": []}
