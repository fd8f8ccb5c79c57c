"""Pythia-12B on the same axes (issue 33): `compare`, scripts/make_figures.py and scripts/summarise_results.py take
the tuned-lens authors' penalty-only matrix with its separate per-layer CE (../shared/data/llm-anchors, read where
it is), at all 36 layers and thinned to six, and carry its caveat wherever a number divides one file by the other."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text

from vision_lens import analysis
from vision_lens.cli import main

from .conftest import LLM_ANCHORS, REPO, load_script, require_shared

VIT, LM = REPO / "results" / "cifar10-vit", REPO / "results" / "lm-reference"
THINNED = [f"layer_{k}" for k in range(0, 31, 6)]


@pytest.fixture(autouse=True)
def _anchors():
    require_shared(LLM_ANCHORS)
    yield
    plt.close("all")


def pythia_files() -> tuple[dict, dict]:
    penalty = json.loads((LLM_ANCHORS / "pythia-12b-deduped-transfer-penalty.json").read_text())["penalty"]
    ce = json.loads((LLM_ANCHORS / "pythia-tuned-lens-ce.json").read_text())["ce"]["12B"]
    return penalty, ce


@pytest.mark.integration
def test_compare_draws_pythia_at_all_its_layers_and_thinned_to_six(tmp_path):
    out = tmp_path / "compare.png"
    assert main(["compare", str(VIT), str(LM), str(LLM_ANCHORS), "--thin", "6", "--out", str(out)]) == 0
    inputs = {i["name"]: i for i in json.loads(out.with_suffix(".json").read_text())["inputs"]}
    full, thin = inputs["pythia-12b-deduped"], inputs["pythia-12b-deduped (layers 0, 6, ..., 30)"]
    assert "lm-reference" in inputs and "cifar:vit" in inputs  # six layers already: not thinned again
    # The transfer panel leaves out layer_0, the token embeddings (analysis.past_embedding): 35 and 5 layers.
    assert len(full["transfer"]["relative_distance"]) == 35 and len(thin["transfer"]["relative_distance"]) == 5
    penalty, ce = pythia_files()
    kept = THINNED[1:]
    own = np.mean([ce[k] for k in kept])
    neighbours = np.mean([penalty[a][b] for n, a in enumerate(kept) for b in kept[n + 1:n + 2]]
                         + [penalty[b][a] for n, a in enumerate(kept) for b in kept[n + 1:n + 2]])
    assert thin["transfer"]["normalised_penalty"][1] == pytest.approx(neighbours / own)
    assert np.allclose(thin["layerwise"]["tuned"]["ce"]["normalised"], [ce[k] / ce["layer_0"] for k in THINNED])
    assert "tuned" in full["layerwise"] and "logit" not in full["layerwise"]  # the files hold no logit lens
    for numbers in (full, thin):
        assert "different lens run of the same model" in numbers["caveats"][0]
    assert not inputs["lm-reference"]["caveats"]
    assert main(["compare", str(LLM_ANCHORS), "--thin", "1", "--out", str(out)]) == 2


@pytest.mark.integration
def test_the_figure_prints_the_caveat_under_the_legend():
    from vision_lens.compare import compare

    fig = compare([VIT, LLM_ANCHORS], thin=6)
    texts = [t.get_text() for t in fig.findobj(Text) if t.get_visible()]
    note = next(t for t in texts if "different lens run" in t)
    assert note.startswith("pythia-12b-deduped and pythia-12b-deduped (layers 0, 6, ..., 30):")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "pythia-12b-deduped (layers 0, 6, ..., 30)" in legend


@pytest.mark.integration
def test_make_figures_puts_pythia_beside_the_vision_runs_and_the_language_model(tmp_path):
    figures = load_script("make_figures")
    paths, labels = figures.llm_inputs(None, LLM_ANCHORS)
    assert paths == [figures.LM_REFERENCE, LLM_ANCHORS]
    assert labels == ["GPT-2 reference (tuned-lens)", figures.ANCHORS_LABEL]
    assert figures.llm_inputs(None, None) == ([figures.LM_REFERENCE], ["GPT-2 reference (tuned-lens)"])
    out = figures.compare_llm([VIT], None, LLM_ANCHORS, tmp_path)
    assert out == tmp_path / "compare_llm.png" and plt.imread(out).shape[2] in (3, 4)


@pytest.mark.results
def test_the_findings_put_pythia_in_the_stream_table_and_the_signature_tables():
    summarise = load_script("summarise_results")
    runs = analysis.as_results([VIT, LM, LLM_ANCHORS])
    (stream,) = [t for t in summarise.findings(runs).split("\n\n") if t.startswith("| run | fit | blocks |")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in stream.splitlines()[2:]}
    assert rows["pythia-12b-deduped †"].split(" | ")[2] == "35 (`layer_1` on)"  # past the embeddings
    assert rows["pythia-12b-deduped (layers 0, 6, ..., 30) †"].split(" | ")[2] == "5 (`layer_6` on)"
    assert any(label.startswith("† pythia-12b-deduped") and "different lens run" in label for label in rows)
    penalty, ce = pythia_files()
    own = np.mean([ce[f"layer_{k}"] for k in range(1, 36)])
    neighbours = np.mean([penalty[f"layer_{i}"][f"layer_{j}"] for i in range(1, 36) for j in range(1, 36)
                          if abs(i - j) == 1])
    assert rows["pythia-12b-deduped †"].split(" | ")[5] == f"{neighbours / own:.2f}"
    tables = summarise.signature_tables(runs).split("\n\n")
    assert [t.splitlines()[2].split(" | ")[2] for t in tables] == ["embedding layer left out", "embedding layer kept"]
    for table in tables:
        labels = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]]
        assert labels[:4] == ["cifar10-vit", "lm-reference", "pythia-12b-deduped †",
                              "pythia-12b-deduped (layers 0, 6, ..., 30) †"]
        assert labels[4].startswith("† pythia-12b-deduped")
