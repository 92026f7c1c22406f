"""The outputs' lock on a real S3 API (moto): exclusive, named, leased, taken over once."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import s3fs

from fruits_pipeline.run_lock import ConcurrentRunError, RunLock
from fruits_pipeline.s3_encryption import s3fs_kwargs
from tests.conftest import BUCKET_DEFAULT_KMS_KEY, create_bucket

pytestmark = pytest.mark.faults


def _lock_uri(bucket: str) -> str:
    return f"s3a://{bucket}/fruits-pipeline/run.lock"


def _write_holder(uri: str, host: str, lease_until: float, run_id: str = "old-run") -> None:
    holder = {
        "run_id": run_id,
        "host": host,
        "pid": 1,
        "started": "2026-01-01 00:00:00 UTC",
        "lease_until": lease_until,
    }
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(
        uri.replace("s3a://", "s3://"), json.dumps(holder).encode()
    )


def test_second_run_is_refused_with_the_holders_name_until_released(s3_bucket):
    uri = _lock_uri(s3_bucket)
    kms_key = "arn:aws:kms:eu-west-1:123456789012:key/run-lock"
    encryption = {"s3_additional_kwargs": s3fs_kwargs("aws:kms", kms_key)}
    first = RunLock(uri, "run-a", lease_seconds=60, fs_args=encryption)
    first.acquire()
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms_key)
    with pytest.raises(ConcurrentRunError, match="writing these outputs: run run-a "):
        RunLock(uri, "run-b", lease_seconds=60).acquire()
    first.release()
    second = RunLock(uri, "run-b", lease_seconds=60)
    second.acquire()
    second.release()


def test_without_a_setting_the_lock_keeps_the_buckets_default_encryption(moto_server):
    """s3_encryption unset: no header, so a bucket's default SSE-KMS key stays in force (where
    forcing SSE-S3 would override it, or be refused by a bucket policy requiring aws:kms)."""
    bucket = create_bucket(default_kms_key=BUCKET_DEFAULT_KMS_KEY)
    uri = _lock_uri(bucket)
    lock = RunLock(uri, "run-a", lease_seconds=60, fs_args={"s3_additional_kwargs": {}})
    lock.acquire()
    key = uri.split("://", 1)[1].partition("/")[2]
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    lock.release()
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == (
        "aws:kms",
        BUCKET_DEFAULT_KMS_KEY,
    )


def test_lease_is_renewed_while_the_run_holds_the_lock(s3_bucket):
    uri = _lock_uri(s3_bucket)
    lock = RunLock(uri, "run-a", lease_seconds=1.5)
    lock.acquire()
    time.sleep(2.5)  # past the first lease: renewed every 0.5 s
    with pytest.raises(ConcurrentRunError, match="run run-a "):
        RunLock(uri, "run-b", lease_seconds=60).acquire()
    lock.release()


def test_lock_of_another_machine_is_kept_until_its_lease_ends(s3_bucket):
    uri = _lock_uri(s3_bucket)
    _write_holder(uri, "other-host", time.time() + 60)
    with pytest.raises(ConcurrentRunError, match="process 1 on other-host"):
        RunLock(uri, "run-b", lease_seconds=60).acquire()
    _write_holder(uri, "other-host", time.time() - 1)  # its lease has ended: the run was killed
    lock = RunLock(uri, "run-b", lease_seconds=60)
    lock.acquire()
    lock.release()


def test_stale_lock_is_taken_over_by_exactly_one_of_two_runs(s3_bucket):
    uri = _lock_uri(s3_bucket)
    _write_holder(uri, "other-host", time.time() - 1)
    locks = [RunLock(uri, f"run-{index}", lease_seconds=60) for index in range(2)]

    def acquire(lock: RunLock) -> bool:
        try:
            lock.acquire()
        except ConcurrentRunError:
            return False
        return True

    with ThreadPoolExecutor(2) as pool:
        taken = list(pool.map(acquire, locks))
    assert taken.count(True) == 1
    locks[taken.index(True)].release()
