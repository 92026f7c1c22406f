"""Server-side encryption of what the project writes to S3, from one setting.

``s3_encryption`` (conf/emr/globals.yml) names the algorithm as S3's API does: ``None`` leaves
every object to the bucket's default encryption (which a bucket policy may set to SSE-KMS),
``AES256`` asks for SSE-S3, ``aws:kms`` for SSE-KMS with the key ``kms_key_id`` (an id, ARN or
alias; required, as EMR's security configuration requires one, and as a key ARN:
``kms_key_arn`` resolves an id or alias). Each writer spells it its own
way: Hadoop's S3A connector (Spark's parquet, CSV and Delta writes), s3fs and boto3 (the small
files, the uploads, the run lock) and EMR's security configuration and log encryption.
This module is the one translation of the setting into each.
"""

from __future__ import annotations

import hashlib
from typing import Any

ALGORITHMS = (None, "AES256", "aws:kms")
# The same algorithms as Hadoop 3.3's S3A names them (fs.s3a.encryption.algorithm; pyspark has
# 3.3.4, EMR 7 3.3.6: "SSE-S3" is a later Hadoop's name, refused by these), and as EMR's
# security configurations do.
_S3A_NAMES = {"AES256": "AES256", "aws:kms": "SSE-KMS"}
_EMR_MODES = {"AES256": "SSE-S3", "aws:kms": "SSE-KMS"}


def _checked(algorithm: str | None, kms_key_id: str | None) -> tuple[str | None, str | None]:
    algorithm = algorithm or None
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"s3_encryption.algorithm={algorithm!r} is not one of null (the bucket's default), "
            "AES256 (SSE-S3) or aws:kms (SSE-KMS): see FRUITS_S3_SSE in conf/emr/globals.yml."
        )
    if algorithm == "aws:kms" and not kms_key_id:
        raise ValueError(
            "s3_encryption.algorithm=aws:kms needs s3_encryption.kms_key_id "
            "(FRUITS_S3_SSE_KMS_KEY_ID): the KMS key's id, ARN or alias."
        )
    if kms_key_id and algorithm != "aws:kms":
        raise ValueError(
            f"s3_encryption.kms_key_id is set but the algorithm is {algorithm!r}: a KMS key "
            "goes with aws:kms only."
        )
    return algorithm, kms_key_id or None


def s3fs_kwargs(algorithm: str | None, kms_key_id: str | None = None) -> dict[str, str]:
    """The extra arguments of every PutObject and CreateMultipartUpload, for s3fs's
    ``s3_additional_kwargs`` and boto3: empty for the bucket's default."""
    algorithm, kms_key_id = _checked(algorithm, kms_key_id)
    kwargs = {"ServerSideEncryption": algorithm} if algorithm else {}
    if algorithm == "aws:kms":
        kwargs["SSEKMSKeyId"] = kms_key_id
    return kwargs


def s3a_algorithm(algorithm: str | None, kms_key_id: str | None = None) -> str | None:
    """``fs.s3a.encryption.algorithm``; its key, ``fs.s3a.encryption.key``, is the KMS key."""
    algorithm, _ = _checked(algorithm, kms_key_id)
    return _S3A_NAMES.get(algorithm)


def emr_security_configuration(
    name_prefix: str, algorithm: str | None, kms_key_id: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The name and body of the EMR security configuration encrypting the cluster's S3 writes
    at rest like the rest, or None when the bucket's default is left to do it. The name says
    the mode (and the key, hashed): a changed setting creates a new configuration, never edits
    one a running cluster uses."""
    algorithm, kms_key_id = _checked(algorithm, kms_key_id)
    if algorithm is None:
        return None
    encryption: dict[str, Any] = {"EncryptionMode": _EMR_MODES[algorithm]}
    suffix = _EMR_MODES[algorithm].lower()
    if algorithm == "aws:kms":
        encryption["AwsKmsKey"] = kms_key_id
        suffix += "-" + hashlib.sha256(kms_key_id.encode()).hexdigest()[:8]
    body = {
        "EncryptionConfiguration": {
            "EnableInTransitEncryption": False,
            "EnableAtRestEncryption": True,
            "AtRestEncryptionConfiguration": {"S3EncryptionConfiguration": encryption},
        }
    }
    return f"{name_prefix}-{suffix}", body


class KmsKeyError(ValueError):
    """The KMS key of s3_encryption cannot be resolved to its ARN."""


def kms_key_arn(kms_client: Any, kms_key_id: str) -> str:
    """The ARN of the KMS key ``kms_key_id`` names (a key id, ``alias/name``, or an ARN, kept
    as it is): EMR's security configuration and log encryption refuse anything but a key ARN.
    ``kms_client``: boto3's KMS client (``describe_key``)."""
    if kms_key_id.startswith("arn:") and ":key/" in kms_key_id:
        return kms_key_id
    try:
        return kms_client.describe_key(KeyId=kms_key_id)["KeyMetadata"]["Arn"]
    except Exception as error:
        raise KmsKeyError(
            f"The KMS key {kms_key_id!r} (FRUITS_S3_SSE_KMS_KEY_ID) could not be resolved to "
            f"its ARN, which EMR requires ({error}): give the key's ARN "
            "(arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID), or allow kms:DescribeKey on it."
        ) from error
