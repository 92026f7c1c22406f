"""Faults injected into real runs: each run absorbs its fault, accounts for every image exactly
once, and gives the outputs of a clean run. Each test proves its fault happened where it meant it
to: the run's own count of failed task attempts (Spark's status tracker) above zero, the killed
process's command line, the lock's holder, the proxy's counters.

`pytest -m faults` selects these tests.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import boto3
import numpy as np
import pytest
import s3fs
import yaml

from tests import fault_injection
from tests.conftest import (
    PROJECT_ROOT,
    coordinates,
    create_bucket,
    featurization_info,
    image_table,
    make_project_copy,
    run_params,
)
from tests.s3_outputs import coordinates_frame
from tests.tcp_proxy import TroubledProxy

pytestmark = pytest.mark.faults


def start_run(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`kedro run` in its own process group (so that a test can kill all of it), with ``env``
    added to this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def record_figures(**figures) -> None:
    """With FRUITS_FAULT_FIGURES set, appends the current test's figures to that file (the
    figures of docs/reliability.md)."""
    if path := os.environ.get("FRUITS_FAULT_FIGURES"):
        test = os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]
        with open(path, "a") as file:
            print(test, json.dumps(figures), sep="\t", file=file)


def finish(run: subprocess.Popen, timeout: float = 600) -> str:
    """Waits for a run that must succeed, and records how long its pipeline took."""
    output, _ = run.communicate(timeout=timeout)
    assert run.returncode == 0, output[-4000:]
    seconds = re.search(r"completed successfully in ([0-9.]+) sec", output)
    retried = re.search(r"(\d+) task attempts failed and were retried", output)
    record_figures(seconds=seconds and seconds[1], attempts_failed=retried and retried[1])
    return output


def faulty_project(
    target: Path, mode: str, env: str = "local", from_partition: int = 0
) -> tuple[Path, Path]:
    """A project copy whose runs inject ``mode`` (``fault_injection``), and its fault folder."""
    project = make_project_copy(target / "project")
    fault_dir = target / "faults"
    fault_dir.mkdir()
    spark_file = project / "conf" / env / "spark.yml"
    settings = yaml.safe_load(spark_file.read_text()) if spark_file.exists() else {}
    settings.update(fault_injection.spark_settings(mode, fault_dir, PROJECT_ROOT, from_partition))
    spark_file.write_text(yaml.safe_dump(settings, sort_keys=False))
    return project, fault_dir


def features_by_path(table) -> dict[str, np.ndarray | None]:
    return {
        row["path"]: None if row["features"] is None else np.asarray(row["features"])
        for row in table.select("path", "features").collect()
    }


def assert_same_features(spark, project: Path, clean: Path) -> int:
    """Every image of the clean run's table exactly once, its features within 1e-6; returns
    how many images there are."""
    rows = image_table(spark, project).select("path").collect()
    assert len(rows) == len({row["path"] for row in rows}), "an image has two rows"
    features, expected = (
        features_by_path(image_table(spark, folder)) for folder in (project, clean)
    )
    assert features.keys() == expected.keys()
    for path, vector in expected.items():
        np.testing.assert_allclose(features[path], vector, atol=1e-6, err_msg=path)
    return len(expected)


def assert_same_outputs(spark, project: Path, clean: Path) -> None:
    """Every image exactly once, features within 1e-6 and the same k and PCA features as the
    clean run."""
    images = assert_same_features(spark, project, clean)
    metrics, clean_metrics = (
        json.loads((folder / "data/08_reporting/metrics.json").read_text())
        for folder in (project, clean)
    )
    assert metrics["k"] == clean_metrics["k"]
    assert metrics["images_in"] == metrics["images_featurized"] == images
    projected, clean_projected = (
        {
            row["path"]: np.asarray(row["pca_features"])
            for row in coordinates(spark, folder).collect()
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


def test_driver_killed_in_the_model_stage_then_the_next_run_completes(
    spark, finished_run, small_image_set, weights_file, tmp_path
):
    project, fault_dir = faulty_project(tmp_path, "pause-at-model-stage")
    args = ("--pipelines", "ingestion,featurization", "--params")
    run = start_run(project, *args, run_params(small_image_set, weights_file))
    fault_injection.wait_for_model_stage(fault_dir, run)
    os.killpg(run.pid, signal.SIGKILL)  # the kedro process, its JVM and Python workers
    run.wait()
    lock = project / "data" / "run.lock"
    assert json.loads(lock.read_text())["pid"] == run.pid, "the killed run held the lock"
    assert not (project / "data/04_feature/featurization_info.json").exists()

    # The next run finds the killed run's lock stale (same machine, process gone) and completes.
    rerun = start_run(project, *args, run_params(small_image_set, weights_file))
    output = finish(rerun)
    assert "which ended without releasing it" in output
    assert not lock.exists()
    images = assert_same_features(spark, project, finished_run)
    assert featurization_info(project)["images_sent_to_model"] == images


def test_two_runs_on_the_same_outputs_never_interleave(tiny_image_set, weights_file, tmp_path):
    project, fault_dir = faulty_project(tmp_path, "pause-at-model-stage")
    params = run_params(tiny_image_set, weights_file)
    first = start_run(project, "--pipelines", "ingestion,featurization", "--params", params)
    fault_injection.wait_for_model_stage(fault_dir, first)
    holder = json.loads((project / "data" / "run.lock").read_text())
    assert holder["pid"] == first.pid

    second = start_run(project, "--pipelines", "ingestion", "--params", params)
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 1, output
    message = " ".join(output.split())
    assert f"Another run is writing these outputs: run {holder['run_id']} " in message
    assert f"(process {first.pid} on " in message
    assert "SparkSession ready" not in message, "refused before Spark starts"

    fault_injection.resume(fault_dir)
    finish(first)
    assert featurization_info(project)["images_featurized"] == len(
        list(tiny_image_set.rglob("*.jpg"))
    )
    assert not (project / "data" / "run.lock").exists(), "released at the end of the run"


# ---------------------------------------------------------------- on a standalone cluster
RAW = "fruits-pipeline/01_raw/fruits-360/"


def s3_run(
    target: Path,
    images: Path,
    weights: Path,
    master: str | None = None,
    at_model_stage: Callable[[dict, Path], None] | None = None,
    endpoint: str | None = None,
    from_partition: int = 0,
) -> dict:
    """A run of the emr environment (images and outputs on moto's S3, or on ``endpoint`` in
    front of it) on ``master`` (local[2,4] by default); ``at_model_stage`` injects its fault
    once the run has reached its model stage (a task of ``from_partition`` or later), given the
    pids and fault folder of ``fault_injection``. Returns the run's outputs by image and its
    metrics."""
    bucket = create_bucket()
    s3fs.S3FileSystem(skip_instance_cache=True).put(f"{images}/", f"{bucket}/{RAW}", recursive=True)
    params = f"featurization.weights={weights}" + (f",spark_master={master}" if master else "")
    # The outputs compared; not the app's embedder (a TensorFlow export) nor the plots.
    args = ("--env", "emr", "--to-outputs", "pca_features,pipeline_metrics", "--params", params)
    env = {"FRUITS_S3_BUCKET": bucket, **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}
    if at_model_stage:
        project, fault_dir = faulty_project(
            target, "pause-at-model-stage", env="emr", from_partition=from_partition
        )
        run = start_run(project, *args, env=env)
        at_model_stage(fault_injection.wait_for_model_stage(fault_dir, run), fault_dir)
    else:
        project = make_project_copy(target / "project")
        run = start_run(project, *args, env=env)
    output = finish(run)
    return {"output": output, "bucket": bucket, **s3_outputs(bucket)}


def kill(role: str) -> Callable[[dict, Path], None]:
    def kill_process(pids: dict, fault_dir: Path) -> None:
        assert_is_process(pids[role], role)
        os.kill(pids[role], signal.SIGKILL)

    return kill_process


def assert_is_process(pid: int, role: str) -> None:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    expected = {"worker": "tests.fault_injection", "jvm": "CoarseGrainedExecutorBackend"}[role]
    assert expected in command, f"process {pid} is not the {role} meant: {command}"


def s3_outputs(bucket: str) -> dict:
    """A run's PCA features by image (class/file name), its metrics and featurization info."""
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{bucket}/fruits-pipeline"
    table = coordinates_frame(f"s3://{root}/07_model_output/pca_features")
    prefix = f"s3a://{bucket}/{RAW}"
    return {
        "pca_features": {
            path.removeprefix(prefix): np.asarray(vector)
            for path, vector in zip(table["path"], table["pca_features"], strict=True)
        },
        "metrics": json.loads(filesystem.cat_file(f"{root}/08_reporting/metrics.json")),
        "info": json.loads(filesystem.cat_file(f"{root}/04_feature/featurization_info.json")),
    }


