"""`vision-lens control` and `vision_lens.control`: a tuned-lens eval folder placed among the committed controls, with
intervals from its batches.jsonl; references by name (`load_results("cifar10-vit")`, `vision-lens references`)."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import vision_lens
from vision_lens import reference_runs
from vision_lens.cli import main
from vision_lens.signatures import signature_sets

from .conftest import REPO, SYNTHETIC_OWN_CE, write_tuned_lens_eval
from .test_cli import PROBE

RESULTS = REPO / "results"


@pytest.mark.integration
def test_control_places_the_committed_language_model_among_every_committed_reference(tmp_path, capsys):
    out = tmp_path / "control"
    assert main(["control", str(RESULTS / "lm-reference"), "--out", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "lm-reference: embedding layer left out" in printed and "lm-reference: embedding layer kept" in printed
    assert "neighbours forward / own CE" in printed and "vision controls (trained)" in printed
    assert "batches of batches.jsonl" in printed
    numbers = json.loads((out / "control.json").read_text())
    batches = len(json.loads((RESULTS / "lm-reference" / "batches.jsonl").read_text()))
    assert f"the {batches} batches of batches.jsonl" in numbers["run"]["intervals"]
    committed = {r.name for r in reference_runs.references()} - {"lm-reference"}  # not compared with itself
    assert {r["name"] for r in numbers["references"]} == committed
    expected = {s.embedding: s for s in signature_sets(RESULTS / "lm-reference", resamples=200)}
    by_key = {(p["key"], p["embedding"]): p for p in numbers["signatures"]}
    for (key, embedding), placed in by_key.items():
        assert placed["yours"] == expected[embedding].values[key].to_dict(), key
        assert placed["verdict"] in printed.replace("\n  ", " ")
    neighbours = by_key[("neighbour_both/own_ce", "in")]
    low, high = neighbours["yours"]["interval"]
    assert low < neighbours["yours"]["value"] < high
    trained = [v["value"] for name, v in neighbours["references"].items()
               if name.startswith("cifar10-") and "random-init" not in name and v["value"] is not None]
    assert neighbours["vision_controls_range"] == [min(trained), max(trained)]
    markdown = (out / "control.md").read_text()
    assert "## Embedding layer left out" in markdown and "## Embedding layer kept" in markdown
    assert "| cifar10-vit | cifar:vit | ViT | default fit |" in markdown
    assert plt.imread(out / "control.png").shape[2] in (3, 4)


@pytest.mark.integration
def test_control_on_a_synthetic_tuned_lens_folder_gives_its_known_answers(tmp_path, capsys):
    """Two batches, the second's penalties three times the first's: the intervals run from half each penalty to one and
    a half times it. A tuned-lens params.pt beside it gives the translators' distance from the identity."""
    folder = write_tuned_lens_eval(tmp_path / "my-llm-eval")
    (folder / "lens").mkdir()
    scales = [0.4, 0.2, 0.1, 0.3]  # translator k is scales[k] times the identity: that far from it
    torch.save({f"{k}.{p}": (s * torch.eye(8) if p == "weight" else torch.zeros(8))
                for k, s in enumerate(scales) for p in ("weight", "bias")}, folder / "lens" / "params.pt")
    out = tmp_path / "control"
    refs = ["cifar10-vit", "cifar10-vit-tuned-lens-recipe", "cifar10-resnet20", "lm-reference"]
    args = ["control", str(folder), "--no-default-references", "--out", str(out), "--resamples", "400"]
    assert main(args + [a for name in refs for a in ("--reference", name)]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads((out / "control.json").read_text())
    assert [r["name"] for r in numbers["references"]] == ["cifar10-resnet20", "cifar10-vit",
                                                          "cifar10-vit-tuned-lens-recipe", "lm-reference"]
    by_key = {(p["key"], p["embedding"]): p for p in numbers["signatures"]}
    own = np.mean(SYNTHETIC_OWN_CE[1:])
    forward = by_key[("neighbour_forward/own_ce", "out")]
    assert forward["yours"]["value"] == pytest.approx(0.1 / own)
    assert forward["yours"]["interval"] == pytest.approx([0.05 / own, 0.15 / own], rel=1e-5)
    assert by_key[("farthest_backward/own_ce", "out")]["yours"]["value"] == pytest.approx(0.6 / own)
    assert by_key[("identity_distance_mean", "out")]["yours"]["value"] == pytest.approx(np.mean(scales[1:]))
    assert by_key[("identity_distance_mean", "in")]["yours"]["value"] == pytest.approx(np.mean(scales))
    vit = by_key[("neighbour_forward/own_ce", "out")]["references"]
    controls = [vit[n]["value"] for n in ("cifar10-resnet20", "cifar10-vit", "cifar10-vit-tuned-lens-recipe")]
    assert forward["vision_controls_range"] == pytest.approx([min(controls), max(controls)])
    assert forward["yours"]["value"] < min(controls)  # forward neighbours cheaper than any vision control's
    assert "lies below the range of the trained vision controls" in forward["verdict"]
    assert "language models: lm-reference" in forward["verdict"]
    shared = by_key[("shared_gap/own_ce", "out")]
    assert shared["yours"]["value"] is None and "no shared lens was fitted" in shared["verdict"]
    assert "my-llm-eval: embedding layer left out" in printed and "0.07 [0.03, 0.10]" in printed
    assert "percentile bootstrap over the 2 batches of batches.jsonl" in (out / "control.md").read_text()


@pytest.mark.integration
def test_control_from_python_leaves_the_run_out_of_its_own_references():
    result = vision_lens.control("cifar10-vit", references=["cifar10-vit", "cifar10-resnet20"], defaults=False,
                                 resamples=50)
    assert [r.name for r in result.references] == ["cifar10-resnet20"]
    assert result.yours[0].values["identity_distance_mean"].value is not None  # lenses/tuned/params.pt
    assert "cifar:vit: embedding layer left out" in result.table()


@pytest.mark.integration
def test_control_refuses_what_it_cannot_use(tmp_path, capsys):
    folder = write_tuned_lens_eval(tmp_path / "eval")
    assert main(["control", str(folder), "--no-default-references", "--out", str(tmp_path / "o")]) == 2
    assert "no references to compare with" in capsys.readouterr().err
    assert main(["control", str(folder), "--lens", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "holds no params.pt" in capsys.readouterr().err
    assert main(["control", "no-such-reference", "--out", str(tmp_path / "o")]) == 2
    assert "vision-lens references" in capsys.readouterr().err
    assert main(["control", str(folder), "--reference", str(tmp_path / "gone"), "--out", str(tmp_path / "o")]) == 2
    assert f"--reference {tmp_path / 'gone'}: no such folder or file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_references_load_by_name_and_are_listed_with_model_and_fit(capsys):
    vit = vision_lens.load_results("cifar10-vit")
    assert vit.path == RESULTS / "cifar10-vit" and vit.name == "cifar:vit"
    assert main(["references"]) == 0
    listed = capsys.readouterr().out.splitlines()
    found = reference_runs.references()
    assert len(listed) == 1 + len(found)
    assert {r.name for r in found} == {p.parent.name for p in RESULTS.glob("*/aggregate_metrics.json")}
    for ref in found:
        line = next(line for line in listed if line.split()[0] == ref.name)
        assert ref.model in line and ref.fit in line and ref.line in line
        assert vision_lens.load_results(ref.name).path == ref.path
    by_name = {r.name: r for r in found}
    assert (by_name["cifar10-resnet20-tuned-lens-recipe"].family, by_name["cifar10-resnet20-tuned-lens-recipe"].fit) \
        == ("ResNet", "tuned-lens recipe")
    assert by_name["cifar10-vit-random-init"].group == "ViT, default fit, random init"
    assert by_name["lm-reference"].family == reference_runs.LANGUAGE_MODEL
    assert "no transfer" in by_name["cifar10-inceptionv1"].line
    with pytest.raises(FileNotFoundError, match="vision-lens references"):
        vision_lens.load_results("cifar10-vgg")


@pytest.mark.unit
def test_listing_the_references_imports_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", PROBE, "references"], cwd=REPO, capture_output=True, text=True,
                          check=True)
    assert "cifar10-vit-tuned-lens-recipe" in done.stdout
    assert done.stdout.splitlines()[-1] == "", f"`vision-lens references` imported {done.stdout.splitlines()[-1]}"
