"""Faults injected into real runs: each run absorbs its fault, accounts for every image exactly
once, and gives the outputs of a clean run. Each test proves its fault happened where it meant it
to: the run's own count of failed task attempts (Spark's status tracker) must be above zero.

`pytest -m faults` selects these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests import fault_injection
from tests.conftest import (
    PROJECT_ROOT,
    featurization_info,
    image_table,
    make_project_copy,
    parquet,
    run_params,
)

pytestmark = pytest.mark.faults


def start_run(project: Path, *args: str) -> subprocess.Popen:
    """`kedro run` in its own process group (so that a test can kill all of it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(run: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = run.communicate(timeout=timeout)
    assert run.returncode == 0, output[-4000:]
    return output


def faulty_project(target: Path, mode: str, env: str = "local") -> tuple[Path, Path]:
    """A project copy whose runs inject ``mode`` (``fault_injection``), and its fault folder."""
    project = make_project_copy(target / "project")
    fault_dir = target / "faults"
    fault_dir.mkdir()
    spark_file = project / "conf" / env / "spark.yml"
    settings = yaml.safe_load(spark_file.read_text()) if spark_file.exists() else {}
    settings.update(fault_injection.spark_settings(mode, fault_dir, PROJECT_ROOT))
    spark_file.write_text(yaml.safe_dump(settings, sort_keys=False))
    return project, fault_dir


def features_by_path(table) -> dict[str, np.ndarray | None]:
    return {
        row["path"]: None if row["features"] is None else np.asarray(row["features"])
        for row in table.select("path", "features").collect()
    }


def assert_same_outputs(spark, project: Path, clean: Path) -> None:
    """Every image exactly once, features within 1e-6 and the same k and PCA features as the
    clean run."""
    rows = image_table(spark, project).select("path").collect()
    assert len(rows) == len({row["path"] for row in rows}), "an image has two rows"
    features, expected = (
        features_by_path(image_table(spark, folder)) for folder in (project, clean)
    )
    assert features.keys() == expected.keys()
    for path, vector in expected.items():
        np.testing.assert_allclose(features[path], vector, atol=1e-6, err_msg=path)
    metrics, clean_metrics = (
        json.loads((folder / "data/08_reporting/metrics.json").read_text())
        for folder in (project, clean)
    )
    assert metrics["k"] == clean_metrics["k"]
    assert metrics["images_in"] == metrics["images_featurized"] == len(expected)
    projected, clean_projected = (
        {
            row["path"]: row["pca_features"].toArray()
            for row in parquet(spark, folder, "07_model_output/pca_features.parquet").collect()
        }
        for folder in (project, clean)
    )
    assert projected.keys() == clean_projected.keys()
    for path, vector in clean_projected.items():
        np.testing.assert_allclose(projected[path], vector, atol=1e-5, err_msg=path)


def test_killed_python_worker_is_retried_and_nothing_is_lost(
    spark, finished_run, small_image_set, weights_file, tmp_path
):
    project, fault_dir = faulty_project(tmp_path, "pause-at-model-stage")
    run = start_run(project, "--params", run_params(small_image_set, weights_file))
    pids = fault_injection.wait_for_model_stage(fault_dir, run)
    os.kill(pids["worker"], signal.SIGKILL)
    output = finish(run)
    info = featurization_info(project)
    assert info["task_attempts_failed"] >= 1, output[-3000:]
    assert "task attempts failed and were retried" in output
    assert info["images_quarantined"] == 0
    assert_same_outputs(spark, project, finished_run)


def test_file_that_crashes_the_decoder_is_quarantined(
    spark, tiny_image_set, weights_file, tmp_path
):
    images = tmp_path / "images"
    shutil.copytree(tiny_image_set, images)
    # A valid JPEG (a comment segment after its start marker) that the injected fault crashes on.
    first = sorted(images.rglob("*.jpg"))[0]
    jpeg = first.read_bytes()
    comment = fault_injection.CRASH_MARKER
    poison = first.with_name("poison.jpg")
    poison.write_bytes(
        jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
    )
    project, _ = faulty_project(tmp_path, "crash-on-marker")
    run = start_run(
        project,
        "--pipelines",
        "ingestion,featurization",
        "--params",
        run_params(images, weights_file),
    )
    finish(run)
    info = featurization_info(project)
    assert info["task_attempts_failed"] >= 1
    rows = {row["path"]: row for row in image_table(spark, project).collect()}
    assert len(rows) == len(list(images.rglob("*.jpg")))
    (crashed,) = [row for row in rows.values() if row["features"] is None]
    assert crashed["path"].endswith("/poison.jpg")
    assert crashed["error_class"] == "DecoderCrash"
    assert "crashed on this file (SIGSEGV)" in crashed["reason"]
    assert info["images_quarantined"] == 1
    assert info["images_featurized"] == len(rows) - 1
