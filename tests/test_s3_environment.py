"""The emr environment: the base catalog on S3 (types kept, every write encrypted), the S3A
connector at pyspark's Hadoop version, and clear errors for a missing or unknown bucket."""

from __future__ import annotations

import re
from pathlib import Path

import pyspark
import pytest
import yaml

from tests.conftest import (
    PROJECT_ROOT,
    kedro_process,
    make_project_copy,
    project_config,
    short_user_error,
)

# Delta Lake's files are written and read by Spark alone (S3A's encryption settings).
DELTA_DATASETS = {
    "fruits_pipeline.datasets.DeltaMergeDataset",
    "fruits_pipeline.datasets.DeltaHistoryDataset",
    "fruits_pipeline.datasets.DeltaChangeFeedDataset",
}
# s3_encryption unset: no header, the bucket's default encryption applies.
BUCKET_DEFAULT = {"s3_additional_kwargs": {}}


def _stored(catalog: dict) -> dict[str, dict]:
    """The stored datasets of a catalog, by name (a CachedDataset's wrapped one)."""
    return {
        name: entry.get("dataset", entry)
        for name, entry in catalog.items()
        if not name.startswith("_") and name not in ("raw_images", "feature_model")
    }


def test_one_catalog_puts_every_dataset_under_its_environments_root(monkeypatch):
    """conf/base/catalog.yml is the only catalog: the emr environment changes its root (and
    the filesystem's arguments) through globals.yml, never a dataset entry."""
    assert not (PROJECT_ROOT / "conf" / "emr" / "catalog.yml").exists()
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    monkeypatch.setenv("FRUITS_S3_PREFIX", "team/fruits")
    roots = {"local": ("data/", {}), "emr": ("s3a://fruits-bucket/team/fruits/", BUCKET_DEFAULT)}
    stored = {env: _stored(project_config(env)["catalog"]) for env in roots}
    assert stored["local"].keys() == stored["emr"].keys()
    assert len(stored["local"]) >= 15
    for env, (root, fs_args) in roots.items():
        config = project_config(env)
        assert config["parameters"]["run_lock"]["path"] == f"{root}run.lock"
        for name, entry in stored[env].items():
            path = entry.get("filepath") or entry["path"]
            assert path.startswith(root), (env, name, path)
            relative = path.removeprefix(root)
            local = stored["local"][name]
            assert relative == (local.get("filepath") or local["path"]).removeprefix("data/")
            assert entry.get("fs_args") == (None if entry["type"] in DELTA_DATASETS else fs_args)
    emr = project_config("emr")["catalog"]
    assert emr["raw_images"]["path"] == "s3a://fruits-bucket/team/fruits/01_raw/fruits-360/"


@pytest.mark.parametrize(
    ("setting", "s3a", "s3fs"),
    [
        ({}, (None, None), {}),
        ({"FRUITS_S3_SSE": "AES256"}, ("AES256", None), {"ServerSideEncryption": "AES256"}),
        (
            {"FRUITS_S3_SSE": "aws:kms", "FRUITS_S3_SSE_KMS_KEY_ID": "alias/fruits"},
            ("SSE-KMS", "alias/fruits"),
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/fruits"},
        ),
    ],
)
def test_one_encryption_setting_reaches_s3a_s3fs_and_the_run_lock(monkeypatch, setting, s3a, s3fs):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    config = project_config("emr")
    spark = config["spark"]
    assert (
        spark["spark.hadoop.fs.s3a.encryption.algorithm"],
        spark["spark.hadoop.fs.s3a.encryption.key"],
    ) == s3a
    assert config["catalog"]["pipeline_metrics"]["fs_args"] == {"s3_additional_kwargs": s3fs}
    assert config["parameters"]["run_lock"]["fs_args"] == {"s3_additional_kwargs": s3fs}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"FRUITS_S3_SSE": "SSE-S3"}, "is not one of null"),
        ({"FRUITS_S3_SSE": "aws:kms"}, "needs s3_encryption.kms_key_id"),
        ({"FRUITS_S3_SSE_KMS_KEY_ID": "alias/fruits"}, "goes with aws:kms only"),
    ],
)
def test_a_wrong_encryption_setting_is_a_clear_error(monkeypatch, setting, message):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match=message):
        project_config("emr")["spark"]


def test_emr_spark_settings_use_yarn(monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    spark = project_config("emr")["spark"]
    assert spark["spark.master"] == "yarn"
    # Base settings the environment does not replace still apply.
    assert spark["spark.python.worker.reuse"] is True
    # ...but not the local fixed heap: EMR's spark-defaults.conf keeps its driver JVM options.
    assert spark["spark.driver.extraJavaOptions"] is None
    assert project_config("local")["spark"]["spark.driver.extraJavaOptions"].startswith("-Xms2g")


def test_hadoop_aws_is_at_pyspark_hadoop_version():
    jars = Path(pyspark.__file__).parent / "jars"
    (client_api,) = jars.glob("hadoop-client-api-*.jar")
    hadoop_version = re.search(r"hadoop-client-api-(.+)\.jar", client_api.name).group(1)
    local_s3 = yaml.safe_load((PROJECT_ROOT / "tests" / "s3_local" / "spark.yml").read_text())
    packages = local_s3["spark.jars.packages"].split(",")
    assert f"org.apache.hadoop:hadoop-aws:{hadoop_version}" in packages
    # Delta at the EMR release's version, read from the one place it is set.
    assert "io.delta:delta-spark_2.12:${globals:emr_release.delta}" in packages


def _run_error(result, project: Path) -> str:
    output = short_user_error(result, project)
    assert "Py4J" not in output and "at org.apache" not in output, "no JVM stack trace"
    return output


def test_unknown_bucket_is_a_clear_error_before_spark(tmp_path, moto_server, monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "no-such-fruits-bucket")
    project = make_project_copy(tmp_path / "project")
    message = _run_error(kedro_process(project, "run", "--env", "emr"), project)
    assert "S3 bucket 'no-such-fruits-bucket', used by" in message
    assert "Set FRUITS_S3_BUCKET (and FRUITS_S3_PREFIX), read by conf/emr/globals.yml" in message
    assert "SparkSession ready" not in message


def test_missing_bucket_setting_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FRUITS_S3_BUCKET", raising=False)
    project = make_project_copy(tmp_path / "project")
    message = _run_error(kedro_process(project, "run", "--env", "emr"), project)
    assert "Environment variable 'FRUITS_S3_BUCKET' not found" in message


def test_emr_environment_loads_without_spark(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    project = make_project_copy(tmp_path / "project")
    described = kedro_process(project, "catalog", "describe-datasets", "--env", "emr")
    assert described.returncode == 0, described.stderr
    assert "CommittedSparkDataset" in described.stdout
    assert "SparkSession ready" not in described.stdout + described.stderr
