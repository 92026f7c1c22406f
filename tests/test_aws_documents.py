"""The AWS documents and requests checked against AWS's documented rules, without a cluster:
the IAM policies of docs/iam/ (evaluated for every path an emr run touches), the managed
policy's tag on the network, the KMS key as an ARN, and what a step may carry.

Rules cited in docs/aws.md: AmazonEMRServicePolicy_v2 acts only on resources tagged
for-use-with-amazon-emr-managed-policies=true; an explicit Deny wins over any Allow; EMR's
security configuration and LogEncryptionKmsKeyId take a key ARN."""

from __future__ import annotations

import fnmatch
import json
import re

import boto3
import pytest

from fruits_pipeline import __version__
from fruits_pipeline.emr.cluster import (
    MANAGED_POLICY_TAG,
    Release,
    cluster_request,
    pipeline_step,
    presigned_arguments,
    untagged_network,
)
from fruits_pipeline.s3_encryption import KmsKeyError, kms_key_arn
from tests.conftest import PROJECT_ROOT, kedro, make_project_copy, project_config

BUCKET, PREFIX, ACCOUNT = "fruits-bucket", "fruits-pipeline", "123456789012"


def _policy(name: str) -> dict:
    text = (PROJECT_ROOT / "docs" / "iam" / name).read_text()
    text = text.replace("BUCKET", BUCKET).replace("PREFIX", PREFIX)
    return json.loads(text.replace("ACCOUNT_ID", ACCOUNT))


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def decision(policy: dict, action: str, resource: str) -> str:
    """IAM's evaluation of one identity policy, conditions aside: an explicit Deny wins, then
    an Allow, else the implicit deny."""
    matching = [
        statement["Effect"]
        for statement in policy["Statement"]
        if any(fnmatch.fnmatchcase(action, pattern) for pattern in _listed(statement["Action"]))
        and any(
            fnmatch.fnmatchcase(resource, pattern) for pattern in _listed(statement["Resource"])
        )
    ]
    return "Deny" if "Deny" in matching else "Allow" if "Allow" in matching else "implicit deny"


def _s3_key(uri: str) -> str:
    return re.sub(r"^s3a?://[^/]+/", "", uri)


