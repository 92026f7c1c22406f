"""``kedro emr ...``: deploys and runs the pipelines on AWS EMR. Each command reads the same
configuration as ``kedro run --env emr``: the bucket and prefix of conf/emr/globals.yml and the
cluster definition of conf/emr/cluster.yml."""

from __future__ import annotations

import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import boto3
import click
from botocore.exceptions import ClientError
from kedro.framework.session import KedroSession
from kedro.framework.startup import ProjectMetadata, bootstrap_project
from omegaconf import OmegaConf

from fruits_pipeline import __version__, mobilenet_v2, s3_encryption
from fruits_pipeline.emr.cluster import (
    MANAGED_POLICY_TAG,
    SECURITY_GROUPS,
    TERMINAL_STEP_STATES,
    Release,
    cluster_log_uris,
    cluster_request,
    pipeline_step,
    presigned_arguments,
    step_log_uri,
    task_slots,
    untagged_network,
)
from fruits_pipeline.emr.release import (
    ReleaseNotFoundError,
    build_wheelhouse,
    check_release,
    release_files,
    upload_images,
    upload_release,
)

MISSING_SECURITY_CONFIGURATION = ("InvalidRequestException", "ResourceNotFoundException")
ENV_OPTION = click.option(
    "--env", "-e", default="emr", show_default=True, help="Kedro environment to read."
)
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one value of conf/<env>/cluster.yml, e.g. instance_groups.core.count=4.",
)
CLUSTER_OPTION = click.option(
    "--cluster-id", envvar="FRUITS_EMR_CLUSTER_ID", required=True, help="j-... (or env var)."
)


def _settings(metadata: ProjectMetadata, env: str, overrides: tuple[str, ...] = ()) -> dict:
    """The environment's globals and cluster definition, overrides applied."""
    bootstrap_project(metadata.project_path)
    with KedroSession.create(project_path=metadata.project_path, env=env) as session:
        config = session.load_context().config_loader
        cluster = OmegaConf.merge(config["cluster"]["cluster"], OmegaConf.from_dotlist(overrides))
        return {
            "globals": dict(config["globals"]),
            "cluster": OmegaConf.to_container(cluster, resolve=True),
        }


def _uploaded_release(cluster: dict[str, Any]) -> Release:
    """This version's release on S3; a clear error before any EMR request when it is missing."""
    release = Release.at(cluster["release_uri"], __version__)
    try:
        check_release(release, cluster["architectures"])
    except ReleaseNotFoundError as error:
        raise click.ClickException(str(error)) from error
    return release


def _emr(cluster: dict[str, Any]):
    # Credentials and endpoint: the AWS default chain (environment, ~/.aws, instance profile).
    return boto3.client("emr", region_name=cluster["region"])


@click.group()
def emr() -> None:
    """Deploy and run the pipelines on AWS EMR, in this order: upload-images, (kedro package),
    upload-release, create-cluster, submit, wait, terminate."""


@emr.command("upload-images")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@ENV_OPTION
@click.pass_obj
def upload_images_command(metadata: ProjectMetadata, source: Path, env: str) -> None:
    """Copy a local image folder (one sub-folder per class) to the environment's
    raw_images_path, skipping the files already there."""
    settings = _settings(metadata, env)
    target = settings["globals"]["raw_images_path"]
    uploaded, skipped = upload_images(source, target, settings["globals"]["s3fs_args"])
    click.echo(f"{uploaded} files uploaded to {target}, {skipped} already there.")


