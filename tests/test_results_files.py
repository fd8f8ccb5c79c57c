"""What results/ may hold: the data the analyses read and the figures a committed page shows, never regenerated
output that no page shows (a run's report.html, its CSV view of aggregate_metrics.json, its own two figures)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, unavailable

pytestmark = pytest.mark.results

# The result data and lens parameters (read by summarise_results.py, make_figures.py, compare, the tests of the
# findings) and the checkpoints trained here.
DATA = (".json", ".jsonl", ".pt", ".th", ".safetensors")
PAGES = ("README.md", "results/README.md", "docs/*.md")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)")


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"needs git and a git checkout ({exc})", "run the tests in a clone of the repository")


def linked_files() -> set[Path]:
    """Every file that a committed page links to."""
    pages = [page for pattern in PAGES for page in REPO.glob(pattern)]
    return {(page.parent / target).resolve() for page in pages for target in _LINK.findall(page.read_text())}


def test_results_hold_data_and_the_figures_the_pages_show():
    tracked = git("ls-files", "results").split()
    assert any(f.endswith("aggregate_metrics.json") for f in tracked)  # the listing sees the results
    linked = linked_files()
    generated = [f for f in tracked if not f.endswith(DATA) and f != "results/README.md"
                 and not (f.endswith(".png") and (REPO / f).resolve() in linked)]
    assert not generated, (f"results/ holds files that are regenerated and that no committed page ({', '.join(PAGES)}) "
                           f"links: {', '.join(generated[:8])}; remove them from git (.gitignore keeps them out)")


def test_gitignore_keeps_a_reruns_generated_files_out():
    paths = ["results/cifar10-resnet20/report.html", "results/cifar10-resnet20/metrics.csv",
             "results/cifar10-resnet44/layerwise.png", "results/cifar10-resnet44/transfer_penalty.png",
             "results/new-run/report.html"]
    ignored = git("check-ignore", "--no-index", *paths).split()
    assert ignored == paths
    shown = ["results/cifar10-resnet20/transfer_penalty.png", "results/cifar10-resnet20/aggregate_metrics.json",
             "results/figures/layerwise.png"]
    assert all((REPO / f).resolve() in linked_files() for f in shown if f.endswith(".png"))
    assert subprocess.run(["git", "check-ignore", "--no-index", *shown], cwd=REPO).returncode == 1  # none ignored
