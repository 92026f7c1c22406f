"""The deployment, end to end on this machine: `kedro package`, `kedro emr upload-release` to S3
(moto), `kedro emr create-cluster` against moto's EMR API, the cluster's bootstrap action run
for real into a fresh virtualenv (with `aws` and `sudo` stand-ins), and the submitted step's
exact command run from that virtualenv against S3 through Spark's S3A connector."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import boto3
import pytest
import s3fs

from fruits_pipeline import __version__
from fruits_pipeline.emr.cluster import Release, cluster_request, task_slots
from tests.conftest import (
    create_bucket,
    kedro,
    kedro_process,
    make_project_copy,
    project_config,
)
from tests.s3_outputs import assert_complete_run, assert_encrypted, put_encrypted

PREFIX = "fruits-pipeline"
# Stand-ins for the two commands of an EMR node the bootstrap action uses and this machine
# lacks: the AWS CLI's `aws s3 cp` (done with s3fs, against moto) and `sudo`.
AWS_CLI = f"""#!{sys.executable}
import sys
import s3fs
source, target = [arg for arg in sys.argv[3:] if not arg.startswith("--")]
assert sys.argv[1:3] == ["s3", "cp"], sys.argv
if target.endswith("/"):
    target += source.rsplit("/", 1)[-1]
