"""The CloudFormation path: `chalice package --merge-template infra/merge-template.json`, then cfn-lint.

The package is built from a temporary copy of the project with an empty requirements.txt: this test is about the
template, and an empty file keeps Chalice from downloading wheels (the zip's contents do not affect the template).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.delivery import RetryPolicy
from chalicelib.settings import Settings
from tests.support import REPO, run_chalice
from userhub_sync.ops import policies
from userhub_sync.ops.stage import CONNECTION_RE, POOL_ID_RE

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict:
    project = tmp_path_factory.mktemp("cfn") / "project"
    shutil.copytree(REPO / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "app.py", project / "app.py")
    (project / ".chalice").mkdir()
    for path in (REPO / ".chalice").glob("*.json"):  # config.json and the committed policy-dev-*.json
        shutil.copy(path, project / ".chalice" / path.name)
    (project / "requirements.txt").write_text("")
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    env.pop("AWS_ENDPOINT_URL", None)  # packaging makes no AWS calls
    out = project / "out"
    run_chalice(
        project,
        *("package", "--stage", "dev", "--merge-template", str(REPO / "infra" / "merge-template.json"), str(out)),
        env=env,
        timeout=300,
    )
    return {"path": out / "sam.json", "template": json.loads((out / "sam.json").read_text()), "env": env}


def test_cfn_lint_passes(packaged):
    lint = subprocess.run(
        [str(BIN / "cfn-lint"), str(packaged["path"])], capture_output=True, text=True, timeout=300, env=packaged["env"]
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_deliver_reports_batch_item_failures(packaged):
    deliver = packaged["template"]["Resources"]["Deliver"]
    source = deliver["Properties"]["Events"]["DeliverSqsEventSource"]["Properties"]
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Queue is left as Chalice wrote it (merging a Fn::GetAtt over its Fn::Sub would leave two intrinsics)
    assert list(source["Queue"]) == ["Fn::Sub"]
    assert source["Queue"]["Fn::Sub"].endswith(":userhub-sync-dev-events")
    assert "EventsQueue" in deliver["DependsOn"]


def test_the_fleet_bound_is_a_parameter_with_lambdas_bounds_and_the_stages_default(packaged):
    from chalicelib.sqs_limits import DEFAULT_DELIVER_MAX_CONCURRENCY

    template = packaged["template"]
    source = template["Resources"]["Deliver"]["Properties"]["Events"]["DeliverSqsEventSource"]["Properties"]
    # the parameter replaces the number Chalice wrote from app.py's DELIVER_MAX_CONCURRENCY
    assert source["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "DeliverMaxConcurrency"}}
    parameter = template["Parameters"]["DeliverMaxConcurrency"]
    assert (parameter["MinValue"], parameter["MaxValue"]) == (2, 1000)
    assert parameter["Default"] == DEFAULT_DELIVER_MAX_CONCURRENCY


def test_the_alarms_and_dashboard_are_bootstraps_own_definitions(packaged):
    """The template carries exactly ops/alarms.py's alarms and dashboard (default thresholds, names by Stage)."""
    from userhub_sync.ops.alarms import AlarmKind, cloudformation_resources

    resources = packaged["template"]["Resources"]
    expected = cloudformation_resources()
    assert {name: resources[name] for name in expected} == expected
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert sorted(a["AlarmName"]["Fn::Sub"] for a in alarms) == sorted(
        f"userhub-sync-${{Stage}}-{k}" for k in AlarmKind
    )
    assert resources["Dashboard"]["Type"] == "AWS::CloudWatch::Dashboard"


