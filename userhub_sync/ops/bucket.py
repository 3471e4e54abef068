"""The stage's snapshot bucket, created or checked by `bootstrap`: private, encrypted, TLS-only, stale uploads
cleaned up.

Invariant: fixing drift never removes what is not bootstrap's own; other bucket-policy statements and other
lifecycle rules are kept. Drift is only reported unless the operator asks for `--fix`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from userhub_sync.ops.aws import aws_errors, error_code
from userhub_sync.ops.errors import OpsError
from userhub_sync.ops.steps import Step, StepStatus

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import LifecycleRuleTypeDef

LIFECYCLE_RULE_ID = "userhub-sync-abort-incomplete-uploads"
TLS_SID = "DenyInsecureTransport"
RESOURCE = "snapshot bucket"


def _bucket_wanted(kms_key_arn: str | None) -> dict[str, Any]:
    if kms_key_arn:
        rule = {
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_arn},
            "BucketKeyEnabled": True,
        }
    else:
        rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    return {
        "public_access": {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
        "encryption": {"Rules": [rule]},
    }


def _tls_statement(bucket: str, partition: str) -> dict[str, Any]:
    arn = f"arn:{partition}:s3:::{bucket}"
    return {
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _lifecycle_rule() -> LifecycleRuleTypeDef:
    return {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }


def _get_or_none(call: Callable[[], Any], *missing_codes: str) -> Any:
    try:
        return call()
    except aws_errors() as error:
        if error_code(error) in missing_codes:
            return None
        raise


def ensure_bucket(
    s3: S3Client, name: str, region: str, partition: str, kms_key_arn: str | None, *, fix: bool, check: bool
) -> Step:
    """The snapshot bucket: private (public access block), encrypted, TLS-only, stale uploads cleaned up.

    The TLS-only policy is left out when the S3 endpoint itself is plain http (a local emulator such as moto,
    which enforces aws:SecureTransport and would then deny every request).
    """
    tls = not str(getattr(s3.meta, "endpoint_url", "")).startswith("http://")
    parts = {"public_access", "encryption", "lifecycle"} | ({"tls"} if tls else set())
    note = "" if tls else " (no TLS-only policy: the endpoint is plain http)"
    try:
        s3.head_bucket(Bucket=name)
        exists = True
    except aws_errors() as error:
        code = error_code(error)
        if code in ("404", "NoSuchBucket", "NotFound"):
            exists = False
        elif code in ("403", "AccessDenied", "Forbidden"):
            raise OpsError(
                f"bucket {name} exists but is not yours (or you may not read it): choose another "
                "SNAPSHOT_BUCKET name (bucket names are global)"
            ) from None
        else:
            raise
    if not exists and check:
        return Step(RESOURCE, name, StepStatus.MISSING, "run bootstrap without --check to create it")
    wanted = _bucket_wanted(kms_key_arn)
    if not exists:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        _apply_bucket(s3, name, partition, wanted, parts)
        made = "private, encrypted, TLS-only" if tls else "private, encrypted"
        return Step(RESOURCE, name, StepStatus.CREATED, made + note)
    problems: list[str] = []
    pab = _get_or_none(
        lambda: s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"],
        "NoSuchPublicAccessBlockConfiguration",
    )
    if pab != wanted["public_access"]:
        problems.append("public_access")
    enc = _get_or_none(
        lambda: s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"],
        "ServerSideEncryptionConfigurationNotFoundError",
    )
    enc_rule = ((enc or {}).get("Rules") or [{}])[0].get("ApplyServerSideEncryptionByDefault") or {}
    want_rule = wanted["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    if enc_rule.get("SSEAlgorithm") != want_rule["SSEAlgorithm"] or (
        kms_key_arn and enc_rule.get("KMSMasterKeyID") != kms_key_arn
    ):
        problems.append("encryption")
    policy = _get_or_none(lambda: json.loads(s3.get_bucket_policy(Bucket=name)["Policy"]), "NoSuchBucketPolicy")
    if tls and not any(st.get("Sid") == TLS_SID for st in (policy or {}).get("Statement", [])):
        problems.append("tls")
    rules = _get_or_none(
        lambda: s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"], "NoSuchLifecycleConfiguration"
    )
    if not any(rule.get("ID") == LIFECYCLE_RULE_ID for rule in rules or []):
        problems.append("lifecycle")
    if not problems:
        return Step(RESOURCE, name, StepStatus.OK, note.strip(" ()"))
    labels = {
        "public_access": "public access block",
        "encryption": "default encryption",
        "tls": "TLS-only bucket policy",
        "lifecycle": "lifecycle rule",
    }
    detail = "not as expected: " + ", ".join(labels[p] for p in problems)
    if fix and not check:
        _apply_bucket(s3, name, partition, wanted, set(problems), policy=policy, rules=rules)
        return Step(RESOURCE, name, StepStatus.FIXED, detail)
    return Step(RESOURCE, name, StepStatus.DRIFT, detail)


def _apply_bucket(
    s3: S3Client,
    name: str,
    partition: str,
    wanted: dict[str, Any],
    parts: set[str],
    *,
    policy: dict[str, Any] | None = None,
    rules: list[Any] | None = None,  # GetBucketLifecycleConfiguration's, passed back as they are
) -> None:
    if "public_access" in parts:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=wanted["public_access"])
    if "encryption" in parts:
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration=wanted["encryption"])
    if "tls" in parts:  # keep whatever else the bucket policy says
        document = policy or {"Version": "2012-10-17", "Statement": []}
        document["Statement"] = [st for st in document.get("Statement", []) if st.get("Sid") != TLS_SID]
        document["Statement"].append(_tls_statement(name, partition))
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(document))
    if "lifecycle" in parts:  # keep the bucket's other rules
        kept = [r for r in rules or [] if r.get("ID") != LIFECYCLE_RULE_ID]
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [*kept, _lifecycle_rule()]})