s3fs.S3FileSystem().get(source, target)
"""
SUDO = '#!/bin/sh\nexec "$@"\n'


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, moto_server):
    """A packaged, uploaded release, a cluster requested from moto's EMR, and the cluster's
    bootstrap action run on this machine into ``install_dir``."""
    bucket = create_bucket()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRUITS_S3_BUCKET", bucket)
        patch.setenv("FRUITS_S3_PREFIX", PREFIX)
        yield _deploy(tmp_path_factory.mktemp("deployment"), bucket)


def _deploy(root: Path, bucket: str) -> dict:
    project = make_project_copy(root / "project", with_sources=True)
    built = kedro_process(project, "package", timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    uploaded = kedro(project, "emr", "upload-release")
    assert f"Release {__version__} uploaded" in uploaded

    install_dir = root / "opt" / "fruits-pipeline"
    created = kedro(
        project,
        "emr",
        "create-cluster",
        # This machine's pip has this machine's pyspark, the cluster's Spark is 3.5.5.
        "--set",
        f"spark_version={version('pyspark')}",
        "--set",
        f"install_dir={install_dir}",
    )
    cluster_id = re.search(r"Cluster (j-\w+) requested", created).group(1)
    emr = boto3.client("emr")
    bootstrap = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"][0]

    shims = root / "bin"
    shims.mkdir()
    for name, text in (("aws", AWS_CLI), ("sudo", SUDO)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    script = root / "bootstrap.sh"
    s3fs.S3FileSystem(skip_instance_cache=True).get(bootstrap["ScriptPath"], str(script))
    ran = subprocess.run(
        ["bash", str(script), *bootstrap["Args"]],
        env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    return {
        "project": project,
        "bucket": bucket,
        "cluster_id": cluster_id,
        "install_dir": install_dir,
    }


def test_cluster_request_carries_the_definition(deployment):
    emr = boto3.client("emr")
    cluster_id, bucket = deployment["cluster_id"], deployment["bucket"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.10.0"
    assert {app["Name"] for app in cluster["Applications"]} == {"Spark"}
    assert cluster["LogUri"] == f"s3://{bucket}/{PREFIX}/emr-logs/"
    assert cluster["ServiceRole"] == "EMR_DefaultRole"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"
    assert {tag["Key"]: tag["Value"] for tag in cluster["Tags"]} == {
        "project": "fruits-pipeline",
        "for-use-with-amazon-emr-managed-policies": "true",
    }
    groups = {
        group["InstanceGroupType"]: (group["InstanceType"], group["RequestedInstanceCount"])
        for group in emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    }
    assert groups == {"MASTER": ("m5.xlarge", 1), "CORE": ("m5.xlarge", 2)}

    python = f"{deployment['install_dir']}/bin/python"
    delta, spark_env = cluster["Configurations"]
    # The image table's Delta Lake comes with the release.
    assert delta == {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}}
    assert spark_env["Classification"] == "spark-env"
    assert spark_env["Configurations"][0]["Properties"]["PYSPARK_PYTHON"] == python

    release = f"s3://{bucket}/{PREFIX}/release"
    (bootstrap,) = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert bootstrap["ScriptPath"] == f"{release}/bootstrap.sh"
    assert bootstrap["Args"] == [
        f"{release}/fruits_pipeline-{__version__}-py3-none-any.whl",
        version("pyspark"),
        str(deployment["install_dir"]),
        "python3.11",
        f"{release}/conf-fruits_pipeline.tar.gz",
        f"{release}/pyproject.toml",
    ]
    # The security configuration the cluster names exists, with SSE-S3 at rest.
    assert cluster["SecurityConfiguration"] == "fruits-pipeline-sse-s3"
    security = json.loads(
        emr.describe_security_configuration(Name="fruits-pipeline-sse-s3")["SecurityConfiguration"]
    )
    s3_encryption = security["EncryptionConfiguration"]["AtRestEncryptionConfiguration"]
    assert s3_encryption["S3EncryptionConfiguration"]["EncryptionMode"] == "SSE-S3"


def test_cluster_request_terminates_when_idle_and_keeps_no_credentials(monkeypatch):
    # moto accepts but does not return the auto-termination policy: check the request itself.
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    request = cluster_request(
        project_config("emr")["cluster"]["cluster"], Release.at("s3://fruits-bucket/r", "0.1.0")
    )
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2KeyName" not in request["Instances"]  # optional settings left out when unset
    text = json.dumps(request).lower()
    assert "secret" not in text and "aws_access_key" not in text


def test_overrides_change_one_value_of_the_definition(deployment):
    created = kedro(
        deployment["project"], "emr", "create-cluster", "--set", "instance_groups.core.count=4"
    )
    cluster_id = re.search(r"Cluster (j-\w+) requested", created).group(1)
    groups = boto3.client("emr").list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    assert sorted(group["RequestedInstanceCount"] for group in groups) == [1, 4]
    kedro(deployment["project"], "emr", "terminate", "--cluster-id", cluster_id)


def test_bootstrap_action_installed_the_release_and_the_project_folder(deployment):
    install_dir = deployment["install_dir"]
    shown = subprocess.run(
        [str(install_dir / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {
        re.sub(r"[-_.]+", "-", item["name"]).lower(): item["version"]
        for item in json.loads(shown.stdout)
    }
    assert installed["fruits-pipeline"] == __version__
    assert installed["pyspark"] == version("pyspark")
    assert "jupyterlab" in installed
    project = install_dir / "project"
    assert (project / "conf" / "emr" / "catalog.yml").is_file()
    assert (project / "pyproject.toml").read_text() == (
        deployment["project"] / "pyproject.toml"
    ).read_text()
    kernel = install_dir / "share" / "jupyter" / "kernels" / "fruits-pipeline" / "kernel.json"
    assert json.loads(kernel.read_text())["argv"][0] == str(install_dir / "bin" / "python")


def own_class_archive(deployment) -> dict[str, str]:
    """The installed project's Spark is another set of jars, so its JVM writes its own class
    archive: into the deployment's folder, not into the user's cache."""
    return {"XDG_CACHE_HOME": str(deployment["install_dir"].parent / "cache")}


def test_packaged_project_runs_locally_from_the_conf_archive(
    deployment, tiny_image_set, weights_file, tmp_path
):
    python = deployment["install_dir"] / "bin" / "python"
    workdir = tmp_path / "run"
    workdir.mkdir()
    ran = subprocess.run(
        [
            str(python),
            "-m",
            "fruits_pipeline",
            "--conf-source",
            str(deployment["project"] / "dist" / "conf-fruits_pipeline.tar.gz"),
            "--params",
            f"raw_images_path={tiny_image_set},featurization.weights={weights_file}",
        ],
        cwd=workdir,
        env={**os.environ, "PYSPARK_PYTHON": str(python), **own_class_archive(deployment)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    metrics = json.loads((workdir / "data" / "08_reporting" / "metrics.json").read_text())
    assert metrics["images_in"] == metrics["images_featurized"] == 30
    assert metrics["library_versions"]["fruits_pipeline"] == __version__
    assert str(Path(sys.executable).parent) not in ran.stdout  # ran from the fresh environment


def test_submitted_step_runs_the_pipelines_on_s3(deployment, tiny_image_set, weights_file):
    project, bucket, cluster_id = (
        deployment["project"],
        deployment["bucket"],
        deployment["cluster_id"],
    )
    uploaded = kedro(project, "emr", "upload-images", str(tiny_image_set))
    assert "30 files uploaded" in uploaded
    assert "0 files uploaded" in kedro(project, "emr", "upload-images", str(tiny_image_set))
    # Weights from S3, as a cluster without internet access would take them.
    weights_uri = f"s3://{bucket}/{PREFIX}/weights/{weights_file.name}"
    put_encrypted(weights_file, weights_uri)

    submitted = kedro(
        project,
        "emr",
        "submit",
        "--cluster-id",
        cluster_id,
        # The same override as the cluster's: the step runs the bootstrap's virtualenv.
        "--set",
        f"install_dir={deployment['install_dir']}",
        "--",
        "--params",
        f"featurization.weights={weights_uri}",
    )
    step_id = re.search(r"Step (s-\w+) submitted", submitted).group(1)
    step = boto3.client("emr").describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    args = step["Config"]["Args"]
    python = str(deployment["install_dir"] / "bin" / "python")
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert args == [
        "env",
        "SPARK_HOME=/usr/lib/spark",
        "KEDRO_DISABLE_TELEMETRY=true",
        f"FRUITS_S3_BUCKET={bucket}",
        f"FRUITS_S3_PREFIX={PREFIX}",
        # The definition's 2 core nodes, m5.xlarge: 4 vCPUs each (EC2's instance types).
        "FRUITS_TASK_SLOTS=8",
        python,
        "-m",
        "fruits_pipeline",
        "--env",
        "emr",
        "--conf-source",
        f"s3://{bucket}/{PREFIX}/release/conf-fruits_pipeline.tar.gz",
        "--params",
        f"featurization.weights={weights_uri}",
    ]

    # The step's command as EMR's command-runner would run it; this machine's Spark is the
    # bootstrap virtualenv's pyspark instead of the cluster's /usr/lib/spark.
    spark_home = subprocess.run(
        [python, "-c", "import pyspark, os; print(os.path.dirname(pyspark.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [f"SPARK_HOME={spark_home}" if arg.startswith("SPARK_HOME=") else arg for arg in args]
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("FRUITS_S3_")
    }
    workdir = deployment["install_dir"].parent / "step"
    workdir.mkdir()
    ran = subprocess.run(
        command,
        cwd=workdir,
        env={**environment, "PYSPARK_PYTHON": python, **own_class_archive(deployment)},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    metrics = assert_complete_run(bucket, tiny_image_set)
    assert metrics["weights_source"] == weights_uri
    assert not any(workdir.iterdir()), "a step writes to S3 only"


def test_wait_shows_state_and_logs_then_terminate(deployment):
    project, cluster_id, bucket = (
        deployment["project"],
        deployment["cluster_id"],
        deployment["bucket"],
    )
    submitted = kedro(project, "emr", "submit", "--cluster-id", cluster_id)
    step_id = re.search(r"Step (s-\w+) submitted", submitted).group(1)
    waited = kedro(
        project,
        "emr",
        "wait",
        "--cluster-id",
        cluster_id,
        "--step-id",
        step_id,
        "--timeout",
        "1",
        "--poll",
        "0.2",
        exit_code=1,
    )
    # moto never ends a step (the first RUNNING, the next PENDING): the command shows the state
    # and the log location, and fails when its time is up.
    state = boto3.client("emr").describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    state = state["Status"]["State"]
    assert state in ("PENDING", "RUNNING")
    assert f"Logs: s3://{bucket}/{PREFIX}/emr-logs/{cluster_id}/steps/{step_id}/" in waited
    assert f"Step {step_id}: {state}" in waited
    assert f"Step {step_id} is {state} after 1 s" in waited

    terminated = kedro(project, "emr", "terminate", "--cluster-id", cluster_id)
    assert f"Cluster {cluster_id}: TERMINATED" in terminated
    assert_encrypted(bucket)


def test_submit_without_an_uploaded_release_says_what_to_run(tmp_path, s3_bucket):
    project = make_project_copy(tmp_path / "project")
    failed = kedro(project, "emr", "submit", "--cluster-id", "j-NOTUSED", exit_code=1)
    message = " ".join(failed.split())
    assert f"s3://{s3_bucket}/{PREFIX}/release/fruits_pipeline-{__version__}" in message
    assert "run `kedro package` then `kedro emr upload-release`" in message


def test_task_slots_count_the_vcpus_of_core_and_task_nodes():
    groups = [
        {"InstanceGroupType": "MASTER", "InstanceType": "m5.xlarge", "RunningInstanceCount": 1},
        {"InstanceGroupType": "CORE", "InstanceType": "m5.xlarge", "RunningInstanceCount": 3},
        # Still starting: counted as requested, since the stage will run on them.
        {"InstanceGroupType": "TASK", "InstanceType": "c5.2xlarge", "RequestedInstanceCount": 2},
    ]
    assert task_slots(groups, {"m5.xlarge": 4, "c5.2xlarge": 8}) == 3 * 4 + 2 * 8
