"""The signatures (vision_lens.signatures): answers known by hand on small matrices, then one committed run of each
kind: a run folder of this package, the language model's tuned-lens eval folder, and Pythia-12B's penalty-only
matrix from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vision_lens import analysis, signatures
from vision_lens.artifacts import RunFolderError, RunResults, load_penalty_only, load_results

from .conftest import (LLM_ANCHORS, REPO, SYNTHETIC_LOGIT_CE, SYNTHETIC_MODEL_CE, SYNTHETIC_OWN_CE,
                       SYNTHETIC_PENALTY, require_shared, write_tuned_lens_eval)

RESULTS = REPO / "results"


def matrix_run(penalty, own_ce=None, logit_ce=None, model_ce=None, path: Path = Path("nowhere")) -> RunResults:
    """A tuned-lens-style run (no run.json) holding the transfer CE ``own_ce[j] + penalty[i][j]``."""
    penalty = np.asarray(penalty, dtype=float)
    own_ce = np.ones(len(penalty)) if own_ce is None else np.asarray(own_ce, dtype=float)
    keys = [f"layer_{k}" for k in range(len(penalty))]
    aggregate = {"tuned": {"ce": dict(zip(keys, own_ce)), "layer_transfer": {"ce": {
        i: {j: own_ce[m] + penalty[n, m] for m, j in enumerate(keys)} for n, i in enumerate(keys)}}}}
    if logit_ce is not None:
        aggregate["logit"] = {"ce": dict(zip(keys, logit_ce))}
    if model_ce is not None:
        aggregate["baseline"] = {"ce": {"final": model_ce}}
    return RunResults(path, "matrix", aggregate, {}, {})


@pytest.mark.unit
def test_a_symmetric_matrix_has_equal_forward_and_backward_profiles():
    rng = np.random.default_rng(0)
    half = rng.random((5, 5))
    symmetric = (half + half.T) * (1 - np.eye(5))
    profile = signatures.directional_profile(matrix_run(symmetric), embedding="in")
    assert list(profile.distance) == [1, 2, 3, 4] and list(profile.pairs) == [4, 3, 2, 1]
    assert np.allclose(profile.forward, profile.backward)
    assert profile.forward[0] == pytest.approx(np.mean([symmetric[i, i + 1] for i in range(4)]))
    assert profile.forward_interval is None  # no batches.jsonl
    lower = np.triu(symmetric)  # forward penalties only: the backward profile is zero
    profile = signatures.directional_profile(matrix_run(lower), embedding="in")
    assert np.allclose(profile.backward, 0) and np.allclose(profile.forward, profile.forward)
    assert not np.allclose(profile.forward, 0)


@pytest.mark.unit
def test_a_zero_translator_has_distance_zero_from_the_identity():
    assert signatures.identity_distance(np.zeros((4, 4))) == 0
    assert signatures.identity_distance(np.zeros((3, 6)), scale=np.full(6, 2.0)) == 0
    assert signatures.identity_distance(0.5 * np.eye(4)) == pytest.approx(0.5)
    # Standardised inputs: A = weight / scale, column by column; ||I|| is that of the space written to.
    assert signatures.identity_distance(np.diag([3.0, 4.0]), scale=[1.0, 2.0]) == pytest.approx(np.sqrt(13 / 2))


@pytest.mark.unit
def test_the_best_single_translator_of_a_matrix_with_one_zero_row_is_zero():
    rng = np.random.default_rng(1)
    penalty = rng.random((5, 5)) + 0.5
    penalty[np.diag_indices(5)] = 0
    penalty[3] = 0  # translator 3 is as good as each layer's own everywhere
    run = matrix_run(penalty, own_ce=[4, 3, 2, 1.5, 1], logit_ce=[6, 5, 3, 2, 1.2], model_ce=0.5)
    for embedding in signatures.EMBEDDING_RULES:
        result = signatures.signatures(run, embedding)
        assert result.best_translator_layer == "layer_3"
        for normalise in (None, "own_ce", "excess"):
            assert signatures.best_single_translator(run, normalise, embedding).value == 0
        assert signatures.best_single_translator(run, "kept_gain", embedding).value == 1  # it keeps the whole gain
    penalty[3, 0] = np.nan  # a row with an undefined cell cannot be applied to every layer
    assert signatures.signatures(matrix_run(penalty), "in").best_translator_layer != "layer_3"
    assert signatures.signatures(matrix_run(penalty), "out").best_translator_layer == "layer_3"


@pytest.mark.unit
def test_every_normalisation_of_the_neighbour_penalty_by_hand():
    """Three layers, embedding kept: forward neighbours cost 0.2 and 0.4, backward ones 0.6 and 0.8."""
    penalty = [[0, 0.2, 1.0], [0.6, 0, 0.4], [2.0, 0.8, 0]]
    run = matrix_run(penalty, own_ce=[3, 2, 1], logit_ce=[4, 3, 1.5], model_ce=0.5)
    own, excess = 2.0, 1.5  # mean own CE, and its mean excess over the model's 0.5
    expect = {"forward": 0.3, "backward": 0.7, "both": 0.5}
    gains = {"forward": (3 - 2) + (1.5 - 1), "backward": (4 - 3) + (3 - 2)}  # logit - own CE at the evaluated layers
    gains["both"] = gains["forward"] + gains["backward"]
    for direction, mean in expect.items():
        assert signatures.neighbour_penalty(run, direction, None, "in").value == pytest.approx(mean)
        assert signatures.neighbour_penalty(run, direction, "own_ce", "in").value == pytest.approx(mean / own)
        assert signatures.neighbour_penalty(run, direction, "excess", "in").value == pytest.approx(mean / excess)
        kept = 1 - mean * (4 if direction == "both" else 2) / gains[direction]
        assert signatures.neighbour_penalty(run, direction, "kept_gain", "in").value == pytest.approx(kept)
    values = signatures.signatures(run, "in").values
    assert values["farthest_forward"].value == 1.0 and values["farthest_backward"].value == 2.0
    assert values["growth_forward"].value == pytest.approx(1.0 / 0.3)
    # Embedding left out: layers 1 and 2 only, one cell each way.
    assert signatures.neighbour_penalty(run, "forward", None, "out").value == pytest.approx(0.4)
    assert signatures.neighbour_penalty(run, "backward", "own_ce", "out").value == pytest.approx(0.8 / 1.5)
    assert signatures.signatures(run, "out").values["growth_forward"].value is None  # no distance beyond 1
    # Undefined where the run lacks what a normalisation needs (no logit lens, no model CE).
    bare = matrix_run(penalty, own_ce=[3, 2, 1])
    for normalise in ("excess", "kept_gain"):
        assert signatures.neighbour_penalty(bare, "both", normalise, "in").value is None
    assert signatures.shared_lens_gap(bare).value is None  # no shared lens fitted
    with pytest.raises(ValueError, match="normalise"):
        signatures.neighbour_penalty(run, "both", "per_byte")


@pytest.mark.unit
def test_the_synthetic_tuned_lens_folder_gives_its_known_signatures_and_batch_intervals(tmp_path):
    """Two batches, the second's penalties three times the first's: a bootstrap over batches draws both, one, or the
    other, so every penalty's interval runs from half its value to one and a half times it."""
    folder = write_tuned_lens_eval(tmp_path / "eval")
    result = signatures.signatures(folder, "out")
    assert result.layers == ["layer_1", "layer_2", "layer_3"] and result.unit == "bits per byte"
    assert "2 batches" in result.intervals and "one batch" in result.intervals
    own = np.mean(SYNTHETIC_OWN_CE[1:])
    excess = own - SYNTHETIC_MODEL_CE
    gain = {"forward": sum(np.subtract(SYNTHETIC_LOGIT_CE, SYNTHETIC_OWN_CE)[[2, 3]]),
            "backward": sum(np.subtract(SYNTHETIC_LOGIT_CE, SYNTHETIC_OWN_CE)[[1, 2]])}
    expected = {"neighbour_forward": 0.1, "neighbour_backward": 0.3, "neighbour_both": 0.2,
                "neighbour_forward/own_ce": 0.1 / own, "neighbour_backward/excess": 0.3 / excess,
                "neighbour_forward/kept_gain": 1 - 0.2 / gain["forward"],
                "neighbour_backward/kept_gain": 1 - 0.6 / gain["backward"],
                "farthest_forward": 0.2, "farthest_backward": 0.6, "growth_forward": 2.0, "growth_backward": 2.0,
                "best_translator": 0.1, "best_translator/own_ce": 0.1 / own}
    for key, value in expected.items():
        assert result.values[key].value == pytest.approx(value), key
    assert result.best_translator_layer == "layer_1"
    for key in ("neighbour_forward", "neighbour_both/own_ce", "farthest_backward", "best_translator"):
        estimate = result.values[key]
        assert (estimate.low, estimate.high) == pytest.approx((0.5 * estimate.value, 1.5 * estimate.value), rel=1e-5)
    assert result.values["growth_forward"].low == pytest.approx(2.0)  # a ratio of two penalties: no spread
    assert result.values["shared_gap_kl"].value is None and result.values["identity_distance_mean"].value is None
    profile = signatures.directional_profile(folder, embedding="out")
    assert np.allclose(profile.forward, [0.1, 0.2]) and np.allclose(profile.backward, [0.3, 0.6])
    assert np.allclose(profile.forward_interval, [[0.05, 0.1], [0.15, 0.3]], rtol=1e-5)
    assert np.allclose(profile.backward_interval, [[0.15, 0.3], [0.45, 0.9]], rtol=1e-5)
    kept = signatures.signatures(folder, "in")
    assert kept.layers[0] == "layer_0" and kept.values["neighbour_forward"].value == pytest.approx(0.1)
    # One batch per line (JSON Lines) reads alike.
    batches = json.loads((folder / "batches.jsonl").read_text())
    (folder / "batches.jsonl").write_text("\n".join(json.dumps(b) for b in batches) + "\n")
    assert signatures.signatures(folder, "out").values["neighbour_forward"] == result.values["neighbour_forward"]
    (folder / "batches.jsonl").write_text("not json\n")
    with pytest.raises(RunFolderError, match="batches.jsonl"):
        signatures.signatures(folder)


