"""Runs that cannot succeed stop before Spark starts, with a message that says what to fix.

These run the real `kedro` command in a fresh process, as a user would.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import kedro_process


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return kedro_process(project, "run", *args)


def short_user_error(result: subprocess.CompletedProcess, project: Path) -> str:
    """Checks that a user error ended the run with one paragraph (exit code 1, at most 15
    non-blank lines in all, no traceback, which is in the log file); returns the output on one
    line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 15, output
    assert output.rstrip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" in (project / "fruits-pipeline.log").read_text()
    return " ".join(output.split())


def failed_before_spark(result: subprocess.CompletedProcess, project: Path) -> str:
    """Checks that the run failed without starting Spark, with a short user error; returns
    its output on one line."""
    output = short_user_error(result, project)
    # What a starting Spark driver prints (log4j's defaults and Hadoop's native-library check).
    assert "Setting default log level" not in output
    assert "NativeCodeLoader" not in output
    return output


def test_default_location_without_images_says_where_to_put_the_data_set(project_copy):
    result = kedro_run(project_copy)
    output = failed_before_spark(result, project_copy)
    expected_location = project_copy / "data" / "01_raw" / "fruits-360"
    assert f"No image matching '*.jpg' was found under '{expected_location}'" in output
    assert "moltean/fruits" in output and "github.com/fruits-360" in output
    assert "--params raw_images_path=" in output


def test_missing_weights_file_stops_the_run_before_spark(project_copy, small_image_set, tmp_path):
    missing = tmp_path / "no-such.weights.h5"
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},featurization.weights={missing}",
    )
    output = failed_before_spark(result, project_copy)
    assert f"MobileNetV2 weights could not be had from featurization.weights='{missing}'" in output
    assert "$KERAS_HOME/models/" in output


def test_threshold_outside_zero_one_stops_the_run_before_spark(project_copy, small_image_set):
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},dimensionality_reduction.variance_threshold=1.5",
    )
    output = failed_before_spark(result, project_copy)
    assert "dimensionality_reduction.variance_threshold must be in (0, 1], got 1.5" in output


def test_too_few_images_for_pca_stops_the_run_before_spark(project_copy, sample_images, tmp_path):
    lonely = tmp_path / "one" / "Banana Red"
    lonely.mkdir(parents=True)
    image = next((sample_images / "Training" / "Banana Red").glob("*.jpg"))
    (lonely / image.name).write_bytes(image.read_bytes())
    result = kedro_run(project_copy, "--params", f"raw_images_path={lonely.parent}")
    output = failed_before_spark(result, project_copy)
    assert "PCA needs at least 2 images" in output and str(lonely.parent) in output


def test_unknown_environment_names_the_missing_configuration(project_copy):
    result = kedro_run(project_copy, "--env", "no-such-env")
    output = failed_before_spark(result, project_copy)
    assert f"{project_copy / 'conf' / 'no-such-env'}" in output
