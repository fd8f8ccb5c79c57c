"""The command line answers at once: ``--help`` imports none of the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["run"], ["demo"], ["compare"], ["report"]])
def test_help_imports_no_heavy_library(command):
    done = subprocess.run([sys.executable, "-c", PROBE, *command, "--help"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert "usage: vision-lens" in done.stdout
    assert done.stdout.splitlines()[-1] == "", f"--help imported {done.stdout.splitlines()[-1]}"