@pytest.fixture
def emr_config(monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", BUCKET)
    monkeypatch.setenv("FRUITS_S3_PREFIX", PREFIX)
    return project_config("emr")


def test_the_instance_profile_writes_every_output_and_never_the_release_or_photos(emr_config):
    policy = _policy("instance-profile-policy.json")
    catalog = emr_config["catalog"]
    read_only = {"raw_images", "feature_model", "image_table_history"}
    written = [
        _s3_key(entry.get("filepath") or entry.get("path") or entry["dataset"]["filepath"])
        for name, entry in catalog.items()
        if isinstance(entry, dict) and "type" in entry and name not in read_only
    ]
    written += [
        _s3_key(emr_config["parameters"]["run_lock"]["path"]),
        _s3_key(emr_config["cluster"]["cluster"]["log_uri"]) + "j-1/steps/s-1/stdout.gz",
    ]
    assert len(written) >= 15
    for key in written:
        for action in ("s3:PutObject", "s3:DeleteObject", "s3:GetObject"):
            assert decision(policy, action, f"arn:aws:s3:::{BUCKET}/{key}/part-0") == "Allow", (
                action,
                key,
            )
    for key in (
        _s3_key(catalog["raw_images"]["path"]) + "Apple/1.jpg",
        _s3_key(emr_config["globals"]["release_uri"]) + "feature_extractor.tflite",
    ):
        resource = f"arn:aws:s3:::{BUCKET}/{key}"
        assert decision(policy, "s3:GetObject", resource) == "Allow", key
        assert decision(policy, "s3:PutObject", resource) == "Deny", key
        assert decision(policy, "s3:DeleteObject", resource) == "Deny", key
    elsewhere = f"arn:aws:s3:::{BUCKET}/another-project/x"
    assert decision(policy, "s3:GetObject", elsewhere) == "implicit deny"


def test_the_operator_policy_is_scoped_to_the_projects_clusters_and_roles(emr_config):
    policy = _policy("operator-policy.json")
    tags = emr_config["cluster"]["cluster"]["tags"]
    for statement in policy["Statement"]:
        actions = _listed(statement["Action"])
        cluster_actions = [
            action
            for action in actions
            if action.startswith("elasticmapreduce:") and "SecurityConfiguration" not in action
        ]
        if cluster_actions:  # a tag the cluster request carries
            (condition,) = statement["Condition"]["StringEquals"].items()
            key, value = condition
            assert key in ("aws:RequestTag/project", "aws:ResourceTag/project"), statement
            assert tags["project"] == value
        if "iam:PassRole" in actions:
            assert statement["Condition"]["StringEquals"] == {
                "iam:PassedToService": "elasticmapreduce.amazonaws.com"
            }
        if "iam:CreateServiceLinkedRole" in actions:
            assert statement["Condition"]["StringLike"] == {
                "iam:AWSServiceName": "elasticmapreduce.amazonaws.com"
            }
    every_action = {a for s in policy["Statement"] for a in _listed(s["Action"])}
    assert {"iam:CreateServiceLinkedRole", "iam:PassRole", "kms:DescribeKey"} <= every_action
    # The instance profile's role is passed to EC2 by EMR only.
    passing = _policy("service-role-pass-instance-profile.json")["Statement"][0]
    assert passing["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"


def test_the_policies_keep_their_placeholders():
    texts = {path.name: path.read_text() for path in (PROJECT_ROOT / "docs" / "iam").glob("*.json")}
    for name in ("instance-profile-policy.json", "operator-policy.json"):
        assert all(word in texts[name] for word in ("BUCKET", "PREFIX", "KMS_KEY_ARN")), name
    assert "ACCOUNT_ID" in texts["operator-policy.json"]
    assert "PREFIX/release/" in texts["instance-profile-policy.json"]
    assert "PREFIX/01_raw/" in texts["instance-profile-policy.json"]


def test_the_docs_say_what_the_managed_policy_needs():
    text = " ".join((PROJECT_ROOT / "docs" / "aws.md").read_text().split())
    assert "the subnet and the security groups" in text and MANAGED_POLICY_TAG in text
    assert "aws iam add-role-to-instance-profile" in text
    assert "aws iam create-instance-profile" in text
    assert "EMRFS" not in text.replace("EMRFS no longer", "")
    # The comment beside the line that sets PYSPARK_PYTHON says why EMR's executors need it.
    source = (PROJECT_ROOT / "src" / "fruits_pipeline" / "spark_session.py").read_text()
    comment = source[: source.index('os.environ.setdefault("PYSPARK_PYTHON"')].rsplit("\n\n", 1)[-1]
    assert "executors" in comment and "EMR" in comment


def test_untagged_subnets_groups_and_vpcs_are_named():
    tag = [{"Key": MANAGED_POLICY_TAG, "Value": "true"}]
    untagged = untagged_network(
        [{"SubnetId": "subnet-1", "Tags": tag}, {"SubnetId": "subnet-2"}],
        [{"GroupId": "sg-1", "Tags": []}],
        [{"VpcId": "vpc-1", "Tags": tag}],
    )
    assert untagged == ["subnet subnet-2", "security group sg-1"]


def test_create_cluster_refuses_an_untagged_subnet_before_any_request(tmp_path, s3_bucket):
    ec2, emr = boto3.client("ec2"), boto3.client("emr")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    project = make_project_copy(tmp_path / "project")
    # The release check comes first: put the files it looks for.
    cluster = project_config("emr")["cluster"]["cluster"]
    for uri in Release.at(cluster["release_uri"], __version__).uris(cluster["architectures"]):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"x")
    clusters = len(emr.list_clusters()["Clusters"])
    subnet_option = ("--set", f"ec2_subnet_id={subnet}")
    failed = kedro(project, "emr", "create-cluster", *subnet_option, exit_code=1)
    message = " ".join(failed.split())
    assert f"subnet {subnet}, VPC {vpc} lack the tag {MANAGED_POLICY_TAG}=true" in message
    assert len(emr.list_clusters()["Clusters"]) == clusters, "no cluster requested"

    ec2.create_tags(Resources=[subnet, vpc], Tags=[{"Key": MANAGED_POLICY_TAG, "Value": "true"}])
    assert "requested" in kedro(project, "emr", "create-cluster", *subnet_option)
    assert len(emr.list_clusters()["Clusters"]) == clusters + 1


def test_a_kms_key_id_or_alias_is_resolved_to_its_arn(moto_server):
    kms = boto3.client("kms")
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/fruits", TargetKeyId=key["KeyId"])
    assert kms_key_arn(kms, key["KeyId"]) == key["Arn"]
    assert kms_key_arn(kms, "alias/fruits") == key["Arn"]
    assert kms_key_arn(kms, key["Arn"]) == key["Arn"]
    with pytest.raises(KmsKeyError, match="give the key's ARN"):
        kms_key_arn(kms, "alias/no-such-key")


def test_logs_are_encrypted_with_the_kms_key_and_a_failed_step_can_end_the_cluster(emr_config):
    cluster = emr_config["cluster"]["cluster"]
    release = Release.at(f"s3://{BUCKET}/{PREFIX}/release", "0.1.0")
    key = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1234"
    assert cluster_request(cluster, release, "sec", key)["LogEncryptionKmsKeyId"] == key
    assert "LogEncryptionKmsKeyId" not in cluster_request(cluster, release, None)
    step = pipeline_step(cluster, release, f"{BUCKET}/{PREFIX}")
    assert step["ActionOnFailure"] == "CONTINUE"
    one_shot = pipeline_step(cluster, release, f"{BUCKET}/{PREFIX}", terminate_on_failure=True)
    assert one_shot["ActionOnFailure"] == "TERMINATE_CLUSTER"


def test_a_presigned_url_is_never_stored_in_a_step(tmp_path, moto_server):
    presigned = "https://bucket.s3.amazonaws.com/w.h5?X-Amz-Signature=abc&X-Amz-Credential=x"
    args = ("--params", f"featurization.weights={presigned}")
    assert presigned_arguments(args) == [
        "featurization.weights=https://bucket.s3.amazonaws.com/w.h5?<redacted>"
    ]
    assert presigned_arguments(("--params", "featurization.weights=s3://b/w.h5")) == []
    project = make_project_copy(tmp_path / "project")
    failed = kedro(project, "emr", "submit", "--cluster-id", "j-NOTUSED", "--", *args, exit_code=1)
    message = " ".join(failed.split())
    assert "would be stored in the step's arguments" in message
    assert "X-Amz-Signature" not in failed