@pytest.mark.results
def test_the_committed_vit_run(tmp_path):
    """A run folder of this package: the signatures agree with the transfer matrix read directly, intervals come
    from its batches.jsonl (20 batches of 500 eval images), and its translators' distances from the identity are
    those of lenses/tuned/params.pt."""
    import torch

    vit = load_results(RESULTS / "cifar10-vit-tuned-lens-recipe")
    result = signatures.signatures(vit, "out")
    assert result.layers == [f"blocks.{k}" for k in range(6)] and "20 batches" in result.intervals
    penalty, ce = analysis.transfer_matrix(vit), analysis.transfer_matrix(vit, "ce")
    own = np.diag(ce)[1:].mean()
    forward = np.mean([penalty[i, i + 1] for i in range(1, 6)])
    both = np.mean([penalty[i, j] for i in range(1, 7) for j in range(1, 7) if abs(i - j) == 1])
    assert result.values["neighbour_forward/own_ce"].value == pytest.approx(forward / own)
    # The both-ways neighbour ratio is the findings' stream table's (which leaves embed out too).
    assert result.values["neighbour_both/own_ce"].value == pytest.approx(
        analysis.penalty_profiles(vit, blocks=range(1, 7))["all"].mean[1] / own)
    assert result.values["neighbour_both/own_ce"].value == pytest.approx(both / own)
    estimate = result.values["neighbour_both/own_ce"]
    assert estimate.low < estimate.value < estimate.high
    shared = vit.aggregate["shared"]["kl"]
    tuned = vit.aggregate["tuned"]["kl"]
    assert result.values["shared_gap_kl"].value == pytest.approx(
        np.mean([shared[f"layer_{k}"] - tuned[f"layer_{k}"] for k in range(1, 7)]))
    state = torch.load(vit.path / "lenses" / "tuned" / "params.pt", weights_only=True)
    by_hand = [float((state[f"{k}.linear.weight"] / state[f"{k}.scale"]).norm() / 192 ** 0.5) for k in range(7)]
    distances = signatures.translator_identity_distances(vit)
    assert np.allclose(distances[:6], by_hand[:6], rtol=1e-5)
    assert np.isnan(distances[6])  # blocks.5: its logit lens is the model's output
    assert result.values["identity_distance_max"].value == pytest.approx(max(by_hand[1:6]), rel=1e-5)
    # The default fit's best single translator is the last block's, which is zero (its lens is the logit lens): on
    # every block it is the logit lens, so it keeps none of the tuned lens's gain over the logit lens.
    default = signatures.signatures(RESULTS / "cifar10-vit", "out")
    assert default.best_translator_layer == "blocks.5"
    assert default.values["best_translator/kept_gain"].value == pytest.approx(0, abs=1e-6)
    inception = signatures.signatures(RESULTS / "cifar10-inceptionv1", "out")
    assert inception.values["neighbour_both"].value is None and inception.values["shared_gap_kl"].value is None


