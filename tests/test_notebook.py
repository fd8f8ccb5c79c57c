"""The example notebook, examples/llm_control.ipynb ("Add the vision control to your LLM lens study"): committed
without outputs, and executed from top to bottom by a Jupyter kernel (nbclient), any error failing the test.

It runs in a temporary copy (its cwd, where it writes its control files), importing this checkout's vision_lens, and
reads the references by name and Pythia-12B from ../shared (VISION_LENS_SHARED), whose absence it survives with a
printed note.
"""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import LLM_ANCHORS, REPO, SHARED, require_shared

NOTEBOOK = REPO / "examples" / "llm_control.ipynb"
CELL_TIMEOUT_S = 600  # a cell's wall-clock limit; the whole notebook takes some 20 s of one core
SKIPPED_PYTHIA = "Pythia-12B skipped"
CONTROL_FILES = {"control.json", "control.md", "control.png"}


def text_of(cell) -> str:
    """What a code cell printed and returned, as text."""
    return "".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell.outputs)


@pytest.mark.unit
def test_the_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), (
        f"{NOTEBOOK.relative_to(REPO)} holds outputs: clear them before committing (Jupyter: Edit > Clear outputs of "
        "all cells)")
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.integration
def test_the_notebook_runs_from_top_to_bottom_without_an_error(tmp_path):
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    notebook = nbformat.read(copy, as_version=4)
    # The kernel imports this checkout's vision_lens and finds ../shared as the tests do.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "VISION_LENS_SHARED": str(SHARED)}
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # a cell's error raises CellExecutionError, naming the cell and the traceback
    nbformat.write(notebook, copy)  # kept beside the test's other files, to read on a failure

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    printed = "\n".join(text_of(cell) for cell in code)
    assert "lm-reference: embedding layer left out" in printed and "vision controls (trained)" in printed
    assert {p.name for p in (tmp_path / "llm-control").iterdir()} == CONTROL_FILES
    figures = sum("image/png" in o.get("data", {}) for cell in code for o in cell.outputs)
    assert figures >= 3, f"the notebook drew {figures} figures"  # the run's, the control's, compare's
    if LLM_ANCHORS.is_dir():
        assert SKIPPED_PYTHIA not in printed and "pythia-12b-deduped" in printed
    else:
        assert SKIPPED_PYTHIA in printed
        require_shared(LLM_ANCHORS)  # the rest ran; the Pythia-12B cell's work is what was skipped
