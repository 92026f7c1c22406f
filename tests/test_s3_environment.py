"""The emr environment: the base catalog on S3 (types kept, every write encrypted), the S3A
connector at pyspark's Hadoop version, and clear errors for a missing or unknown bucket."""

from __future__ import annotations

import re
from pathlib import Path

import pyspark
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, kedro_process, make_project_copy, project_config
from tests.test_preflight import short_user_error

DELTA_DATASET = "fruits_pipeline.datasets.DeltaMergeDataset"
SPARK_DATASETS = {
    DELTA_DATASET,
    "fruits_pipeline.datasets.CommittedSparkDataset",
    "fruits_pipeline.datasets.SparkMLModelDataset",
}
# s3_encryption unset: no header, the bucket's default encryption applies.
BUCKET_DEFAULT = {"s3_additional_kwargs": {}}


def _catalog(env: str) -> dict:
    catalog = project_config(env)["catalog"]
    return {name: entry for name, entry in catalog.items() if not name.startswith("_")}


def test_emr_catalog_is_the_base_catalog_on_s3(monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    monkeypatch.setenv("FRUITS_S3_PREFIX", "team/fruits")
    base, emr = _catalog("local"), _catalog("emr")
    assert emr.keys() == base.keys()
    root = "fruits-bucket/team/fruits/"
    assert emr["raw_images"]["path"] == f"s3a://{root}01_raw/fruits-360/"
    for name, emr_entry in emr.items():
        assert emr_entry["type"] == base[name]["type"], name
        if name in ("raw_images", "feature_model"):  # base entries, their paths from globals
            continue
        entry, local = emr_entry, base[name]
        if entry["type"] == "CachedDataset":  # kept in memory the same way, stored on S3
            assert {k: v for k, v in entry.items() if k != "dataset"} == {
                k: v for k, v in local.items() if k != "dataset"
            }, name
            entry, local = entry["dataset"], local["dataset"]
        local_path = local["filepath"].removeprefix("data/")
        # Spark writes through Hadoop's S3A connector; the small files through s3fs.
        scheme = "s3a" if entry["type"] in SPARK_DATASETS else "s3"
        assert entry["filepath"] == f"{scheme}://{root}{local_path}", name
        own = ("filepath", "fs_args")
        if entry["type"] == DELTA_DATASET:  # written by S3A, encrypted by its settings
            assert "fs_args" not in entry, name
        else:
            assert entry["fs_args"] == BUCKET_DEFAULT, name
        rest = {key: value for key, value in entry.items() if key not in own}
        assert rest == {key: value for key, value in local.items() if key not in own}


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
