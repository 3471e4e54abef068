"""Least privilege: one policy file per function role, naming only the stage's own resources.

`*` as a resource is allowed only for UNSCOPABLE, the actions IAM cannot scope to a resource (listed here, not
derived from the code under test), and every committed policy file must grant exactly what docs/OPERATIONS.md's IAM
table says, so the table cannot drift from the files again.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from tests.support import REPO, bootstrap, create_pool, make_project
from userhub_sync.ops import policies

LOG_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
# no resource-level permission exists for these (AWS Service Authorization Reference, list_awslambda.html)
UNSCOPABLE = {"lambda:ListEventSourceMappings"}
EXPECTED_ACTIONS = {
    "post_auth": LOG_ACTIONS | {"sqs:SendMessage"},
    "capture": LOG_ACTIONS | {"sqs:SendMessage"},
    "deliver": LOG_ACTIONS
    | {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
        "ssm:GetParameter",
        "lambda:ListEventSourceMappings",
        "cognito-idp:AdminGetUser",
        "cognito-idp:DescribeUserPool",
        "cognito-idp:ListUsers",
        "s3:GetObject",
    },
    "reconcile": LOG_ACTIONS
    | {
        "cognito-idp:ListUsers",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "sqs:SendMessage",
        "sqs:GetQueueUrl",
        "lambda:InvokeFunction",
        "logs:FilterLogEvents",
    },
}
ACCOUNT = r"(\*|\d{12})"
REGION = r"(\*|[a-z]{2}(-[a-z]+)+-\d)"


def _list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def allowed_resources(stage: str, env: dict[str, str], functions: list[str]) -> dict[str, set[str]]:
    """Per action, the exact resource patterns (only region/account may be `*`) the stage may name."""
    app = f"userhub-sync-{stage}"
    events, dlq = env["EVENTS_QUEUE_NAME"], env["DEAD_LETTER_QUEUE_NAME"]
    bucket, parameter = env["SNAPSHOT_BUCKET"], env["USERHUB_ADMIN_KEY_PARAMETER"].lstrip("/")
    pool = env["USER_POOL_ID"]

    def arn(service: str, rest: str) -> str:
        return rf"arn:aws:{service}:{REGION}:{ACCOUNT}:{re.escape(rest)}"

    logs = {arn("logs", f"log-group:/aws/lambda/{app}-{fn}") + suffix for fn in functions for suffix in ("", ":\\*")}
    triggers = {
        arn("logs", f"log-group:/aws/lambda/{app}-{fn}") + suffix
        for fn in ("post_auth", "post_confirmation")
        for suffix in ("", ":\\*")
    }
    queue = {name: arn("sqs", name) for name in (events, dlq)}
    return {
        **{action: logs for action in LOG_ACTIONS},
        "logs:FilterLogEvents": triggers,  # sign-in recovery reads what post_auth and post_confirmation logged
        "sqs:SendMessage": {queue[events], queue[dlq]},
        "sqs:GetQueueUrl": {queue[events], queue[dlq]},
        **{
            action: {queue[events]}
            for action in (
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ChangeMessageVisibility",
            )
        },
        "ssm:GetParameter": {arn("ssm", f"parameter/{parameter}")},
        **{
            action: {arn("cognito-idp", f"userpool/{pool}")}
            for action in ("cognito-idp:ListUsers", "cognito-idp:AdminGetUser", "cognito-idp:DescribeUserPool")
        },
        **{
            action: {re.escape(f"arn:aws:s3:::{bucket}/reconcile/") + r"\*"}
            for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
        },
        "s3:GetObject": {  # reconcile reads its state; deliver only the sub map of the pool it serves
            re.escape(f"arn:aws:s3:::{bucket}/reconcile/") + r"\*",
            re.escape(f"arn:aws:s3:::{bucket}/reconcile/{pool}/subs/") + r"\*",
        },
        "s3:ListBucket": {re.escape(f"arn:aws:s3:::{bucket}")},
        "lambda:InvokeFunction": {arn("lambda", f"function:{app}-reconcile_continue")},
        **{action: {r"\*"} for action in UNSCOPABLE},
    }


def check_policy(document: dict[str, Any], role: str, stage: str, env: dict[str, str], functions: list[str]) -> None:
    allowed = allowed_resources(stage, env, functions)
    actions: set[str] = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        for action in _list(statement["Action"]):
            assert "*" not in action, f"wildcard action {action}"
            actions.add(action)
            for resource in _list(statement["Resource"]):
                assert resource != "*" or action in UNSCOPABLE, f"{action} on every resource"
                assert any(re.fullmatch(p, resource) for p in allowed[action]), f"{action} on {resource}"
    assert actions == EXPECTED_ACTIONS[role]
    if role in ("post_auth", "capture"):  # may only enqueue, on the events queue
        sqs_resources = {
            r
            for s in document["Statement"]
            for a in _list(s["Action"])
            if a.startswith("sqs:")
            for r in _list(s["Resource"])
        }
        assert all(r.endswith(":" + env["EVENTS_QUEUE_NAME"]) for r in sqs_resources)
    if role == "reconcile":  # both trigger functions' log groups, nothing else
        [recover] = [s for s in document["Statement"] if "logs:FilterLogEvents" in _list(s["Action"])]
        assert _list(recover["Action"]) == ["logs:FilterLogEvents"]
        assert {r.split(":log-group:")[1] for r in _list(recover["Resource"])} == {
            f"/aws/lambda/userhub-sync-{stage}-{fn}{suffix}"
            for fn in ("post_auth", "post_confirmation")
            for suffix in ("", ":*")
        }


def _committed(stage: str) -> tuple[dict[str, Any], dict[str, str]]:
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    return config, config["stages"][stage]["environment_variables"]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_committed_policy_files_are_least_privilege(stage):
    config, env = _committed(stage)
    files = policies.policy_files(config, stage)
    assert set(files) == {
        f"policy-{stage}-post_auth.json",
        f"policy-{stage}-deliver.json",
        f"policy-{stage}-reconcile.json",
        f"policy-{stage}-capture.json",
    }
    for name, (role, functions) in files.items():
        path = REPO / ".chalice" / name
        assert path.exists(), f"{name} is named in config.json but missing"
        check_policy(json.loads(path.read_text()), role, stage, env, functions)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_every_function_has_its_own_policy_file_and_no_autogen(stage):
    config, _ = _committed(stage)
    block = config["stages"][stage]
    assert block["autogen_policy"] is False
    for function in policies.FUNCTION_ROLES:
        assert block["lambda_functions"][function]["iam_policy_file"].startswith(f"policy-{stage}-")


def test_bootstrap_writes_exact_arns(tmp_path, monkeypatch, moto_server):
    project = make_project(tmp_path, monkeypatch, moto_server)
    pool = create_pool()
    bootstrap(pool)
    config = json.loads((project / ".chalice" / "config.json").read_text())
    env = config["stages"]["dev"]["environment_variables"]
    for name, (role, functions) in policies.policy_files(config, "dev").items():
        text = (project / ".chalice" / name).read_text()
        assert ":*:*:" not in text  # account and region are filled in
        assert "123456789012" in text and "us-east-1" in text
        check_policy(json.loads(text), role, "dev", env, functions)
    reconcile = (project / ".chalice" / "policy-dev-reconcile.json").read_text()
    assert f"arn:aws:cognito-idp:us-east-1:123456789012:userpool/{pool}" in reconcile


def test_only_the_unscopable_actions_may_name_every_resource():
    assert policies.UNSCOPABLE_ACTIONS == UNSCOPABLE
    targets = policies.template_targets(_committed("dev")[0], "dev")
    for role in policies.ROLES:
        for statement in policies.build_policy(role, [role], targets)["Statement"]:
            if "*" in statement["Resource"]:
                assert statement["Resource"] == ["*"] and set(statement["Action"]) <= UNSCOPABLE, statement


def _iam_table() -> dict[str, str]:
    """docs/OPERATIONS.md's IAM table: {role: the row's "allows" cell}."""
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    section = text.split("## IAM policies", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `policy-S-(\w+)\.json` \| [^|]+ \| (.+) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_every_policy_file_grants_exactly_what_the_iam_table_in_operations_md_says():
    table = _iam_table()
    assert set(table) == set(policies.ROLES)
    files = sorted((REPO / ".chalice").glob("policy-*.json"))
    assert len(files) == 2 * len(policies.ROLES)  # dev and prod
    for path in files:
        role = path.stem.split("-", 2)[2]
        row = table[role]
        documented = set(re.findall(r"`([a-z0-9-]+:[A-Za-z]+)`", row)) | (LOG_ACTIONS if "logs" in row else set())
        document = json.loads(path.read_text())
        granted = {a for s in document["Statement"] for a in _list(s["Action"])}
        assert granted == documented, (path.name, granted ^ documented)
        for statement in document["Statement"]:
            if "*" in _list(statement["Resource"]):
                for action in _list(statement["Action"]):
                    assert f"`{action}` on `*`" in row, f"{action} on * is not documented as such"


def test_customer_managed_key_adds_only_that_key():
    stage = {"environment_variables": {"KMS_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/abc"}}
    targets = policies.template_targets({"stages": {"dev": stage}}, "dev")
    for role in policies.ROLES:
        kms = [s for s in policies.build_policy(role, [role], targets)["Statement"] if s["Sid"] == "CustomerManagedKey"]
        assert kms and kms[0]["Resource"] == ["arn:aws:kms:eu-west-1:123456789012:key/abc"]
        assert all(a.startswith("kms:") and "*" not in a for a in kms[0]["Action"])


def test_parameter_arn_has_one_slash():
    base = dataclasses.replace(policies.template_targets({}, "s"), account="1", region="r")
    assert dataclasses.replace(base, key_parameter="/x/y").parameter_arn == "arn:aws:ssm:r:1:parameter/x/y"
    assert dataclasses.replace(base, key_parameter="plain").parameter_arn == "arn:aws:ssm:r:1:parameter/plain"
