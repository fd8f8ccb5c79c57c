"""The package is a straight pipeline: no module imports one of a later stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vision_lens

pytestmark = pytest.mark.unit

PACKAGE = Path(vision_lens.__file__).parent
# In pipeline order; modules in one tuple are one stage. The cache is the store capture writes to.
STAGES = [
    ("errors", "threads", "files", "schema", "lens_kinds", "readout"), ("adapters",), ("data", "text"), ("cache",), ("checks",), ("capture",), ("lenses",),
    ("fit",), ("metrics",), ("artifacts", "reference_runs"), ("analysis",), ("signatures",), ("plotting",),
    ("compare", "report", "controls"),
    ("options", "preflight", "pipeline", "frontier", "demo", "cli", "__main__"),
]
RANK = {name: rank for rank, stage in enumerate(STAGES) for name in stage}


def stage_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_stages(path: Path) -> set[str]:
    """The package modules that ``path`` imports (relative or absolute), by their top-level name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            inside = path.parent != PACKAGE  # a subpackage's `..x` is the package's `.x`
            if node.level == 1 + inside and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1 + inside:
                found |= {alias.name for alias in node.names}
            elif node.level == 0 and (node.module or "").startswith("vision_lens."):
                found.add(node.module.split(".")[1])
    return found & set(RANK)


def test_every_module_belongs_to_a_stage():
    modules = {stage_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "resources"}
    assert modules <= set(RANK), sorted(modules - set(RANK))


def test_no_module_imports_a_later_stage():
    late = []
    for path in PACKAGE.rglob("*.py"):
        stage = stage_of(path)
        if stage in RANK:
            late += [f"{path.relative_to(PACKAGE)} imports {other}" for other in imported_stages(path)
                     if RANK[other] > RANK[stage]]
    assert not late, late


def test_lenses_do_not_import_capture():
    imported = set().union(*(imported_stages(path) for path in (PACKAGE / "lenses").glob("*.py")))
    assert "capture" not in imported and "fit" not in imported
    assert "adapters" in imported  # the check sees real imports


def test_the_lens_kind_registry_and_the_options_load_no_torch():
    """The registry is what --help lists the kinds from: reading it imports no lens module."""
    import subprocess
    import sys

    code = ("import sys; import vision_lens.lens_kinds as k, vision_lens.options; k.lens_kinds(); "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted({'torch', 'numpy'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)
