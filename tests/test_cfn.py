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
from tests.ops_support import REPO

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
    run = subprocess.run(
        [
            str(BIN / "chalice"),
            "package",
            "--stage",
            "dev",
            "--merge-template",
            str(REPO / "infra" / "merge-template.json"),
            str(out),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
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
    # Queue is left as Chalice wrote it (merging over it would leave two intrinsics, chalice.md §4)
    assert list(source["Queue"]) == ["Fn::Sub"]
    assert source["Queue"]["Fn::Sub"].endswith(":userhub-sync-dev-events")
    assert "EventsQueue" in deliver["DependsOn"]


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
    assert RetryPolicy().minimum_horizon(count["MaxValue"]) < events["MessageRetentionPeriod"]
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
    # CloudFormation cannot create SecureString parameters: referenced by name only
    assert not any(r.get("Type") == "AWS::SSM::Parameter" for r in resources.values())
    assert {"PostAuthArn", "EventsQueueUrl", "DeadLetterQueueUrl", "SnapshotBucketName"} <= set(template["Outputs"])
    # per-function least-privilege policies came from the policy files (autogen_policy: false)
    role = resources["PostAuthRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    actions = {a for s in role["Statement"] for a in s["Action"]}
    assert actions == {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage"}


def test_reconcile_can_find_and_read_the_trigger_log_groups(packaged):
    """CloudFormation names the functions itself, so sign-in recovery is told the log groups, and may read them."""
    resources = packaged["template"]["Resources"]
    variables = resources["Reconcile"]["Properties"]["Environment"]["Variables"]
    assert variables["SIGNIN_RECOVERY_LOG_GROUPS"] == {
        "Fn::Sub": "/aws/lambda/${PostAuth},/aws/lambda/${PostConfirmation}"
    }
    policy = resources["SigninRecoveryLogsPolicy"]["Properties"]
    assert policy["Roles"] == [{"Ref": "ReconcileRole"}] and "ReconcileRole" in resources
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["logs:FilterLogEvents"]
    groups = {r["Fn::Sub"].split(":log-group:")[1] for r in statement["Resource"]}
    assert groups == {f"/aws/lambda/${{{f}}}{s}" for f in ("PostAuth", "PostConfirmation") for s in ("", ":*")}
