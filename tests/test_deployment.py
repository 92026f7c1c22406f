"""The deployment, end to end on this machine: `kedro package`, `kedro emr upload-release` to S3
(moto) with its wheelhouse and exported model, `kedro emr create-cluster` against moto's EMR
API, the cluster's bootstrap action run for real into a fresh virtualenv (with `aws` and `sudo`
stand-ins, every package index and proxy pointing at a closed port), and the submitted step's
exact command run from that virtualenv, on a stand-in of the cluster's Spark home, against S3
through Spark's S3A connector. The deployment asks for SSE-KMS with its own key."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import numpy as np
import py4j
import pyspark
import pytest
import s3fs

from fruits_pipeline import __version__
from fruits_pipeline.emr.cluster import Release, bootstrap_arguments, cluster_request, task_slots
from fruits_pipeline.s3_encryption import emr_security_configuration
from tests.conftest import (
    BUCKET_DEFAULT_KMS_KEY,
    PROJECT_ROOT,
    create_bucket,
    kedro,
    kedro_process,
    make_project_copy,
    project_config,
)
from tests.moto_tls import https_moto_server
from tests.s3_outputs import assert_complete_run, assert_encrypted

pytestmark = pytest.mark.deployment

PREFIX = "fruits-pipeline"
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/fruits-pipeline"
# Stand-ins for the two commands of an EMR node the bootstrap action uses and this machine
# lacks: the AWS CLI's `aws s3 cp [--recursive]` (done with s3fs, against moto) and `sudo`.
AWS_CLI = f"""#!{sys.executable}
import sys
import s3fs
source, target = [arg for arg in sys.argv[3:] if not arg.startswith("--")]
assert sys.argv[1:3] == ["s3", "cp"], sys.argv
filesystem = s3fs.S3FileSystem()
if "--recursive" in sys.argv:
    if not filesystem.ls(source):
        sys.exit(f"fatal error: nothing under {{source}}")
    filesystem.get(source.rstrip("/") + "/", target, recursive=True)
else:
    if target.endswith("/"):
        target += source.rsplit("/", 1)[-1]
    filesystem.get(source, target)
"""
SUDO = '#!/bin/sh\nexec "$@"\n'


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_environment(shims: Path) -> dict[str, str]:
    """The bootstrap's environment: the stand-ins first, and every way pip could reach a
    package index (index URL, extra index, proxies, this machine's pip configuration) pointing
    at a closed port. moto stays reachable for the `aws` stand-in: it is 127.0.0.1, the dead
    index and proxies are named localhost."""
    dead = f"http://localhost:{_closed_port()}"
    return {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"{dead}/simple",
        "PIP_EXTRA_INDEX_URL": f"{dead}/extra",
        "PIP_FIND_LINKS": "",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def stand_in_spark_home(root: Path) -> Path:
    """A Spark home laid out as EMR's /usr/lib/spark (bin, jars, python/pyspark and
    python/lib/py4j-*-src.zip), made of this machine's pyspark."""
    package = Path(pyspark.__file__).parent
    home = root / "spark-home"
    (home / "python" / "lib").mkdir(parents=True)
    for name in ("bin", "jars"):
        (home / name).symlink_to(package / name)
    (home / "python" / "pyspark").symlink_to(package)
    py4j_package = Path(py4j.__file__).parent
    archive = home / "python" / "lib" / f"py4j-{py4j.__version__}-src.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(py4j_package.rglob("*.py")):
            zipped.write(path, path.relative_to(py4j_package.parent).as_posix())
    return home


