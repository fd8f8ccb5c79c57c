"""``vision-lens compare``: our runs and real ``tuned-lens eval`` output on normalised quantities.

``data/tiny-gpt2-tuned-lens/aggregate_metrics.json`` is real output of
tuned-lens 0.2.0's evaluation loop (``Eval.execute``, what ``tuned-lens eval``
runs, with ``--lens_types logit tuned --layer_transfer``) on a 6-layer GPT-2
trained for seconds on a toy corpus with a locally built tokenizer; its
``make_fixture.py`` regenerates it offline and lists the two shims today's
stack needs (torchdata 0.9 beside the venv; ``Eval`` built in Python because
the CLI cannot parse ``--lens_types``, and the model loaded without
``load_in_8bit``). The eval loop itself ran unmodified.
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import tuned_lens

from vision_lens import analysis, plotting
from vision_lens.artifacts import load_results
from vision_lens.cli import main
from vision_lens.compare import compare, compared_numbers

TUNED_LENS_EVAL = Path(__file__).parent / "data" / "tiny-gpt2-tuned-lens" / "aggregate_metrics.json"
LLM_NAME = "tiny-gpt2-tuned-lens"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.unit
def test_fixture_is_the_format_of_the_installed_tuned_lens():
    assert version("tuned-lens") == "0.2.0"  # the version whose eval output we read
    # Transfer tables are indexed [translator layer][evaluated layer], as ours are. (Read, not imported:
    # the module needs torchdata.dataloader2, which current torchdata no longer has.)
    source = (Path(tuned_lens.__file__).parent / "scripts" / "eval_loop.py").read_text()
    assert '["layer_transfer"]["ce"][trans_name][\n                        layer_name\n                    ]' in source
    aggregate = json.loads(TUNED_LENS_EVAL.read_text())
    assert set(aggregate) == {"logit", "tuned", "baseline"}
    assert set(aggregate["tuned"]) == {"ce", "entropy", "kl", "layer_transfer"}
    assert set(aggregate["tuned"]["layer_transfer"]) == {"ce", "kl"}  # no penalty: we derive it
    assert list(aggregate["tuned"]["ce"]) == [f"layer_{k}" for k in range(6)]


@pytest.mark.unit
def test_tuned_lens_output_reads_as_a_run():
    run = load_results(TUNED_LENS_EVAL)
    assert run.name == LLM_NAME and run.run == {} and run.layers == {}
    ce = run.aggregate["tuned"]["layer_transfer"]["ce"]
    penalty = analysis.transfer_matrix(run, "penalty")
    assert penalty[2, 4] == pytest.approx(ce["layer_2"]["layer_4"] - ce["layer_4"]["layer_4"])
    assert np.allclose(np.diag(penalty), 0)
    ax = plotting.transfer_heatmap(run)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"layer_{k}" for k in range(6)]


def expected_normalised_penalty(aggregate: dict, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """From the raw JSON: penalty ce[i][j] - ce[j][j] over the mean of ce[k][k], averaged at each |i - j|, over the
    layers from ``first`` (1 for a language model: its layer_0, the token embeddings, is left out)."""
    ce = aggregate["tuned"]["layer_transfer"]["ce"]
    layers = range(first, len(ce))
    n = len(layers)
    diagonal = np.mean([ce[f"layer_{k}"][f"layer_{k}"] for k in layers])
    means = [
        np.mean([ce[f"layer_{i}"][f"layer_{j}"] - ce[f"layer_{j}"][f"layer_{j}"]
                 for i in layers for j in layers if abs(i - j) == d]) / diagonal
        for d in range(n)
    ]
    return np.arange(n) / (n - 1), np.array(means)


@pytest.mark.integration
@pytest.mark.shared
def test_compare_normalises_vision_runs_and_the_llm_alike(resnet20_run, resnet32_run):
    fig = compare([resnet20_run, resnet32_run, TUNED_LENS_EVAL])
    ce_ax, kl_ax, penalty_ax = fig.axes[:3]  # then the penalty panel's pair-count axis
    inputs = {"cifar:resnet20": resnet20_run / "aggregate_metrics.json",
              "cifar:resnet32": resnet32_run / "aggregate_metrics.json", LLM_NAME: TUNED_LENS_EVAL}
    for name, path in inputs.items():
        aggregate = json.loads(path.read_text())
        for ax, metric in ((ce_ax, "ce"), (kl_ax, "kl")):
            lines = {line.get_label(): line for line in ax.get_lines()}
            for lens_type in ("tuned", "logit"):
                values = aggregate[lens_type][metric]
                line = lines[f"{lens_type} · {name}"]
                assert np.allclose(line.get_ydata(), [v / values["layer_0"] for v in values.values()])
                assert np.allclose(line.get_xdata(), np.linspace(0, 1, len(values)))
        x, y = expected_normalised_penalty(aggregate, first=1 if name == LLM_NAME else 0)
        line = {line.get_label(): line for line in penalty_ax.get_lines()}[name]
        assert np.allclose(line.get_xdata(), x) and np.allclose(line.get_ydata(), y)
    # Only unitless quantities are on the axes and in the legend; the title names the raw units.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "cifar:resnet20" in legend and LLM_NAME in legend
    assert ce_ax.get_ylabel() == "CE / CE at the first layer" and "normalised" in ce_ax.get_title()
    assert penalty_ax.get_ylabel() == "mean transfer penalty / mean diagonal CE"
    assert "bits per byte" in fig._suptitle.get_text()


@pytest.mark.integration
@pytest.mark.shared
def test_compare_cli_takes_run_folders_eval_folders_and_json_files(resnet20_run, tmp_path):
    eval_folder = tmp_path / "pythia-like-eval"  # a `tuned-lens eval --output` folder
    eval_folder.mkdir()
    shutil.copy(TUNED_LENS_EVAL, eval_folder / "aggregate_metrics.json")
    out = tmp_path / "figures" / "compare.png"
    assert main(["compare", str(resnet20_run), str(eval_folder), str(TUNED_LENS_EVAL), "--out", str(out)]) == 0
    assert plt.imread(out).shape[:2] == (660, 2250)
    # Its numbers beside it: the same normalised curves, the LLM's penalty as computed from its own file.
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert [i["name"] for i in numbers["inputs"]] == ["cifar:resnet20", "pythia-like-eval", TUNED_LENS_EVAL.parent.name]
    llm = numbers["inputs"][1]
    x, y = expected_normalised_penalty(json.loads(TUNED_LENS_EVAL.read_text()), first=1)
    assert np.allclose(llm["transfer"]["relative_distance"], x)
    assert np.allclose([np.nan if v is None else v for v in llm["transfer"]["normalised_penalty"]], y, equal_nan=True)
    ce = json.loads((resnet20_run / "aggregate_metrics.json").read_text())["tuned"]["ce"]
    assert np.allclose(numbers["inputs"][0]["layerwise"]["tuned"]["ce"]["normalised"],
                       [v / ce["layer_0"] for v in ce.values()])
    assert main(["compare", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.results
def test_compare_leaves_out_a_class_token_vits_constant_embed():
    """The committed ViT's `embed` is read at the class token (one vector for every image): its pairs say nothing
    about a shared stream, so the transfer curve, drawn and written, runs over blocks.0 .. blocks.5 only."""
    vit = load_results(Path(__file__).parents[1] / "results" / "cifar10-vit")
    assert vit.block_names[0] == "embed" and list(analysis.past_embedding(vit)) == list(range(1, 7))
    penalty, ce = analysis.transfer_matrix(vit), analysis.transfer_matrix(vit, "ce")
    own = np.diag(ce)[1:].mean()
    expected = [np.mean([penalty[i, j] for i in range(1, 7) for j in range(1, 7) if abs(i - j) == d]) / own
                for d in range(6)]
    transfer = compared_numbers([vit])[0]["transfer"]
    assert np.allclose(transfer["relative_distance"], np.linspace(0, 1, 6))
    assert transfer["pairs"] == [6, 10, 8, 6, 4, 2]
    assert np.allclose(transfer["normalised_penalty"], expected)
    penalty_ax = compare([vit]).axes[2]
    line = {line.get_label(): line for line in penalty_ax.get_lines()}[vit.name]
    assert np.allclose(line.get_ydata(), expected)
