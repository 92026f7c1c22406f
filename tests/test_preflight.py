"""Runs that cannot succeed stop before Spark starts, with a message that says what to fix.

These run the real `kedro` command in a fresh process, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_no_spark(result: subprocess.CompletedProcess) -> None:
    # What a starting Spark driver prints (log4j's defaults and Hadoop's native-library check).
    output = result.stdout + result.stderr
    assert "Setting default log level" not in output
    assert "NativeCodeLoader" not in output


def test_default_location_without_images_says_where_to_put_the_data_set(project_copy):
    result = kedro_run(project_copy)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    expected_location = project_copy / "data" / "01_raw" / "fruits-360"
    assert f"No image matching '*.jpg' was found under '{expected_location}'" in output
    assert "moltean/fruits" in output and "github.com/fruits-360" in output
    assert "--params raw_images_path=" in output
    _assert_no_spark(result)


def test_missing_weights_file_stops_the_run_before_spark(project_copy, small_image_set, tmp_path):
    missing = tmp_path / "no-such.weights.h5"
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},featurization.weights={missing}",
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "WeightsUnavailableError" in output
    assert f"featurization.weights='{missing}'" in output
    assert "$KERAS_HOME/models/" in output
    _assert_no_spark(result)
