"""Least-privilege IAM policy files, one per function role, with the stage's exact ARNs.

`autogen_policy: false` makes Chalice give each function its own role with the policy from `iam_policy_file`
(Chalice's autogen only scans app.py and would miss every boto3 call in chalicelib/). Each policy names the
stage's own queue, DLQ, pool, bucket prefix, parameter and log groups, and no `*` action. `bootstrap` writes
them with the account and region from STS; the committed dev/prod versions carry `*` there until it runs.

The one `*` resource is for actions AWS cannot scope to a resource (UNSCOPABLE_ACTIONS; the Service Authorization
Reference lists no resource type for them: docs.aws.amazon.com/service-authorization/latest/reference/
list_awslambda.html). The CloudFormation path gets the same documents with `Fn::Sub` ARNs (`cloudformation_policy`),
so the pool and the stage come from template parameters there, never from a placeholder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from userhub_sync.ops.stage import default_names


class Role(StrEnum):
    """A policy document; every function with the same role gets the same one (and shares its policy file)."""

    POST_AUTH = "post_auth"
    DELIVER = "deliver"
    RECONCILE = "reconcile"
    CAPTURE = "capture"


FUNCTION_ROLES: dict[str, Role] = {
    "post_auth": Role.POST_AUTH,
    "post_confirmation": Role.POST_AUTH,
    "deliver": Role.DELIVER,
    "reconcile": Role.RECONCILE,
    "reconcile_continue": Role.RECONCILE,
    "capture": Role.CAPTURE,
}
ROLES = tuple(Role)
LOG_ACTIONS = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
# Actions without resource-level permissions: their only valid Resource is "*".
UNSCOPABLE_ACTIONS = frozenset({"lambda:ListEventSourceMappings"})


class FileStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class PolicyTargets:
    """The stage's resources; `account`/`region` may be `*` in the committed templates."""

    app_name: str
    stage: str
    account: str
    region: str
    events_queue: str
    dead_letter_queue: str
    user_pool_id: str
    bucket: str
    key_parameter: str
    partition: str = "aws"
    kms_key_arn: str | None = None  # a customer-managed key used for SQS SSE and the SSM parameter

    def _arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region, account = (self.region, self.account) if regional else ("", "")
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    def queue_arn(self, name: str) -> str:
        return self._arn("sqs", name)

    @property
    def events_queue_arn(self) -> str:
        return self.queue_arn(self.events_queue)

    @property
    def dead_letter_queue_arn(self) -> str:
        return self.queue_arn(self.dead_letter_queue)

    @property
    def user_pool_arn(self) -> str:
        return self._arn("cognito-idp", f"userpool/{self.user_pool_id}")

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    @property
    def parameter_arn(self) -> str:
        # a parameter named "/a/b" has the ARN "...:parameter/a/b"; one named "a" has "...:parameter/a"
        return self._arn("ssm", "parameter/" + self.key_parameter.lstrip("/"))

    def function_arn(self, function: str) -> str:
        return self._arn("lambda", f"function:{self.app_name}-{self.stage}-{function}")

    def log_group_arns(self, function: str) -> list[str]:
        group = f"log-group:/aws/lambda/{self.app_name}-{self.stage}-{function}"
        return [self._arn("logs", group), self._arn("logs", group + ":*")]


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}