@emr.command("upload-release")
@click.option(
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where `kedro package` wrote the wheel and conf archive.",
)
@click.option(
    "--weights",
    help="Keras weights (or an exported .tflite) the cluster's LiteRT model comes from; "
    "default: featurization_weights of the local environment.",
)
@ENV_OPTION
@SET_OPTION
@click.pass_obj
def upload_release_command(
    metadata: ProjectMetadata,
    dist: Path,
    weights: str | None,
    env: str,
    overrides: tuple[str, ...],
) -> None:
    """Upload the wheel and conf archive of `kedro package`, a wheelhouse of everything the
    nodes install (downloaded from the package index now, for the cluster's Python and
    architectures), the bootstrap script, and the feature extractor exported to LiteRT."""
    settings = _settings(metadata, env, overrides)
    cluster = settings["cluster"]
    python = settings["globals"]["emr_release"]["python"]
    weights = weights or _settings(metadata, "local")["globals"]["featurization_weights"]
    try:
        wheel, _ = release_files(metadata.project_path / dist, __version__)
        model = mobilenet_v2.load_feature_model(weights).litert
        with TemporaryDirectory() as scratch:
            wheelhouses = {}
            for architecture in cluster["architectures"]:
                wheelhouses[architecture] = Path(scratch) / architecture
                wheels = build_wheelhouse(
                    wheel, cluster["extras"], python, architecture, wheelhouses[architecture]
                )
                size = sum(path.stat().st_size for path in wheels) / 2**20
                click.echo(f"Wheelhouse {architecture}: {len(wheels)} wheels, {size:.0f} MiB")
            release = upload_release(
                metadata.project_path,
                metadata.project_path / dist,
                cluster["release_uri"],
                __version__,
                wheelhouses=wheelhouses,
                feature_extractor=model,
                fs_args=settings["globals"]["s3fs_args"],
            )
    except (ReleaseNotFoundError, mobilenet_v2.WeightsUnavailableError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"Release {__version__} uploaded:\n  {release.wheel_uri}\n  {release.conf_uri}\n"
        f"  {release.wheelhouse_uri}/\n  {release.feature_extractor_uri}"
    )


@emr.command("create-cluster")
@ENV_OPTION
@SET_OPTION
@click.pass_obj
def create_cluster_command(metadata: ProjectMetadata, env: str, overrides: tuple[str, ...]) -> None:
    """Start the cluster of conf/<env>/cluster.yml with the uploaded release installed."""
    settings = _settings(metadata, env, overrides)
    cluster = settings["cluster"]
    release = _uploaded_release(cluster)
    client = _emr(cluster)
    _check_network_tags(cluster)
    encryption = settings["globals"].get("s3_encryption") or {}
    kms_key = encryption.get("kms_key_id")
    if kms_key:
        try:
            kms_key = s3_encryption.kms_key_arn(
                boto3.client("kms", region_name=cluster["region"]), kms_key
            )
        except s3_encryption.KmsKeyError as error:
            raise click.ClickException(str(error)) from error
    security = s3_encryption.emr_security_configuration(
        cluster["security_configuration"], encryption.get("algorithm"), kms_key
    )
    if security:
        _ensure_security_configuration(client, *security)
    request = cluster_request(cluster, release, security[0] if security else None, kms_key)
    cluster_id = client.run_job_flow(**request)["JobFlowId"]
    click.echo(f"Cluster {cluster_id} requested. Next: export FRUITS_EMR_CLUSTER_ID={cluster_id}")


def _check_network_tags(cluster: dict[str, Any]) -> None:
    """With the cluster tagged for AmazonEMRServicePolicy_v2, the subnet, the security groups
    and the VPC it names must carry the tag too, or AWS refuses the cluster after minutes."""
    if cluster["tags"].get(MANAGED_POLICY_TAG) != "true" or not cluster.get("ec2_subnet_id"):
        return
    ec2 = boto3.client("ec2", region_name=cluster["region"])
    subnets = ec2.describe_subnets(SubnetIds=[cluster["ec2_subnet_id"]])["Subnets"]
    groups = [group for name in SECURITY_GROUPS if (group := cluster["security_groups"][name])]
    found = ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"] if groups else []
    # EMR creates its managed groups in the subnet's VPC when none is named: the VPC then
    # needs the tag too.
    vpcs = ec2.describe_vpcs(VpcIds=[subnets[0]["VpcId"]])["Vpcs"] if len(groups) < 3 else []
    untagged = untagged_network(subnets, found, vpcs)
    if untagged:
        raise click.ClickException(
            f"{', '.join(untagged)} lack the tag {MANAGED_POLICY_TAG}=true, which the service "
            "role's AmazonEMRServicePolicy_v2 requires on the network the cluster uses: tag "
            "them (aws ec2 create-tags --resources ID --tags "
            f"Key={MANAGED_POLICY_TAG},Value=true), or see docs/aws.md, IAM."
        )


def _ensure_security_configuration(client, name: str, body: dict[str, Any]) -> None:
    try:
        client.describe_security_configuration(Name=name)
    except ClientError as error:
        # Not there yet (EMR answers InvalidRequest, some versions ResourceNotFound): create it.
        if error.response["Error"]["Code"] not in MISSING_SECURITY_CONFIGURATION:
            raise
        client.create_security_configuration(Name=name, SecurityConfiguration=json.dumps(body))