def run_bootstrap(root: Path, script: Path, args: list[str]) -> subprocess.CompletedProcess:
    shims = root / "bin"
    if not shims.exists():
        shims.mkdir()
        for name, text in (("aws", AWS_CLI), ("sudo", SUDO)):
            (shims / name).write_text(text)
            (shims / name).chmod(0o755)
    return subprocess.run(
        ["bash", str(script), *args],
        env=offline_environment(shims),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, moto_server, weights_file):
    """A packaged, uploaded release, a cluster requested from moto's EMR, and the cluster's
    bootstrap action run on this machine into ``install_dir``, everything asking for SSE-KMS."""
    root = tmp_path_factory.mktemp("deployment")
    with https_moto_server(root) as https, pytest.MonkeyPatch.context() as patch:
        # SSE-KMS goes over HTTPS only (tests/moto_tls.py).
        for name, value in https.items():
            patch.setenv(name, value)
        # A bucket default of another key: every object must carry the deployment's own.
        bucket = create_bucket(default_kms_key=BUCKET_DEFAULT_KMS_KEY)
        patch.setenv("FRUITS_S3_BUCKET", bucket)
        patch.setenv("FRUITS_S3_PREFIX", PREFIX)
        patch.setenv("FRUITS_S3_SSE", "aws:kms")
        patch.setenv("FRUITS_S3_SSE_KMS_KEY_ID", KMS_KEY)
        yield _deploy(root, bucket, weights_file)


def _deploy(root: Path, bucket: str, weights_file: Path) -> dict:
    project = make_project_copy(root / "project", with_sources=True)
    built = kedro_process(project, "package", timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    # The cluster's model, exported from the tests' weights (Keras' own need internet).
    uploaded = kedro(project, "emr", "upload-release", "--weights", str(weights_file))
    assert f"Release {__version__} uploaded" in uploaded
    wheelhouse = re.search(r"Wheelhouse x86_64: (\d+) wheels, (\d+) MiB", uploaded)
    assert wheelhouse, uploaded

    install_dir = root / "opt" / "fruits-pipeline"
    created = kedro(project, "emr", "create-cluster", "--set", f"install_dir={install_dir}")
    cluster_id = re.search(r"Cluster (j-\w+) requested", created).group(1)
    emr = boto3.client("emr")
    bootstrap = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"][0]

    script = root / "bootstrap.sh"
    s3fs.S3FileSystem(skip_instance_cache=True).get(bootstrap["ScriptPath"], str(script))
    ran = run_bootstrap(root, script, bootstrap["Args"])
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    (root / "bootstrap.log").write_text(ran.stdout)  # its time, for docs/aws.md
    assert re.search(
        rf"fruits-pipeline {__version__} installed in {install_dir} in \d+ s", ran.stdout
    )
    return {
        "project": project,
        "bucket": bucket,
        "cluster_id": cluster_id,
        "install_dir": install_dir,
        "root": root,
        "script": script,
        "bootstrap_args": bootstrap["Args"],
        "wheelhouse": (int(wheelhouse.group(1)), int(wheelhouse.group(2))),
        "spark_home": stand_in_spark_home(root),
    }


def test_cluster_request_carries_the_definition(deployment):
    emr = boto3.client("emr")
    cluster_id, bucket = deployment["cluster_id"], deployment["bucket"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    emr_release = project_config("emr")["globals"]["emr_release"]
    assert cluster["ReleaseLabel"] == emr_release["label"]
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
        f"{release}/wheelhouse",
        f"{release}/fruits_pipeline-{__version__}-py3-none-any.whl",
        str(deployment["install_dir"]),
        f"python{emr_release['python']}",
        f"{release}/conf-fruits_pipeline.tar.gz",
        f"{release}/pyproject.toml",
        "",  # no extras: the lean set only
    ]
    # The security configuration the cluster names exists, with the deployment's SSE-KMS key.
    name, body = emr_security_configuration("fruits-pipeline", "aws:kms", KMS_KEY)
    assert cluster["SecurityConfiguration"] == name
    security = json.loads(emr.describe_security_configuration(Name=name)["SecurityConfiguration"])
    assert security == body
    s3_encryption = security["EncryptionConfiguration"]["AtRestEncryptionConfiguration"]
    assert s3_encryption["S3EncryptionConfiguration"] == {
        "EncryptionMode": "SSE-KMS",
        "AwsKmsKey": KMS_KEY,
    }


def test_cluster_request_terminates_when_idle_and_keeps_no_credentials(monkeypatch):
    # moto accepts but does not return the auto-termination policy: check the request itself.
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    cluster = project_config("emr")["cluster"]["cluster"]
    release = Release.at("s3://fruits-bucket/r", "0.1.0")
    request = cluster_request(cluster, release, None)
    # Without s3_encryption, no security configuration: the bucket's default applies.
    assert "SecurityConfiguration" not in request
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"] == (
        bootstrap_arguments(cluster, release)
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


def _installed(python: Path) -> dict[str, str]:
    shown = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        re.sub(r"[-_.]+", "-", item["name"]).lower(): item["version"]
        for item in json.loads(shown.stdout)
    }


