"""The EMR requests, built from the cluster definition (conf/emr/cluster.yml) and the S3
locations of a release: pure functions from data to the boto3 call arguments, so that what is
tested against moto's EMR API is exactly what is sent to AWS."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fruits_pipeline.redaction import redact

# The tag AWS's managed policy AmazonEMRServicePolicy_v2 requires on every resource the service
# role acts on: the cluster, and the subnet, security groups (and VPC) it runs in.
MANAGED_POLICY_TAG = "for-use-with-amazon-emr-managed-policies"
# cluster.yml's security groups -> run_job_flow's Instances keys.
SECURITY_GROUPS = {
    "emr_managed_primary": "EmrManagedMasterSecurityGroup",
    "emr_managed_core": "EmrManagedSlaveSecurityGroup",
    "service_access": "ServiceAccessSecurityGroup",
}

TERMINAL_STEP_STATES = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")
# The names `kedro package` writes to dist/.
CONF_ARCHIVE = "conf-fruits_pipeline.tar.gz"


# In the release folder: the exported model, and the list of a wheelhouse's wheels.
FEATURE_EXTRACTOR = "feature_extractor.tflite"
WHEELHOUSE_REQUIREMENTS = "requirements.txt"


def wheel_name(version: str) -> str:
    return f"fruits_pipeline-{version}-py3-none-any.whl"


@dataclass(frozen=True)
class Release:
    """Where one deployed release of the project lies on S3."""

    wheel_uri: str
    conf_uri: str
    # With the conf archive, the project folder notebooks open on the cluster (%reload_kedro).
    pyproject_uri: str
    bootstrap_uri: str
    # One folder of wheels per CPU architecture (`uname -m`), pip's own included.
    wheelhouse_uri: str
    # The feature extractor exported to LiteRT: the emr environment's featurization.weights.
    feature_extractor_uri: str

    @classmethod
    def at(cls, release_uri: str, version: str) -> Release:
        """The release of ``version`` under ``release_uri``, with the file names `kedro package`
        gives the wheel and the conf archive."""
        root = release_uri.rstrip("/")
        return cls(
            f"{root}/{wheel_name(version)}",
            f"{root}/{CONF_ARCHIVE}",
            f"{root}/pyproject.toml",
            f"{root}/bootstrap.sh",
            f"{root}/wheelhouse",
            f"{root}/{FEATURE_EXTRACTOR}",
        )

    def wheelhouse(self, architecture: str) -> str:
        return f"{self.wheelhouse_uri}/{architecture}"

    def uris(self, architectures: Iterable[str] = ()) -> tuple[str, ...]:
        """The release's files; with ``architectures``, their wheelhouses' requirement lists."""
        return (
            self.wheel_uri,
            self.conf_uri,
            self.pyproject_uri,
            self.bootstrap_uri,
            self.feature_extractor_uri,
            *(f"{self.wheelhouse(arch)}/{WHEELHOUSE_REQUIREMENTS}" for arch in architectures),
        )


def _instance_group(name: str, role: str, group: dict[str, Any]) -> dict[str, Any]:
    return {
        "Name": name,
        "InstanceRole": role,
        "Market": "ON_DEMAND",
        "InstanceType": group["instance_type"],
        "InstanceCount": int(group["count"]),
    }


def bootstrap_arguments(cluster: dict[str, Any], release: Release) -> list[str]:
    """The bootstrap action's arguments (emr/bootstrap.sh): what to install, and where."""
    return [
        release.wheelhouse_uri,
        release.wheel_uri,
        cluster["install_dir"],
        cluster["python"],
        release.conf_uri,
        release.pyproject_uri,
        ",".join(cluster["extras"]),
    ]


def cluster_request(
    cluster: dict[str, Any],
    release: Release,
    security_configuration: str | None,
    log_kms_key_arn: str | None = None,
) -> dict[str, Any]:
    """The ``run_job_flow`` arguments for the cluster definition and a release; the security
    configuration by name, if any (``s3_encryption.emr_security_configuration``), and the KMS
    key that encrypts the logs EMR pushes to ``log_uri``, if any (SSE-KMS)."""
    instances: dict[str, Any] = {
        "InstanceGroups": [
            _instance_group("Primary", "MASTER", cluster["instance_groups"]["primary"]),
            _instance_group("Core", "CORE", cluster["instance_groups"]["core"]),
        ],
        # Stays up between steps (for the notebook); idle auto-termination stops it.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if cluster.get("ec2_key_name"):
        instances["Ec2KeyName"] = cluster["ec2_key_name"]
    if cluster.get("ec2_subnet_id"):
        instances["Ec2SubnetId"] = cluster["ec2_subnet_id"]
    for name, key in SECURITY_GROUPS.items():
        if (cluster.get("security_groups") or {}).get(name):
            instances[key] = cluster["security_groups"][name]
    python = f"{cluster['install_dir']}/bin/python"
    request = {
        "Name": cluster["name"],
        "ReleaseLabel": cluster["release_label"],
        "LogUri": cluster["log_uri"],
        "Applications": [{"Name": name} for name in cluster["applications"]],
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": "Install fruits-pipeline",
                "ScriptBootstrapAction": {
                    "Path": release.bootstrap_uri,
                    "Args": bootstrap_arguments(cluster, release),
                },
            }
        ],
        # Spark's Python workers and driver run the bootstrap's virtualenv; the release's own
        # Delta Lake jars hold the image table.
        "Configurations": [
            {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
            {
                "Classification": "spark-env",
                "Properties": {},
                "Configurations": [
                    {
                        "Classification": "export",
                        "Properties": {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python},
                    }
                ],
            },
        ],
        "AutoTerminationPolicy": {"IdleTimeout": int(cluster["idle_timeout_seconds"])},
        "ServiceRole": cluster["service_role"],
        "JobFlowRole": cluster["instance_profile"],
        "VisibleToAllUsers": True,
        "Tags": [{"Key": key, "Value": str(value)} for key, value in cluster["tags"].items()],
    }
    if security_configuration:
        request["SecurityConfiguration"] = security_configuration
    if log_kms_key_arn:
        request["LogEncryptionKmsKeyId"] = log_kms_key_arn
    return request