def build_policy(role: str, functions: list[str], t: PolicyTargets) -> dict[str, Any]:
    """The policy document for one role, covering the log groups of every function that uses it."""
    statements: list[dict[str, Any]] = [
        _statement("Logs", LOG_ACTIONS, [arn for fn in sorted(functions) for arn in t.log_group_arns(fn)])
    ]
    kms_actions: list[str] = []
    if role in (Role.POST_AUTH, Role.CAPTURE):
        # both find the queue URL from EVENTS_QUEUE_URL or their own ARN, so SendMessage is all they need; capture
        # never calls Cognito (deliver resolves the user)
        statements.append(_statement("EnqueueEvents", ["sqs:SendMessage"], [t.events_queue_arn]))
        kms_actions = ["kms:GenerateDataKey", "kms:Decrypt"]  # producers to a CMK-encrypted queue need both
    elif role == Role.DELIVER:
        statements.append(
            _statement(
                "ConsumeEvents",
                [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueUrl",
                ],
                [t.events_queue_arn],
            )
        )
        statements.append(_statement("DeadLetter", ["sqs:SendMessage", "sqs:GetQueueUrl"], [t.dead_letter_queue_arn]))
        statements.append(_statement("ReadAdminKey", ["ssm:GetParameter"], [t.parameter_arn]))
        # for deliver to look up its own SQS event source mapping; ListEventSourceMappings has no
        # resource-level permission in IAM, so "*" is its only possible Resource (UNSCOPABLE_ACTIONS)
        statements.append(_statement("FindOwnMapping", ["lambda:ListEventSourceMappings"], ["*"]))
        # resolving the user a captured change names: AdminGetUser for a hint, DescribeUserPool for how users sign
        # in, ListUsers for a sub, and the sub map reconcile writes, for deleted users
        statements.append(
            _statement(
                "ResolveCapturedUsers",
                ["cognito-idp:AdminGetUser", "cognito-idp:DescribeUserPool", "cognito-idp:ListUsers"],
                [t.user_pool_arn],
            )
        )
        statements.append(
            _statement("ReadSubMap", ["s3:GetObject"], [f"{t.bucket_arn}/reconcile/{t.user_pool_id}/subs/*"])
        )
        kms_actions = ["kms:Decrypt", "kms:GenerateDataKey"]
    elif role == Role.RECONCILE:
        statements.append(_statement("ScanPool", ["cognito-idp:ListUsers"], [t.user_pool_arn]))
        statements.append(
            _statement(
                "SnapshotObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [f"{t.bucket_arn}/reconcile/*"]
            )
        )
        statements.append(_statement("SnapshotList", ["s3:ListBucket"], [t.bucket_arn]))
        statements.append(_statement("EnqueueEvents", ["sqs:SendMessage", "sqs:GetQueueUrl"], [t.events_queue_arn]))
        statements.append(
            _statement("ContinueReconcile", ["lambda:InvokeFunction"], [t.function_arn("reconcile_continue")])
        )
        # chalicelib/signin_recovery.py reads the recovery records post_auth and post_confirmation wrote
        statements.append(
            _statement(
                "RecoverSignins",
                ["logs:FilterLogEvents"],
                [arn for fn in ("post_auth", "post_confirmation") for arn in t.log_group_arns(fn)],
            )
        )
        kms_actions = ["kms:GenerateDataKey", "kms:Decrypt"]
    else:
        raise ValueError(f"unknown role {role!r}")
    if t.kms_key_arn:
        statements.append(_statement("CustomerManagedKey", kms_actions, [t.kms_key_arn]))
    return {"Version": "2012-10-17", "Statement": statements}


def policy_files(config: dict[str, Any], stage: str) -> dict[str, tuple[str, list[str]]]:
    """{file name: (role, [functions])} from each function's `iam_policy_file` (default policy-<stage>-<role>.json)."""
    functions_cfg = ((config.get("stages") or {}).get(stage) or {}).get("lambda_functions") or {}
    files: dict[str, tuple[str, list[str]]] = {}
    for function, role in FUNCTION_ROLES.items():
        name = (functions_cfg.get(function) or {}).get("iam_policy_file") or default_policy_file(stage, role)
        existing = files.get(name)
        if existing and existing[0] != role:
            raise ValueError(f"{name} is shared by functions needing different policies ({existing[0]}, {role})")
        files.setdefault(name, (role, []))[1].append(function)
    return files


def default_policy_file(stage: str, role: str) -> str:
    return f"policy-{stage}-{role}.json"


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def write_policies(project_dir: Path, config: dict[str, Any], targets: PolicyTargets) -> dict[str, FileStatus]:
    """Write every policy file of the stage; returns what happened to each file, by name."""
    results: dict[str, FileStatus] = {}
    for name, (role, functions) in policy_files(config, targets.stage).items():
        path = project_dir / ".chalice" / name
        text = render(build_policy(role, functions, targets))
        old = path.read_text() if path.exists() else None
        if old == text:
            results[name] = FileStatus.UNCHANGED
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        results[name] = FileStatus.CREATED if old is None else FileStatus.UPDATED
    return results


def _names(names: dict[str, str]) -> dict[str, str]:
    """PolicyTargets' fields for a stage's resource names, from the variables that carry them."""
    return {
        "events_queue": names["EVENTS_QUEUE_NAME"],
        "dead_letter_queue": names["DEAD_LETTER_QUEUE_NAME"],
        "bucket": names["SNAPSHOT_BUCKET"],
        "key_parameter": names["USERHUB_ADMIN_KEY_PARAMETER"],
    }


CFN_TARGETS = PolicyTargets(
    app_name="userhub-sync",
    stage="${Stage}",
    account="${AWS::AccountId}",
    region="${AWS::Region}",
    partition="${AWS::Partition}",
    user_pool_id="${UserPoolId}",
    **_names(default_names("userhub-sync", "${Stage}")),
)


def cloudformation_policy(role: str, functions: list[str]) -> dict[str, Any]:
    """`build_policy` for infra/merge-template.json: every ARN an `Fn::Sub` of the template's parameters."""
    document = build_policy(role, functions, CFN_TARGETS)
    for statement in document["Statement"]:
        statement["Resource"] = [r if r == "*" else {"Fn::Sub": r} for r in statement["Resource"]]
    return document


def template_targets(config: dict[str, Any], stage: str) -> PolicyTargets:
    """The committed form: the stage's names from config.json, account and region left as `*` for bootstrap."""
    env = ((config.get("stages") or {}).get(stage) or {}).get("environment_variables") or {}
    app = str(config.get("app_name") or "userhub-sync")
    names = {name: env.get(name) or default for name, default in default_names(app, stage).items()}
    return PolicyTargets(
        app_name=app,
        stage=stage,
        account="*",
        region="*",
        user_pool_id=env.get("USER_POOL_ID") or "CHANGEME",
        kms_key_arn=env.get("KMS_KEY_ARN") or None,
        **_names(names),
    )


if __name__ == "__main__":  # regenerate the committed templates: python -m userhub_sync.ops.policies dev prod
    import sys

    from userhub_sync.ops.stage import find_project_dir, read_config

    project = find_project_dir()
    cfg = read_config(project)
    for stage_name in sys.argv[1:] or sorted(cfg.get("stages") or {}):
        for file_name, status in write_policies(project, cfg, template_targets(cfg, stage_name)).items():
            print(f"{file_name}: {status}")