@pytest.mark.results
def test_the_committed_language_model_reference():
    """tuned-lens eval output: its batches.jsonl (one mean per batch of sequences) gives the intervals; no shared
    lens was fitted; embedding kept or left out are both given."""
    lm = load_results(RESULTS / "lm-reference")
    batches = len(json.loads((lm.path / "batches.jsonl").read_text()))
    for embedding in signatures.EMBEDDING_RULES:
        result = signatures.signatures(lm, embedding, resamples=200)
        assert f"{batches} batches" in result.intervals
        keep = signatures.kept_layers(lm, embedding)
        penalty = analysis.transfer_matrix(lm)[np.ix_(keep, keep)]
        own = np.diag(analysis.transfer_matrix(lm, "ce"))[keep].mean()
        rows = penalty.mean(axis=1)
        assert result.values["best_translator/own_ce"].value == pytest.approx(rows.min() / own)
        assert result.best_translator_layer == f"layer_{keep[int(rows.argmin())]}"
        estimate = result.values["best_translator/own_ce"]
        assert estimate.low <= estimate.value <= estimate.high
        model = lm.aggregate["baseline"]["ce"]["final"]
        assert result.values["neighbour_both/excess"].value == pytest.approx(
            result.values["neighbour_both"].value / (own - model))
        assert result.values["shared_gap_kl"].value is None


