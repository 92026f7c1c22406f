"""The outputs' lock, on a local disk and on a real S3 API (moto): exclusive, named, leased,
renewed through passing faults, taken over once, fenced once lost, and gone after its run."""

from __future__ import annotations

import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
import s3fs

from fruits_pipeline.hooks import RunLockHooks
from fruits_pipeline.run_lock import ConcurrentRunError, LockLostError, RunLock
from fruits_pipeline.s3_encryption import s3fs_kwargs
from tests.conftest import BUCKET_DEFAULT_KMS_KEY, create_bucket, kedro, run_params

pytestmark = pytest.mark.faults


@pytest.fixture(params=["local", "s3"])
def lock_uri(request, tmp_path) -> str:
    """Where a lock lies: a file in an empty folder, or an object under an empty prefix."""
    if request.param == "local":
        return str(tmp_path / "outputs" / "run.lock")
    request.getfixturevalue("moto_server")
    return f"s3a://{create_bucket()}/fruits-pipeline/run.lock"


def _filesystem(uri: str):
    if uri.startswith("s3a://"):
        return s3fs.S3FileSystem(skip_instance_cache=True), uri.replace("s3a://", "")
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), uri


def _write_holder(uri: str, host: str, lease_until: float, run_id: str = "old-run") -> None:
    holder = {
        "run_id": run_id,
        "host": host,
        "pid": 1,
        "started": "2026-01-01 00:00:00 UTC",
        "lease_until": lease_until,
    }
    filesystem, path = _filesystem(uri)
    filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    filesystem.pipe_file(path, json.dumps(holder).encode())


def _holder(uri: str) -> dict:
    filesystem, path = _filesystem(uri)
    return json.loads(filesystem.cat_file(path))


def _left_beside(uri: str) -> list[str]:
    """What is left in the lock's folder (or under its prefix)."""
    filesystem, path = _filesystem(uri)
    folder = path.rsplit("/", 1)[0]
    filesystem.invalidate_cache()
    return filesystem.ls(folder, detail=False) if filesystem.exists(folder) else []


def test_second_run_is_refused_with_the_holders_name_until_released(lock_uri):
    first = RunLock(lock_uri, "run-a", lease_seconds=60)
    first.acquire()
    with pytest.raises(ConcurrentRunError, match="writing these outputs: run run-a "):
        RunLock(lock_uri, "run-b", lease_seconds=60).acquire()
    first.release()
    assert _left_beside(lock_uri) == []
    second = RunLock(lock_uri, "run-b", lease_seconds=60)
    second.acquire()
    second.release()


def test_lease_is_renewed_while_the_run_holds_the_lock(lock_uri):
    lock = RunLock(lock_uri, "run-a", lease_seconds=1.5)
    lock.acquire()
    first_lease = _holder(lock_uri)["lease_until"]
    time.sleep(2.5)  # past the first lease: renewed every 0.5 s
    assert _holder(lock_uri)["lease_until"] > first_lease + 0.9
    with pytest.raises(ConcurrentRunError, match="run run-a "):
        RunLock(lock_uri, "run-b", lease_seconds=60).acquire()
    lock.check()
    lock.release()


def test_passing_renewal_faults_are_retried_and_the_lease_kept(lock_uri, monkeypatch):
    lock = RunLock(lock_uri, "run-a", lease_seconds=1.5)
    replace, faults = lock._object.replace, []

    def flaky_replace(content: bytes, tag: str):
        if len(faults) < 2:  # the first two renewals meet a reset connection
            faults.append(time.time())
            raise ConnectionResetError("connection reset by peer")
        return replace(content, tag)

    monkeypatch.setattr(lock._object, "replace", flaky_replace)
    lock.acquire()
    time.sleep(3.0)  # two leases: without the retries, the first fault would have ended it
    assert len(faults) == 2
    lock.check()  # still held: renewed after the faults
    assert _holder(lock_uri)["lease_until"] > time.time()
    lock.release()
    assert _left_beside(lock_uri) == []


def test_lock_taken_by_another_run_fences_this_one(lock_uri):
    lock = RunLock(lock_uri, "run-a", lease_seconds=1.5)
    lock.acquire()
    # Another run took it over (this one was paused past its lease, say).
    _write_holder(lock_uri, "other-host", time.time() + 60, run_id="run-b")
    time.sleep(1.0)  # the next renewal finds another version
    with pytest.raises(LockLostError, match="taken over by run run-b "):
        lock.check()
    lock.release()
    assert _holder(lock_uri)["run_id"] == "run-b", "neither renewed over nor removed"


def test_lease_that_runs_out_unrenewed_fences_the_run(lock_uri, monkeypatch):
    lock = RunLock(lock_uri, "run-a", lease_seconds=1.0)

    def unreachable(content: bytes, tag: str):
        raise TimeoutError("the store does not answer")

    monkeypatch.setattr(lock._object, "replace", unreachable)
    lock.acquire()
    lock.check()
    time.sleep(1.2)
    with pytest.raises(LockLostError, match="lease ran out"):
        lock.check()
    lock.release()


def test_lock_of_another_machine_is_kept_until_its_lease_ends(lock_uri):
    _write_holder(lock_uri, "other-host", time.time() + 60)
    with pytest.raises(ConcurrentRunError, match="process 1 on other-host"):
        RunLock(lock_uri, "run-b", lease_seconds=60).acquire()
    _write_holder(
        lock_uri, "other-host", time.time() - 1
    )  # its lease has ended: the run was killed
    lock = RunLock(lock_uri, "run-b", lease_seconds=60)
    lock.acquire()
    lock.release()
    assert _left_beside(lock_uri) == [], "no takeover file left behind"


