"""The command line answers at once (``--help`` imports none of the heavy libraries) and runs
with no more compute threads than cores."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vision_lens import threads

from .conftest import REPO


HEAVY = ("torch", "torchvision", "matplotlib", "seaborn", "timm", "lucent", "sklearn")

# Runs `python -m vision_lens ARGS` in-process, then prints which heavy modules it imported.
PROBE = f"""
import runpy, sys
sys.argv[0] = "vision-lens"
try:
    runpy.run_module("vision_lens", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
"""


@pytest.mark.unit
@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["run"], ["demo"], ["compare"], ["report"], ["control"],
                                     ["references"]])
def test_help_imports_no_heavy_library(command):
    done = subprocess.run([sys.executable, "-c", PROBE, *command, "--help"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert "usage: vision-lens" in done.stdout
    assert done.stdout.splitlines()[-1] == "", f"--help imported {done.stdout.splitlines()[-1]}"


@pytest.mark.unit
def test_torch_threads_are_capped_at_the_usable_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    with threads.torch_threads(4):
        assert threads.limit_torch_threads() == 3 == torch.get_num_threads()
        assert threads.limit_torch_threads(most=2) == 2 == torch.get_num_threads()
        torch.set_num_threads(1)  # a lower setting (OMP_NUM_THREADS=1) is kept
        assert threads.limit_torch_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.unit
def test_batch_size_and_workers_default_to_the_device():
    from vision_lens.capture import default_batch_size, default_workers
    from vision_lens.options import RunOptions
    from vision_lens.pipeline import load_model
    from vision_lens.threads import usable_cores

    assert default_batch_size("cpu") == 64 and default_batch_size("cuda:1") == 256
    cpu_workers = usable_cores() if usable_cores() > 1 else 0
    assert default_workers("cpu") == cpu_workers and default_workers("cuda:1") == usable_cores()
    opts = RunOptions(model="cifar:resnet8", weights="random", data="data", out="out", device="cpu")
    _, resolved = load_model(opts)
    # Resolved before capture, into a copy that run.json records; the options as given are left as they were.
    assert (resolved.device, resolved.batch_size, resolved.workers) == ("cpu", 64, cpu_workers)
    assert resolved.lenses == ["tuned", "shared", "linear_probe"]  # the registry's default kinds
    assert (opts.device, opts.batch_size, opts.workers, opts.lenses) == ("cpu", None, None, None)
    given = RunOptions(model="cifar:resnet8", weights="random", data="data", out="out", device="cpu", batch_size=7,
                       workers=3, lenses=["linear_probe", "tuned"])
    _, resolved = load_model(given)
    assert (resolved.batch_size, resolved.workers, resolved.lenses) == (7, 3, ["tuned", "linear_probe"])


@pytest.mark.integration
@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--workers", "-1")])
def test_impossible_batch_size_or_workers_is_named(flag, value, tmp_path, capsys):
    from vision_lens.cli import main

    args = ["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), flag, value]
    assert main(args) == 2
    assert f"vision-lens run: error: {flag} {value}: give " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_bug_is_not_reported_as_the_users_fault(monkeypatch, tmp_path):
    """A bare ValueError inside a command is a bug: it goes through with its traceback, not as "error: ..."."""
    from vision_lens import pipeline
    from vision_lens.cli import main

    def bug(opts, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(pipeline, "run", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["run", "--model", "cifar:resnet8", "--weights", "random", "--data", str(tmp_path), "--out",
              str(tmp_path / "out")])