@pytest.mark.results
def test_pythia_12b_penalty_only_matrix_from_shared():
    """The tuned-lens authors' Pythia-12B matrix (penalties only) with its CE trace from another file: read where it
    is, the caveat carried, no intervals, and no normalisation that needs what neither file holds."""
    require_shared(LLM_ANCHORS)
    pythia = load_results(LLM_ANCHORS)
    raw = json.loads((LLM_ANCHORS / "pythia-12b-deduped-transfer-penalty.json").read_text())["penalty"]
    ce = json.loads((LLM_ANCHORS / "pythia-tuned-lens-ce.json").read_text())["ce"]["12B"]
    assert pythia.name == "pythia-12b-deduped" and len(pythia.aggregate["tuned"]["ce"]) == 36
    assert "different lens run of the same model" in pythia.caveats[0]
    result = signatures.signatures(pythia, "in")
    assert result.intervals is None and result.caveats == pythia.caveats
    rows = np.array([[raw[f"layer_{i}"][f"layer_{j}"] for j in range(36)] for i in range(36)]).mean(axis=1)
    assert result.values["best_translator/own_ce"].value == pytest.approx(
        rows.min() / np.mean([ce[f"layer_{k}"] for k in range(36)]))
    assert result.values["farthest_forward"].value == pytest.approx(raw["layer_0"]["layer_35"])
    assert result.values["farthest_backward"].value == pytest.approx(raw["layer_35"]["layer_0"])
    for key in ("neighbour_both/excess", "neighbour_both/kept_gain", "shared_gap_kl", "identity_distance_mean"):
        assert result.values[key].value is None, key
    thin = analysis.thinned(pythia, 6)
    assert list(thin.aggregate["tuned"]["ce"]) == [f"layer_{k}" for k in range(0, 31, 6)]
    assert thin.caveats == pythia.caveats and "layers 0, 6, ..., 30" in thin.name
    thinned = signatures.signatures(thin, "in")
    assert thinned.values["neighbour_forward"].value == pytest.approx(
        np.mean([raw[f"layer_{k}"][f"layer_{k + 6}"] for k in range(0, 30, 6)]))


@pytest.mark.unit
def test_a_penalty_only_folder_is_refused_with_the_file_named_where_it_does_not_fit(tmp_path):
    penalty = {"model": "org/tiny", "unit": "bits per byte",
               "penalty": {f"layer_{i}": {f"layer_{j}": abs(i - j) / 10 for j in range(3)} for i in range(3)}}
    ce = {"models": {"tiny": "org/tiny (an older path)", "other": "org/other"},
          "ce": {"tiny": {f"layer_{k}": 3.0 - k for k in range(3)}, "other": {"layer_0": 1.0}}}
    (tmp_path / "tiny-transfer-penalty.json").write_text(json.dumps(penalty))
    (tmp_path / "tiny-ce.json").write_text(json.dumps(ce))
    run = load_penalty_only(tmp_path)
    assert run.name == "tiny" and analysis.mean_diagonal_ce(run) == pytest.approx(2.0)
    assert np.allclose(analysis.transfer_matrix(run), [[0, 0.1, 0.2], [0.1, 0, 0.1], [0.2, 0.1, 0]])
    ce["ce"]["tiny"]["layer_3"] = 0.5
    (tmp_path / "tiny-ce.json").write_text(json.dumps(ce))
    with pytest.raises(RunFolderError, match="tiny-ce.json.*same lens layers"):
        load_results(tmp_path)
    (tmp_path / "second-ce.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"one \*-ce.json file.*found 2"):
        load_results(tmp_path)
