"""Checks of a complete pipeline run on S3 (moto), read back through s3fs, pandas and boto3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pandas as pd
import s3fs

from fruits_pipeline.s3_encryption import s3fs_kwargs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _encryption_setting() -> tuple[str | None, str | None]:
    # The emr environment's s3_encryption, as conf/emr/globals.yml reads it.
    return os.environ.get("FRUITS_S3_SSE"), os.environ.get("FRUITS_S3_SSE_KMS_KEY_ID")


def put_encrypted(local: Path, uri: str) -> None:
    """Uploads a file as the project does (the emr environment's s3_encryption), e.g. images."""
    encryption = s3fs_kwargs(*_encryption_setting())
    s3fs.S3FileSystem(skip_instance_cache=True, s3_additional_kwargs=encryption).put_file(
        str(local), uri
    )


def all_objects(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def assert_encrypted(bucket: str) -> int:
    """Every object of the bucket is encrypted as the emr environment's s3_encryption asks: with
    its algorithm and KMS key; when unset, with no encryption asked by any writer (moto applies
    no default of its own, real S3 its SSE-S3). Returns how many objects there are."""
    expected = _encryption_setting()
    s3 = boto3.client("s3")
    keys = all_objects(bucket)
    headers = {key: s3.head_object(Bucket=bucket, Key=key) for key in keys}
    wrong = {
        key: (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"))
        for key, head in headers.items()
        if (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) != expected
    }
    assert keys and not wrong, f"expected {expected}, found {list(wrong.items())[:5]}"
    return len(keys)


def assert_complete_run(bucket: str, images: Path, prefix: str = "fruits-pipeline") -> dict:
    """The outputs a full run on ``images`` leaves under s3://bucket/prefix/; returns metrics."""
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{bucket}/{prefix}"

    def committed(dataset: str) -> str:
        version = filesystem.cat_file(f"{root}/{dataset}/_COMMITTED").decode().strip()
        return f"s3://{root}/{dataset}/{version}"

    image_count = sum(1 for path in images.rglob("*.jpg"))
    classes = sorted(folder.name for folder in images.iterdir() if folder.is_dir())
    metrics = json.loads(filesystem.cat_file(f"{root}/08_reporting/metrics.json"))
    assert metrics["images_in"] == metrics["images_featurized"] == image_count
    assert metrics["images_quarantined"] == 0
    assert sorted(metrics["images_per_class"]) == classes

    pca_features = coordinates_frame(f"s3://{root}/07_model_output/pca_features")
    assert len(pca_features) == image_count
    assert sorted(pca_features["label"].unique()) == classes
    assert pca_features["path"].str.startswith(f"s3a://{root}/01_raw/fruits-360/").all()
    assert {len(vector) for vector in pca_features["pca_features"]} == {metrics["k"]}

    components = [f"pc_{index:03d}" for index in range(1, metrics["k"] + 1)]
    csv_parts = filesystem.glob(committed("07_model_output/pca_features.csv") + "/part-*.csv")
    csv = pd.concat(pd.read_csv(f"s3://{part}") for part in csv_parts)
    assert list(csv.columns) == ["path", "label", *components]
    assert len(csv) == image_count

    for plot in ("explained_variance", "images_per_class", "pca_scatter"):
        assert filesystem.cat_file(f"{root}/08_reporting/{plot}.png")[:8] == PNG_SIGNATURE
    report = filesystem.cat_file(f"{root}/08_reporting/run_report.md").decode()
    assert (
        f"| principal components kept (k) | {metrics['k']} of 1280 (fitted in this run) |" in report
    )
    assert_encrypted(bucket)
    return metrics


def coordinates_frame(uri: str) -> pd.DataFrame:
    """The coordinates table (Delta Lake) at ``uri`` on moto's S3, read by ``deltalake``."""
    from deltalake import DeltaTable

    # moto on 127.0.0.1: plain HTTP, or TLS with the tests' own certificate (tests/moto_tls.py).
    options = {"AWS_ALLOW_HTTP": "true", "allow_invalid_certificates": "true"}
    return DeltaTable(uri, storage_options=options).to_pandas()