def assert_same_s3_outputs(run: dict, reference: dict) -> None:
    """Same images, each once, the same k and PCA features within 1e-6."""
    assert run["metrics"]["k"] == reference["metrics"]["k"]
    assert run["metrics"]["images_in"] == run["metrics"]["images_featurized"]
    assert run["metrics"]["images_in"] == len(reference["pca_features"])
    assert run["pca_features"].keys() == reference["pca_features"].keys()
    for image, vector in reference["pca_features"].items():
        np.testing.assert_allclose(run["pca_features"][image], vector, atol=1e-6, err_msg=image)


@pytest.fixture(scope="module")
def local_s3_run(tiny_image_set, weights_file, moto_server, tmp_path_factory) -> dict:
    """The clean reference: the emr environment on local[2,4]."""
    return s3_run(tmp_path_factory.mktemp("local-s3-run"), tiny_image_set, weights_file)


@pytest.mark.cluster
def test_cluster_run_gives_the_outputs_of_a_local_run(
    spark_cluster, local_s3_run, tiny_image_set, weights_file, tmp_path
):
    apps = len(spark_cluster.state()["completedapps"])
    run = s3_run(tmp_path, tiny_image_set, weights_file, master=spark_cluster.master_url)
    assert f"SparkSession ready: master {spark_cluster.master_url}" in run["output"]
    assert len(spark_cluster.state()["completedapps"]) == apps + 1
    assert run["info"]["task_attempts_failed"] == 0
    assert_same_s3_outputs(run, local_s3_run)


