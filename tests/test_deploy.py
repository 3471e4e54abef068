"""Deploy proof: bootstrap → the real `chalice deploy --stage ci` → wire, against the moto server, then check.

`chalice deploy` runs unmodified in a subprocess (AWS_ENDPOINT_URL points it at the test's moto server over HTTP)
on a temporary copy of the project, so `.chalice/deployed/` and `.chalice/deployments/` never land in the repo.

No workaround is needed for moto: it takes every call `chalice deploy` makes (IAM roles and inline policies,
CreateFunction, CreateEventSourceMapping, UpdateEventSourceMapping on redeploy, the EventBridge rule and its
AddPermission), so nothing is stubbed. The suite reaches nothing beyond loopback, so the deploy packages an empty
requirements.txt by default (the zip's contents do not matter to the control-plane calls under test). With
USERHUB_DEPLOY_TEST_PYPI=1 it packages the real requirements.txt, which makes Chalice download Lambda's manylinux
wheels from PyPI (about 10 s): a check that every pinned requirement has a wheel for Lambda's platform.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from tests.support import (
    ADMIN_KEY,
    CUSTOMER_TRIGGERS,
    bootstrap,
    cli,
    cognito_statements,
    create_pool,
    describe_pool,
    run_chalice,
    settings_besides_triggers,
)

STAGE = "ci"


def chalice_deploy(project: Path) -> None:
    if os.environ.get("USERHUB_DEPLOY_TEST_PYPI") != "1":
        (project / "requirements.txt").write_text("")
    env = dict(os.environ)  # AWS_ENDPOINT_URL, region and moto's dummy credentials from the session fixture
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")
    output = run_chalice(project, "deploy", "--stage", STAGE, env=env, timeout=600)
    assert "Could not install dependencies" not in output, (
        "chalice could not fetch the wheels of requirements.txt (USERHUB_DEPLOY_TEST_PYPI=1 needs PyPI)"
    )


@pytest.mark.parametrize("project", [{"with_app": True}], indirect=True)
def test_bootstrap_chalice_deploy_wire(project):
    pool_id = create_pool()
    before = describe_pool(pool_id)

    boot = bootstrap(pool_id, STAGE, "--create-stage", "--max-concurrency", "9", "--create-trail")  # asserts exit 0
    assert ADMIN_KEY not in boot.output

    chalice_deploy(project)
    deployed = json.loads((project / ".chalice" / "deployed" / f"{STAGE}.json").read_text())
    functions = {r["name"]: r["lambda_arn"] for r in deployed["resources"] if r["resource_type"] == "lambda_function"}
    (event,) = [r for r in deployed["resources"] if r["resource_type"] == "sqs_event"]
    assert event["queue"] == f"userhub-sync-{STAGE}-events"

    lam = boto3.client("lambda")
    # app.py gives chalice deploy the fleet bound bootstrap wrote (DELIVER_MAX_CONCURRENCY)
    assert lam.get_event_source_mapping(UUID=event["event_uuid"])["ScalingConfig"] == {"MaximumConcurrency": 9}

    wired = cli("wire", "--stage", STAGE, "--post-confirmation")
    assert wired.exit_code == 0, wired.output

    assert lam.get_event_source_mapping(UUID=event["event_uuid"])["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]
    after = describe_pool(pool_id)
    assert after["LambdaConfig"] == {
        **CUSTOMER_TRIGGERS,
        "PostAuthentication": functions["post_auth"],
        "PostConfirmation": functions["post_confirmation"],
    }
    assert settings_besides_triggers(after) == settings_besides_triggers(before)
    for name in ("post_auth", "post_confirmation"):
        cognito = cognito_statements(functions[name])
        assert [s["Condition"]["ArnLike"]["AWS:SourceArn"] for s in cognito] == [after["Arn"]]

    # each function runs with its own role and exactly the policy file bootstrap wrote
    iam = boto3.client("iam")
    role = f"userhub-sync-{STAGE}-post_auth"
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document == json.loads((project / ".chalice" / f"policy-{STAGE}-post_auth.json").read_text())
    variables = lam.get_function_configuration(FunctionName=functions["post_auth"])["Environment"]["Variables"]
    assert variables["EVENTS_QUEUE_URL"].endswith(f"/userhub-sync-{STAGE}-events")

    # a later `chalice deploy` updates the mapping without FunctionResponseTypes: the setting survives
    chalice_deploy(project)
    assert lam.get_event_source_mapping(UUID=event["event_uuid"])["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]
    again = cli("wire", "--stage", STAGE, "--post-confirmation", "--json")
    assert again.exit_code == 0 and {s["status"] for s in json.loads(again.stdout)["steps"]} == {"ok"}

    status = cli("status", "--stage", STAGE, "--json", "--check")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["wiring"]["ok"] is True
    # the rule chalice deploy made is the one status checks (chalice's naming: <app>-<stage>-capture-event)
    capture = report["capture"]
    assert (capture["expected"], capture["live"], capture["rule_state"]) == (True, True, "ENABLED")
    assert capture["rule"] == f"userhub-sync-{STAGE}-capture-event"