def untagged_network(
    subnets: list[dict[str, Any]],
    security_groups: list[dict[str, Any]],
    vpcs: list[dict[str, Any]],
) -> list[str]:
    """The subnets, security groups and VPCs (as EC2's describe calls give them) that lack
    MANAGED_POLICY_TAG=true: AmazonEMRServicePolicy_v2 cannot act on them."""

    def tagged(resource: dict[str, Any]) -> bool:
        tags = {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}
        return tags.get(MANAGED_POLICY_TAG) == "true"

    return [
        *(f"subnet {item['SubnetId']}" for item in subnets if not tagged(item)),
        *(f"security group {item['GroupId']}" for item in security_groups if not tagged(item)),
        *(f"VPC {item['VpcId']}" for item in vpcs if not tagged(item)),
    ]


def presigned_arguments(kedro_args: tuple[str, ...]) -> list[str]:
    """The arguments that hold a URI with a query string (a presigned URL's signature): an EMR
    step keeps its arguments, and DescribeStep shows them to anyone allowed to call it."""
    return [redact(argument) for argument in kedro_args if redact(argument) != argument]


def task_slots(instance_groups: list[dict[str, Any]], vcpus: dict[str, int]) -> int:
    """The vCPUs of the nodes that run executors (core and task groups, as many instances as
    are running, else as requested): ``list_instance_groups``'s groups, ``vcpus`` by instance
    type (EC2's ``describe_instance_types``)."""
    return sum(
        vcpus[group["InstanceType"]]
        * (group.get("RunningInstanceCount") or group.get("RequestedInstanceCount") or 0)
        for group in instance_groups
        if group["InstanceGroupType"] in ("CORE", "TASK")
    )


def pipeline_step(
    cluster: dict[str, Any],
    release: Release,
    s3_root: str,
    kedro_args: tuple[str, ...] = (),
    *,
    slots: int | None = None,
    encryption: dict[str, str | None] | None = None,
    terminate_on_failure: bool = False,
) -> dict[str, Any]:
    """The ``add_job_flow_steps`` step that runs the packaged project on the primary node:
    ``python -m fruits_pipeline --env emr --conf-source <conf archive>``, the same entry point
    as a local run, with the cluster's own Spark (SPARK_HOME) on YARN. ``slots``: the cluster's
    task slots (``task_slots``), for the featurization's partitions (FRUITS_TASK_SLOTS).
    ``encryption``: the environment's s3_encryption, passed on as the variables it reads.
    ``terminate_on_failure``: a failed step ends the cluster (a one-shot cluster), instead of
    leaving it idle until its auto-termination."""
    bucket, _, prefix = s3_root.partition("/")
    return {
        # The name shows in the EMR console and its API: no credential or presigned query.
        "Name": redact("fruits-pipeline: kedro run --env emr " + " ".join(kedro_args)),
        "ActionOnFailure": "TERMINATE_CLUSTER" if terminate_on_failure else "CONTINUE",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                "env",
                "SPARK_HOME=/usr/lib/spark",
                "KEDRO_DISABLE_TELEMETRY=true",
                f"FRUITS_S3_BUCKET={bucket}",
                f"FRUITS_S3_PREFIX={prefix}",
                *([f"FRUITS_TASK_SLOTS={slots}"] if slots else []),
                *(
                    f"{variable}={value}"
                    for variable, value in (
                        ("FRUITS_S3_SSE", (encryption or {}).get("algorithm")),
                        ("FRUITS_S3_SSE_KMS_KEY_ID", (encryption or {}).get("kms_key_id")),
                    )
                    if value
                ),
                f"{cluster['install_dir']}/bin/python",
                "-m",
                "fruits_pipeline",
                "--env",
                "emr",
                "--conf-source",
                release.conf_uri,
                *kedro_args,
            ],
        },
    }


def step_log_uri(log_uri: str, cluster_id: str, step_id: str) -> str:
    """Where EMR puts a step's stdout.gz and stderr.gz (a few minutes after it ends)."""
    return f"{log_uri.rstrip('/')}/{cluster_id}/steps/{step_id}/"


def cluster_log_uris(log_uri: str, cluster_id: str) -> dict[str, str]:
    """Where EMR puts the bootstrap action's output (one folder per node) and the YARN
    containers' logs (the Spark driver's and executors')."""
    root = f"{log_uri.rstrip('/')}/{cluster_id}"
    return {
        "bootstrap": f"{root}/node/<instance id>/bootstrap-actions/1/",
        "containers": f"{root}/containers/",
    }