def test_bootstrap_installed_the_lean_release_offline(deployment):
    install_dir = deployment["install_dir"]
    installed = _installed(install_dir / "bin" / "python")
    assert installed["fruits-pipeline"] == __version__
    # Neither pip's pyspark nor TensorFlow, nor what only a local machine or a notebook needs.
    for absent in ("pyspark", "tensorflow", "tensorflow-cpu", "keras", "delta-spark", "jupyterlab"):
        assert absent not in installed, absent
    # What the wheelhouse held, all of it, and nothing from elsewhere (the index was dead).
    wheels, size_mib = deployment["wheelhouse"]
    assert len(installed) == wheels
    assert 50 <= size_mib <= 400
    project = install_dir / "project"
    assert (project / "conf" / "emr" / "globals.yml").is_file()
    assert (project / "conf" / "base" / "catalog.yml").is_file()
    assert (project / "pyproject.toml").read_text() == (
        deployment["project"] / "pyproject.toml"
    ).read_text()


def test_the_virtualenv_imports_the_clusters_own_spark(deployment, tmp_path):
    python = str(deployment["install_dir"] / "bin" / "python")
    script = "import pyspark, py4j; print(pyspark.__file__); print(py4j.__file__)"
    home = deployment["spark_home"]
    found = subprocess.run(
        [python, "-c", script],
        env={**os.environ, "SPARK_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    pyspark_file, py4j_file = found.stdout.split()
    assert pyspark_file.startswith(str(home / "python" / "pyspark"))
    assert py4j_file.startswith(str(next((home / "python" / "lib").glob("py4j-*-src.zip"))))
    # Without a Spark home (no SPARK_HOME, no /usr/lib/spark here), there is no pyspark at all.
    missing = subprocess.run(
        [python, "-c", "import pyspark"],
        env={**os.environ, "SPARK_HOME": str(tmp_path / "no-spark")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0 and "No module named 'pyspark'" in missing.stderr


def test_keras_weights_on_the_lean_install_say_to_use_the_exported_model(deployment, weights_file):
    script = (
        "from fruits_pipeline import mobilenet_v2\n"
        f"mobilenet_v2.load_feature_model({str(weights_file)!r})\n"
    )
    ran = subprocess.run(
        [str(deployment["install_dir"] / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode != 0
    assert "WeightsUnavailableError" in ran.stderr
    assert "Keras and TensorFlow, which this environment lacks" in ran.stderr
    assert "LiteRT model" in ran.stderr and ".tflite" in ran.stderr


def test_bootstrap_fails_when_a_wheel_is_missing(deployment):
    """The negative control of the offline install: the same wheelhouse less one wheel, and
    the bootstrap fails (nothing is fetched from elsewhere)."""
    bucket, root = deployment["bucket"], deployment["root"]
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    release = f"{bucket}/{PREFIX}/release"
    broken = f"{bucket}/{PREFIX}/broken-release"
    wheels = filesystem.ls(f"{release}/wheelhouse/x86_64")
    (removed,) = [path for path in wheels if path.rsplit("/", 1)[-1].startswith("numpy-")]
    for path in wheels:
        if path != removed:
            filesystem.copy(path, f"{broken}/wheelhouse/x86_64/{path.rsplit('/', 1)[-1]}")
    args = [f"s3://{broken}/wheelhouse", *deployment["bootstrap_args"][1:]]
    args[2] = str(root / "opt" / "broken")
    ran = run_bootstrap(root, deployment["script"], args)
    filesystem.rm(broken, recursive=True)
    assert ran.returncode != 0
    assert "numpy" in ran.stderr and "No matching distribution" in ran.stderr, ran.stderr[-2000:]


def test_packaged_project_runs_locally_from_the_conf_archive(deployment, tiny_image_set, tmp_path):
    python = deployment["install_dir"] / "bin" / "python"
    # The release's exported model: the lean install has no TensorFlow to export Keras weights.
    model = tmp_path / "feature_extractor.tflite"
    s3fs.S3FileSystem(skip_instance_cache=True).get(
        f"{deployment['bucket']}/{PREFIX}/release/feature_extractor.tflite", str(model)
    )
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
            f"raw_images_path={tiny_image_set},featurization.weights={model}",
        ],
        cwd=workdir,
        env={
            **os.environ,
            "SPARK_HOME": str(deployment["spark_home"]),
            "PYSPARK_PYTHON": str(python),
        },
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


def test_submitted_step_runs_the_pipelines_on_s3(deployment, tiny_image_set):
    project, bucket, cluster_id = (
        deployment["project"],
        deployment["bucket"],
        deployment["cluster_id"],
    )
    uploaded = kedro(project, "emr", "upload-images", str(tiny_image_set))
    assert "30 files uploaded" in uploaded
    assert "0 files uploaded" in kedro(project, "emr", "upload-images", str(tiny_image_set))

    submitted = kedro(
        project,
        "emr",
        "submit",
        "--cluster-id",
        cluster_id,
        # The same override as the cluster's: the step runs the bootstrap's virtualenv.
        "--set",
        f"install_dir={deployment['install_dir']}",
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
        # The deployment's s3_encryption, which the cluster has nowhere else.
        "FRUITS_S3_SSE=aws:kms",
        f"FRUITS_S3_SSE_KMS_KEY_ID={KMS_KEY}",
        python,
        "-m",
        "fruits_pipeline",
        "--env",
        "emr",
        "--conf-source",
        f"s3://{bucket}/{PREFIX}/release/conf-fruits_pipeline.tar.gz",
    ]

    # The step's command as EMR's command-runner would run it, on the stand-in of the
    # cluster's Spark home instead of /usr/lib/spark.
    spark_home = str(deployment["spark_home"])
    command = [f"SPARK_HOME={spark_home}" if arg.startswith("SPARK_HOME=") else arg for arg in args]
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("FRUITS_S3_")
    }
    workdir = deployment["install_dir"].parent / "step"
    workdir.mkdir()
    ran = subprocess.run(
        command,
        cwd=workdir,
        env={**environment, "PYSPARK_PYTHON": python},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    metrics = assert_complete_run(bucket, tiny_image_set)
    # The release's model, exported by upload-release: no TensorFlow on the cluster.
    assert metrics["weights_source"] == f"s3://{bucket}/{PREFIX}/release/feature_extractor.tflite"
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
    logs = f"s3://{bucket}/{PREFIX}/emr-logs/{cluster_id}"
    assert f"bootstrap: {logs}/node/<instance id>/bootstrap-actions/1/" in waited
    assert f"containers: {logs}/containers/" in waited
    cluster_state = boto3.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert f"Cluster {cluster_id}: {cluster_state['Status']['State']}" in waited

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


def test_the_operator_policy_allows_every_call_the_commands_make():
    """docs/iam/operator-policy.json against the EMR and EC2 calls of `kedro emr ...`."""
    called = set(
        re.findall(
            r"(?:client|boto3\.client\(\"ec2\"[^)]*\))\.(\w+)\(",
            (PROJECT_ROOT / "src" / "fruits_pipeline" / "emr" / "commands.py").read_text(),
        )
    )
    policy = json.loads((PROJECT_ROOT / "docs" / "iam" / "operator-policy.json").read_text())
    actions = [statement["Action"] for statement in policy["Statement"]]
    allowed = {
        action.split(":", 1)[1].lower()
        for action in (item for group in actions for item in np.atleast_1d(group))
    }
    assert {"run_job_flow", "add_job_flow_steps", "describe_instance_types"} <= called
    missing = {call for call in called if call.replace("_", "") not in allowed}
    assert not missing, f"operator-policy.json lacks {sorted(missing)}"