@pytest.mark.cluster
@pytest.mark.parametrize("killed", ["worker", "jvm"], ids=["python-worker", "executor-jvm"])
def test_cluster_run_survives_a_killed_process(
    spark_cluster, local_s3_run, tiny_image_set, weights_file, tmp_path, killed
):
    """The executor JVM is killed in the second wave of tasks (the cluster's two 1-core
    workers give 2 task slots), so it has finished a task: its outputs are lost and Spark runs
    that task again, which must not count its images twice."""
    run = s3_run(
        tmp_path,
        tiny_image_set,
        weights_file,
        master=spark_cluster.master_url,
        at_model_stage=kill(killed),
        from_partition=2 if killed == "jvm" else 0,
    )
    assert run["info"]["task_attempts_failed"] >= 1, run["output"][-3000:]
    assert run["info"]["images_quarantined"] == 0
    images = len(list(tiny_image_set.rglob("*.jpg")))
    assert run["info"]["images_sent_to_model"] == run["info"]["images_featurized"] == images
    assert_same_s3_outputs(run, local_s3_run)


# ---------------------------------------------------------------- S3 trouble
def assert_nothing_partial_committed(bucket: str) -> None:
    """No multipart upload left open, and every committed version of a Spark output complete."""
    s3 = boto3.client("s3")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    pointers = filesystem.glob(f"{bucket}/fruits-pipeline/**/_COMMITTED")
    assert pointers
    for pointer in pointers:
        version = f"{pointer.rsplit('/', 1)[0]}/{filesystem.cat_file(pointer).decode().strip()}"
        # A Spark write (a table, or each part of a Spark ML model) ends with its _SUCCESS.
        folders = {part.rsplit("/", 1)[0] for part in filesystem.glob(f"{version}/**/part-*")}
        assert folders, f"{version} holds no data"
        for folder in folders:
            assert filesystem.exists(f"{folder}/_SUCCESS"), f"{folder} is incomplete"


def test_s3_connection_resets_and_latency_are_absorbed(
    local_s3_run, moto_server, tiny_image_set, weights_file, tmp_path
):
    moto = urlparse(moto_server)
    proxy = TroubledProxy((moto.hostname, moto.port))

    def trouble(pids: dict, fault_dir: Path) -> None:
        # From the model stage on: the images' reads, the image table's MERGE, the PCA's writes.
        proxy.trouble(seconds=40, reset_every=5, latency=0.05)
        fault_injection.resume(fault_dir)

    try:
        run = s3_run(
            tmp_path, tiny_image_set, weights_file, at_model_stage=trouble, endpoint=proxy.url
        )
    finally:
        proxy.close()
    counters = ("requests", "requests_in_trouble", "requests_lost", "responses_lost")
    record_figures(**{name: getattr(proxy, name) for name in counters})
    assert proxy.requests_lost >= 3 and proxy.responses_lost >= 3, vars(proxy)
    assert_same_s3_outputs(run, local_s3_run)
    assert_nothing_partial_committed(run["bucket"])


def test_decoder_failures_finds_exactly_the_files_that_crash_or_hang_it(sample_images, monkeypatch):
    from fruits_pipeline import mobilenet_v2
    from fruits_pipeline.pipelines.featurization.nodes import decoder_failures

    decode_image = mobilenet_v2.decode_image
    hang, swell = b"FRUITS-FAULT-HANG", b"FRUITS-FAULT-OUT-OF-MEMORY"

    def failing_decoder(content: bytes, max_pixels: int):
        # In the forked child only: no traceback dump of pytest's in the test's output.
        if fault_injection.CRASH_MARKER in content:
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        if hang in content:
            time.sleep(600)
        if swell in content:  # as the kernel's out-of-memory killer ends a process
            os.kill(os.getpid(), signal.SIGKILL)
        return decode_image(content, max_pixels)

    monkeypatch.setattr(mobilenet_v2, "decode_image", failing_decoder)
    contents = {
        row: path.read_bytes() for row, path in enumerate(sorted(sample_images.rglob("*.jpg"))[:64])
    }
    contents[5] += fault_injection.CRASH_MARKER
    contents[20] += hang
    contents[50] += fault_injection.CRASH_MARKER
    contents[51] = b"not an image"  # an ordinary decoding error: the parent quarantines it
    contents[63] += swell
    started = time.monotonic()
    failures = decoder_failures(contents, 50_000_000, timeout=1.0)
    assert time.monotonic() - started < 10, "the hanging decode was stopped after its timeout"
    assert sorted(failures) == [5, 20, 50, 63]
    assert failures[5][0] == "DecoderCrash" and "crashed on this file (SIGSEGV)" in failures[5][1]
    assert failures[20][0] == "DecoderTimeout" and "within 1 s" in failures[20][1]
    assert failures[63][0] == "DecoderOutOfMemory" and "out-of-memory killer" in failures[63][1]
