"""cifar:inceptionv1: GoogLeNet's blocks for 32x32 inputs, its training script (one smoke step), and a lens run."""

from __future__ import annotations

import json

import pytest
import torch

from vision_lens.adapters import create_adapter
from vision_lens.cli import main

from .conftest import load_script


BLOCKS = ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
          "inception4d", "inception4e", "inception5a", "inception5b"]


@pytest.mark.unit
def test_blocks_and_aux_heads():
    """GoogLeNet's blocks, of which only the head's input has a path; the rest of the adapter's contract (forward
    order, widths, the exact logit lens at the last block) is tests/test_architecture_contract.py's."""
    adapter = create_adapter("cifar:inceptionv1", weights="random", seed=0)
    assert [b.name for b in adapter.blocks] == BLOCKS
    assert [b.path is None for b in adapter.blocks] == [True] * 11 + [False]
    assert set(adapter.aux_classifiers) == {"inception4a", "inception4d"}


@pytest.mark.integration
def test_training_script_smoke_step_gives_a_checkpoint_the_pipeline_runs(tmp_path, tiny_data):
    script = load_script("train_cifar")
    checkpoint = tmp_path / "inception.th"
    args = script.parse_args(["--arch", "inceptionv1", "--data", str(tiny_data), "--out", str(checkpoint), "--width",
                              "0.25", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--max-steps", "1",
                              "--fp16", "--checkpoint-dir", str(tmp_path / "checkpoint")])
    summary = script.train(args)
    saved = torch.load(checkpoint, weights_only=True)
    # One step, and the accuracy it records is over the 20 images of tiny_data's test split, all of them.
    assert summary["steps"] == 1 and saved["test_acc"] == summary["test_acc"]
    assert summary["test_acc"] * 20 == round(summary["test_acc"] * 20)
    assert saved["state_dict"]["fc.weight"].dtype == torch.float16 and float(saved["state_dict"]["width"]) == 0.25

    adapter = create_adapter("cifar:inceptionv1", weights=str(checkpoint))
    assert adapter.blocks[0].channels == 16  # 64 at width 1
    out = tmp_path / "run"
    code = main(["run", "--model", "cifar:inceptionv1", "--weights", str(checkpoint), "--data", str(tiny_data),
                 "--out", str(out), "--workers", "0", "--max-iter", "3"])
    assert code == 0
    aggregate = json.loads((out / "aggregate_metrics.json").read_text())
    # The trained auxiliary classifiers are reported at their blocks, beside the lenses.
    assert {k for k, v in aggregate["aux_head"]["acc"].items() if v is not None} == {"layer_5", "layer_8"}
    # Only the head's input has a path: the logit lens is measured there and nowhere else.
    assert [v is None for v in aggregate["logit"]["kl"].values()] == [True] * 11 + [False]
