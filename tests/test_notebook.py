"""The exploration notebook runs, top to bottom, against a finished run's catalog."""

from __future__ import annotations

import re
import shutil

import nbformat
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "exploration.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_exploration_notebook_runs_on_the_sample(finished_run):
    notebooks = finished_run / "notebooks"
    notebooks.mkdir(exist_ok=True)
    shutil.copy2(NOTEBOOK, notebooks / NOTEBOOK.name)
    notebook = nbformat.read(notebooks / NOTEBOOK.name, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebooks)}},
    ).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "sample images, scree curve and scatter"
    raw_text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs
    )
    # rich colours the notebook's plain-text output
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", raw_text).split())
    assert "'images_featurized': 156" in text
    assert "components explain" in text
    assert "Banana Red" in text
