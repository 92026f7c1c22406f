"""The notebooks run top to bottom: the exploration notebook against a finished local run, the
cloud notebook against the emr environment on S3 (moto), running the pipelines itself."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, kedro, make_project_copy
from tests.s3_outputs import assert_complete_run, put_encrypted

pytestmark = pytest.mark.pipeline

NOTEBOOK = PROJECT_ROOT / "notebooks" / "exploration.ipynb"
EMR_NOTEBOOK = PROJECT_ROOT / "notebooks" / "emr_pipeline.ipynb"


def _text(notebook) -> str:
    """Every text output of an executed notebook, without the colours rich adds."""
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    raw_text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs
    )
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", raw_text).split())


def _execute(notebook, folder: Path) -> None:
    """Runs every cell in a fresh python3 kernel started in ``folder`` (this process's
    environment: the tests' PYSPARK_PYTHON, AWS endpoint and bucket)."""
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()


@pytest.mark.parametrize("path", [NOTEBOOK, EMR_NOTEBOOK], ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_exploration_notebook_runs_on_the_sample(finished_run):
    notebooks = finished_run / "notebooks"
    notebooks.mkdir(exist_ok=True)
    shutil.copy2(NOTEBOOK, notebooks / NOTEBOOK.name)
    notebook = nbformat.read(notebooks / NOTEBOOK.name, as_version=4)
    _execute(notebook, notebooks)
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "sample images, scree curve and scatter"
    text = _text(notebook)
    assert "'images_featurized': 156" in text
    assert "components explain" in text
    assert "Banana Red" in text


def test_cloud_notebook_runs_the_pipelines_on_s3(tmp_path, s3_bucket, tiny_image_set, weights_file):
    project = make_project_copy(tmp_path / "project")
    kedro(project, "emr", "upload-images", str(tiny_image_set))
    weights_uri = f"s3://{s3_bucket}/weights/{weights_file.name}"
    put_encrypted(weights_file, weights_uri)

    notebook = nbformat.read(EMR_NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", ())]
    parameters.source = (
        f"PROJECT_PATH = {str(project)!r}\n"
        f"FRUITS_S3_BUCKET = {s3_bucket!r}\n"
        f"KEDRO_PARAMS = 'featurization.weights={weights_uri}'\n"
        "RUN_PIPELINES = True\n"
    )
    _execute(notebook, tmp_path)

    text = _text(notebook)
    raw_images = f"s3a://{s3_bucket}/fruits-pipeline/01_raw/fruits-360/"
    assert f"images under {raw_images} : 30" in text
    assert "'images_featurized': 30" in text
    assert "| 1280|" in text  # feature_dim column of the features table
    metrics = assert_complete_run(s3_bucket, tiny_image_set)
    assert f"{metrics['k']} principal components, 30 rows" in text