def test_queues_bucket_and_permission(packaged):
    template = packaged["template"]
    resources, parameters = template["Resources"], template["Parameters"]
    config = json.loads((REPO / ".chalice" / "config.json").read_text())["stages"]["dev"]
    events, dead = resources["EventsQueue"]["Properties"], resources["DeadLetterQueue"]["Properties"]
    # names follow config.json for Stage=dev, so Chalice's event source points at this very queue
    assert events["QueueName"] == {"Fn::Sub": "userhub-sync-${Stage}-events"}
    assert parameters["Stage"]["Default"] == "dev"
    assert config["environment_variables"]["EVENTS_QUEUE_NAME"] == "userhub-sync-dev-events"
    assert events["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    count = parameters["MaxReceiveCount"]
    assert RetryPolicy().minimum_horizon(count["Default"]) >= 24 * 3600
    assert RetryPolicy().minimum_horizon(count["MinValue"]) >= 24 * 3600
    margin = Settings.model_fields["retention_margin_seconds"].default
    assert RetryPolicy().longest_horizon(count["MaxValue"]) + margin <= events["MessageRetentionPeriod"]
    deliver_timeout = config["lambda_functions"]["deliver"]["lambda_timeout"]
    assert parameters["DeliverVisibilityTimeout"]["Default"] == 6 * deliver_timeout
    assert dead["MessageRetentionPeriod"] > events["MessageRetentionPeriod"]
    assert events["SqsManagedSseEnabled"] is True and dead["SqsManagedSseEnabled"] is True
    bucket = resources["SnapshotBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values()) and bucket["BucketEncryption"]
    permission = resources["PostAuthCognitoPermission"]["Properties"]
    assert permission["Principal"] == "cognito-idp.amazonaws.com"
    assert "userpool/${UserPoolId}" in permission["SourceArn"]["Fn::Sub"]
    assert resources["PostAuth"]["Properties"]["Environment"]["Variables"]["EVENTS_QUEUE_URL"] == {"Ref": "EventsQueue"}
    # what `wire` sets: no START/END/REPORT lines for the trigger functions (ops/wire.py, step 4)
    from userhub_sync.ops.wire import LOGGING_CONFIG

    for name in ("PostAuth", "PostConfirmation"):
        assert resources[name]["Properties"]["LoggingConfig"] == LOGGING_CONFIG
    # CloudFormation cannot create SecureString parameters: referenced by name only
    assert not any(r.get("Type") == "AWS::SSM::Parameter" for r in resources.values())
    assert {"PostAuthArn", "EventsQueueUrl", "DeadLetterQueueUrl", "SnapshotBucketName"} <= set(template["Outputs"])
    # per-function least-privilege policies came from the policy files (autogen_policy: false)
    role = resources["PostAuthRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    actions = {a for s in role["Statement"] for a in s["Action"]}
    assert actions == {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage"}


def test_reconcile_keeps_its_schedule_and_handler(packaged):
    """app.py swaps the event class of `reconcile` (hand-made payloads); Chalice must still see a schedule."""
    reconcile = packaged["template"]["Resources"]["Reconcile"]["Properties"]
    assert reconcile["Handler"] == "app.reconcile"
    assert reconcile["Events"] == {
        "ReconcileEvent": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 3 * * ? *)"}}
    }


FUNCTION_ROLES = {  # the role Chalice makes per function -> (policy role, functions sharing its policy file)
    "PostAuthRole": ("post_auth", ["post_auth", "post_confirmation"]),
    "PostConfirmationRole": ("post_auth", ["post_auth", "post_confirmation"]),
    "DeliverRole": ("deliver", ["deliver"]),
    "ReconcileRole": ("reconcile", ["reconcile", "reconcile_continue"]),
    "ReconcileContinueRole": ("reconcile", ["reconcile", "reconcile_continue"]),
    "CaptureRole": ("capture", ["capture"]),
}


def test_no_placeholder_is_left_and_pool_and_connection_are_parameters(packaged):
    template = packaged["template"]
    assert "CHANGEME" not in json.dumps(template)  # config.json and the committed policy files still carry them
    parameters = template["Parameters"]
    # the same patterns the settings and the CLI enforce
    assert parameters["ConnectionId"]["AllowedPattern"] == CONNECTION_RE.pattern
    assert parameters["UserPoolId"]["AllowedPattern"] == POOL_ID_RE.pattern
    assert "Default" not in parameters["ConnectionId"] and "Default" not in parameters["UserPoolId"]
    resources = template["Resources"]
    functions = [name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"]
    assert len(functions) == 6
    for name in functions:
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables["USERHUB_CONNECTION_ID"] == {"Ref": "ConnectionId"}, name
        assert variables["USER_POOL_ID"] == {"Ref": "UserPoolId"}, name


def test_every_role_gets_the_policy_files_document_with_the_templates_arns(packaged):
    resources = packaged["template"]["Resources"]
    assert {name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"} == set(FUNCTION_ROLES)
    for name, (role, functions) in FUNCTION_ROLES.items():
        (policy,) = resources[name]["Properties"]["Policies"]
        assert policy["PolicyDocument"] == policies.cloudformation_policy(role, functions), name
    reconcile = resources["ReconcileRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (scan,) = [s for s in reconcile if s["Action"] == ["cognito-idp:ListUsers"]]
    assert scan["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:cognito-idp:${AWS::Region}:${AWS::AccountId}:userpool/${UserPoolId}"}
    ]


def test_functions_keep_the_names_the_policies_and_defaults_expect(packaged):
    """Named as `chalice deploy` names them, so log-group ARNs, sign-in recovery and the reconcile continuation
    (all derived from function names) hold on this path too."""
    resources = packaged["template"]["Resources"]
    names = {"PostAuth": "post_auth", "Deliver": "deliver", "Reconcile": "reconcile"}
    names |= {"PostConfirmation": "post_confirmation", "ReconcileContinue": "reconcile_continue", "Capture": "capture"}
    for logical, name in names.items():
        assert resources[logical]["Properties"]["FunctionName"] == {"Fn::Sub": f"userhub-sync-${{Stage}}-{name}"}
    statements = resources["ReconcileRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    [read_logs] = [s for s in statements if s["Action"] == ["logs:FilterLogEvents"]]
    groups = {r["Fn::Sub"].split(":log-group:")[1] for r in read_logs["Resource"]}
    assert groups == {
        f"/aws/lambda/userhub-sync-${{Stage}}-{f}{s}" for f in ("post_auth", "post_confirmation") for s in ("", ":*")
    }