def test_stale_lock_is_taken_over_by_exactly_one_of_two_runs(lock_uri):
    _write_holder(lock_uri, "other-host", time.time() - 1)
    locks = [RunLock(lock_uri, f"run-{index}", lease_seconds=60) for index in range(2)]

    def acquire(lock: RunLock) -> bool:
        try:
            lock.acquire()
        except ConcurrentRunError:
            return False
        return True

    with ThreadPoolExecutor(2) as pool:
        taken = list(pool.map(acquire, locks))
    assert taken.count(True) == 1
    winner = locks[taken.index(True)]
    assert _holder(lock_uri)["run_id"] == winner._holder.run_id
    winner.release()
    assert _left_beside(lock_uri) == []


def test_the_lock_on_s3_is_encrypted_as_the_environment_says(s3_bucket):
    uri = f"s3a://{s3_bucket}/fruits-pipeline/run.lock"
    kms_key = "arn:aws:kms:eu-west-1:123456789012:key/run-lock"
    encryption = {"s3_additional_kwargs": s3fs_kwargs("aws:kms", kms_key)}
    lock = RunLock(uri, "run-a", lease_seconds=60, fs_args=encryption)
    lock.acquire()
    key = uri.split("://", 1)[1].partition("/")[2]
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=key)
    lock.release()
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms_key)


def test_without_a_setting_the_lock_keeps_the_buckets_default_encryption(moto_server):
    """s3_encryption unset: no header, so a bucket's default SSE-KMS key stays in force (where
    forcing SSE-S3 would override it, or be refused by a bucket policy requiring aws:kms)."""
    bucket = create_bucket(default_kms_key=BUCKET_DEFAULT_KMS_KEY)
    uri = f"s3a://{bucket}/fruits-pipeline/run.lock"
    lock = RunLock(uri, "run-a", lease_seconds=60, fs_args={"s3_additional_kwargs": {}})
    lock.acquire()
    key = uri.split("://", 1)[1].partition("/")[2]
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    lock.release()
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == (
        "aws:kms",
        BUCKET_DEFAULT_KMS_KEY,
    )


class _ConflictingS3(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint in the middle of a simultaneous create: every conditional PUT is answered
    409 ConditionalRequestConflict, as S3 answers the loser of two creates in flight; the
    object is not there yet (GET: 404)."""

    protocol_version = "HTTP/1.1"  # answers the SDK's Expect: 100-continue

    def _answer(self, status: int, code: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(409, "ConditionalRequestConflict")

    def do_GET(self) -> None:
        self._answer(404, "NoSuchKey")

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_simultaneous_create_answered_409_gives_the_locks_own_message(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ConflictingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    fs_args = {
        "client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{server.server_port}",
            "region_name": "eu-west-1",
        },
        "skip_instance_cache": True,
    }
    try:
        with pytest.raises(ConcurrentRunError, match="Another run is writing these outputs"):
            RunLock("s3://bucket/prefix/run.lock", "run-a", 60, fs_args).acquire()
    finally:
        server.shutdown()


def test_a_lock_elsewhere_than_a_disk_or_s3_is_refused(tmp_path):
    with pytest.raises(Exception, match="local path or an s3:// URI"):
        RunLock("memory://outputs/run.lock", "run-a", 60)


def test_a_lock_file_being_written_is_never_read_half(tmp_path: Path):
    uri = str(tmp_path / "run.lock")
    locks = [RunLock(uri, f"run-{index}", lease_seconds=60) for index in range(8)]
    outcomes: list[str] = []

    def acquire(lock: RunLock) -> None:
        try:
            lock.acquire()
            outcomes.append("taken")
        except ConcurrentRunError as error:
            outcomes.append("refused" if "run run-" in str(error) else str(error))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(acquire, locks))
    assert sorted(outcomes) == ["refused"] * 7 + ["taken"], outcomes
    next(lock for lock in locks if lock._tag is not None).release()


# ---------------------------------------------------------------- in a run
def test_a_run_that_fails_to_start_releases_its_lock(
    spark, project_copy, tiny_image_set, weights_file
):
    """A failure after the lock is taken but before the pipeline starts (here the Spark hook's
    check that a partial run's input exists) releases the lock: the next run of the same
    process (a notebook's kernel, a second KedroSession) is not refused."""
    params = run_params(tiny_image_set, weights_file)
    output = kedro(
        project_copy, "run", "--pipelines", "featurization", "--params", params, exit_code=1
    )
    assert "ConcurrentRunError" not in output and "image_changes" in output, output[-2000:]
    assert not (project_copy / "data" / "run.lock").exists()
    kedro(project_copy, "run", "--pipelines", "ingestion", "--params", params)
    assert not (project_copy / "data" / "run.lock").exists()


def test_a_run_that_lost_its_lock_saves_nothing_more(tmp_path):
    hooks = RunLockHooks()
    hooks._settings = {"path": str(tmp_path / "run.lock"), "lease_seconds": 60}
    starting = hooks.before_pipeline_run({"run_id": "run-a"})
    next(starting)  # the lock is taken; the other start hooks would run now
    with pytest.raises(StopIteration):
        starting.send(None)
    hooks.before_dataset_saved()  # held: saves go on
    _write_holder(str(tmp_path / "run.lock"), "other-host", time.time() + 60, run_id="run-b")
    hooks._lock._renew()
    with pytest.raises(LockLostError, match="stopped before writing anything more"):
        hooks.before_dataset_saved()
    hooks.on_pipeline_error()
    assert _holder(str(tmp_path / "run.lock"))["run_id"] == "run-b"