def _cluster_task_slots(client, cluster: dict[str, Any], cluster_id: str) -> int:
    """The vCPUs of the cluster's core and task nodes now: under YARN's dynamic allocation,
    Spark's default parallelism counts only the executors already up when the stage starts."""
    groups = client.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    types = sorted({group["InstanceType"] for group in groups})
    described = boto3.client("ec2", region_name=cluster["region"]).describe_instance_types(
        InstanceTypes=types
    )["InstanceTypes"]
    vcpus = {item["InstanceType"]: item["VCpuInfo"]["DefaultVCpus"] for item in described}
    return task_slots(groups, vcpus)


@emr.command("submit")
@ENV_OPTION
@SET_OPTION
@CLUSTER_OPTION
@click.option(
    "--terminate-on-failure",
    is_flag=True,
    help="End the cluster if the step fails (a one-shot cluster), instead of leaving it idle "
    "until its auto-termination.",
)
@click.argument("kedro_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def submit_command(
    metadata: ProjectMetadata,
    *,
    env: str,
    overrides: tuple[str, ...],
    cluster_id: str,
    terminate_on_failure: bool,
    kedro_args: tuple[str, ...],
) -> None:
    """Run the pipelines on the cluster as a step; extra arguments go to `kedro run`
    (e.g. `-- --pipelines featurization`)."""
    presigned = presigned_arguments(kedro_args)
    if presigned:
        raise click.ClickException(
            f"{', '.join(presigned)}: a URL with a query string (a presigned URL's signature) "
            "would be stored in the step's arguments, which anyone allowed DescribeStep can "
            "read. Give the weights to `kedro emr upload-release --weights URL` instead (the "
            "cluster runs the release's exported model), or an s3:// URI the cluster can read."
        )
    settings = _settings(metadata, env, overrides)
    cluster = settings["cluster"]
    release = _uploaded_release(cluster)
    client = _emr(cluster)
    step = pipeline_step(
        cluster,
        release,
        settings["globals"]["s3_root"],
        kedro_args,
        slots=_cluster_task_slots(client, cluster, cluster_id),
        encryption=settings["globals"].get("s3_encryption"),
        terminate_on_failure=terminate_on_failure,
    )
    step_id = client.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
    command = " ".join(step["HadoopJarStep"]["Args"])
    click.echo(f"Step {step_id} submitted to {cluster_id}: {command}")


@emr.command("wait")
@ENV_OPTION
@CLUSTER_OPTION
@click.option("--step-id", required=True)
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds.")
@click.option("--poll", type=float, default=30, show_default=True, help="Seconds between checks.")
@click.pass_obj
def wait_command(
    metadata: ProjectMetadata,
    *,
    env: str,
    cluster_id: str,
    step_id: str,
    timeout: float,
    poll: float,
) -> None:
    """Wait for a step to end, showing its state and where its logs are."""
    cluster = _settings(metadata, env)["cluster"]
    client = _emr(cluster)
    click.echo(f"Logs: {step_log_uri(cluster['log_uri'], cluster_id, step_id)}")
    for name, uri in cluster_log_uris(cluster["log_uri"], cluster_id).items():
        click.echo(f"  {name}: {uri}")
    deadline = time.monotonic() + timeout
    state = None
    while True:
        status = client.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]["Status"]
        if status["State"] != state:
            state = status["State"]
            click.echo(f"Step {step_id}: {state} {status.get('StateChangeReason') or ''}".strip())
        if state in TERMINAL_STEP_STATES or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if state != "COMPLETED":
        found = client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        reason = found.get("StateChangeReason") or {}
        click.echo(
            f"Cluster {cluster_id}: {found['State']} "
            f"{reason.get('Code', '')} {reason.get('Message', '')}".rstrip()
        )
        failure = status.get("FailureDetails", {})
        raise click.ClickException(
            f"Step {step_id} is {state}"
            + (f" after {timeout:g} s" if state not in TERMINAL_STEP_STATES else "")
            + (f": {failure.get('Message')} ({failure.get('LogFile')})" if failure else "")
        )


@emr.command("terminate")
@ENV_OPTION
@CLUSTER_OPTION
@click.pass_obj
def terminate_command(metadata: ProjectMetadata, env: str, cluster_id: str) -> None:
    """Terminate the cluster (its S3 outputs and logs stay)."""
    client = _emr(_settings(metadata, env)["cluster"])
    client.terminate_job_flows(JobFlowIds=[cluster_id])
    state = client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    click.echo(f"Cluster {cluster_id}: {state}")
