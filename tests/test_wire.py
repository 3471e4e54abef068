"""`userhub-sync wire`: ReportBatchItemFailures, the Cognito permission and the trigger, nothing else in the pool."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests.support import (
    CUSTOMER_TRIGGERS,
    OTHER_TRIGGER,
    bootstrap,
    cli,
    cognito_statements,
    create_pool,
    describe_pool,
    fake_chalice_deploy,
    settings_besides_triggers,
)
from userhub_sync.ops import wire


def deployed_stage(project: Path, *, record: bool = True) -> tuple[str, dict[str, str]]:
    """A customer's pool, the stage bootstrapped for it, and what `chalice deploy` leaves behind: ready for wire."""
    pool_id = create_pool()
    bootstrap(pool_id)
    return pool_id, fake_chalice_deploy(project, record=record)


def test_wire_sets_all_three_and_keeps_every_other_pool_setting(project):
    pool_id, deployed = deployed_stage(project)
    before = describe_pool(pool_id)

    result = cli("wire", "--stage", "dev", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True

    mapping = boto3.client("lambda").get_event_source_mapping(UUID=deployed["uuid"])
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    (statement,) = cognito_statements(deployed["post_auth"])
    assert statement["Action"] == "lambda:InvokeFunction"
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == before["Arn"]

    after = describe_pool(pool_id)
    assert after["LambdaConfig"] == {**CUSTOMER_TRIGGERS, "PostAuthentication": deployed["post_auth"]}
    # policies, schema, auto-verify, MFA, messages, tags...
    assert settings_besides_triggers(after) == settings_besides_triggers(before)
    assert after["Policies"]["PasswordPolicy"]["MinimumLength"] == 14
    assert after["AutoVerifiedAttributes"] == ["email"]
    assert any(a["Name"] == "custom:tenant" for a in after["SchemaAttributes"])


def test_wire_is_idempotent(project):
    _pool_id, deployed = deployed_stage(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    again = cli("wire", "--stage", "dev", "--json")
    assert again.exit_code == 0, again.output
    assert {step["status"] for step in json.loads(again.stdout)["steps"]} == {"ok"}
    assert len(cognito_statements(deployed["post_auth"])) == 1


def test_a_different_trigger_is_not_replaced_without_force(project):
    other = "arn:aws:lambda:us-east-1:123456789012:function:someone-elses-post-auth"
    pool_id = create_pool(post_auth=other)
    bootstrap(pool_id)
    deployed = fake_chalice_deploy(project)
    before = describe_pool(pool_id)

    refused = cli("wire", "--stage", "dev")
    assert refused.exit_code == 4
    assert other in refused.output and "--force" in refused.output
    assert describe_pool(pool_id) == before
    with pytest.raises(boto3.client("lambda").exceptions.ResourceNotFoundException):
        cognito_statements(deployed["post_auth"])  # nothing was changed, not even the permission
    mapping = boto3.client("lambda").get_event_source_mapping(UUID=deployed["uuid"])
    assert not mapping.get("FunctionResponseTypes")

    forced = cli("wire", "--stage", "dev", "--force")
    assert forced.exit_code == 0, forced.output
    assert "replaced" in forced.output
    after = describe_pool(pool_id)
    assert after["LambdaConfig"]["PostAuthentication"] == deployed["post_auth"]
    assert after["LambdaConfig"]["PreSignUp"] == OTHER_TRIGGER
    assert settings_besides_triggers(after) == settings_besides_triggers(before)


def test_post_confirmation_is_wired_on_request(project):
    pool_id, deployed = deployed_stage(project)
    result = cli("wire", "--stage", "dev", "--post-confirmation")
    assert result.exit_code == 0, result.output
    config = describe_pool(pool_id)["LambdaConfig"]
    assert config["PostConfirmation"] == deployed["post_confirmation"]
    assert config["PostAuthentication"] == deployed["post_auth"]
    assert len(cognito_statements(deployed["post_confirmation"])) == 1


def test_without_the_deployed_file_functions_and_mapping_are_found_by_name(project):
    pool_id, deployed = deployed_stage(project, record=False)
    result = cli("wire", "--stage", "dev")
    assert result.exit_code == 0, result.output
    mapping = boto3.client("lambda").get_event_source_mapping(UUID=deployed["uuid"])
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert describe_pool(pool_id)["LambdaConfig"]["PostAuthentication"] == deployed["post_auth"]


def test_dry_run_changes_nothing(project):
    pool_id, deployed = deployed_stage(project)
    before = describe_pool(pool_id)
    result = cli("wire", "--stage", "dev", "--dry-run")
    assert result.exit_code == 0 and "would set" in result.output
    assert describe_pool(pool_id) == before
    assert not boto3.client("lambda").get_event_source_mapping(UUID=deployed["uuid"]).get("FunctionResponseTypes")


def test_clear_errors_before_deploy_or_without_a_pool(project):
    bootstrap()
    no_pool = cli("wire", "--stage", "dev")
    assert no_pool.exit_code == 1 and "--user-pool-id" in no_pool.output
    not_deployed = cli("wire", "--stage", "dev", "--user-pool-id", create_pool())
    assert not_deployed.exit_code == 1 and "chalice deploy --stage dev" in not_deployed.output


def test_moto_resets_username_attributes_and_wire_reports_it(project):
    """A moto bug: update_user_pool drops UsernameAttributes, which AWS cannot change through UpdateUserPool at
    all. wire must notice (it describes the pool again) and fail loudly."""
    pool_id = create_pool(username_attributes=["email"])
    bootstrap(pool_id)
    fake_chalice_deploy(project)
    result = cli("wire", "--stage", "dev")
    assert result.exit_code == 3
    assert "UsernameAttributes" in result.output and "moto" in result.output
    assert "['email']" in result.output  # the diff shows before and after


def test_a_malformed_pool_id_is_refused_by_its_format(project):
    bootstrap()
    result = cli("wire", "--stage", "dev", "--user-pool-id", "not a pool id")
    assert result.exit_code == 64, result.output  # a usage error, before any AWS call
    assert "'not a pool id' is not a user pool id (like us-east-1_AbC123)" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_deprecated_validity_days_do_not_make_two_runs_disagree(project):
    """A pool with the deprecated AdminCreateUserConfig.UnusedAccountValidityDays (3) next to
    TemporaryPasswordValidityDays (7), which is the one in effect: UpdateUserPool cannot take both, so wire leaves
    the deprecated one out. That is not a pool change (exit 3): both runs exit 0."""
    pool_id = boto3.client("cognito-idp").create_user_pool(
        PoolName="legacy-pool",
        Policies={"PasswordPolicy": {"MinimumLength": 12, "TemporaryPasswordValidityDays": 7}},
        AdminCreateUserConfig={"AllowAdminCreateUserOnly": True, "UnusedAccountValidityDays": 3},
    )["UserPool"]["Id"]
    bootstrap(pool_id)
    deployed = fake_chalice_deploy(project)
    before = describe_pool(pool_id)
    assert before["AdminCreateUserConfig"]["UnusedAccountValidityDays"] == 3

    first = cli("wire", "--stage", "dev", "--json")
    assert first.exit_code == 0, first.output
    steps = {step["what"]: step for step in json.loads(first.stdout)["steps"]}
    note = steps["deprecated UnusedAccountValidityDays"]
    assert note["status"] == "ok" and "TemporaryPasswordValidityDays (7) applies" in note["detail"]
    second = cli("wire", "--stage", "dev", "--json")
    assert second.exit_code == first.exit_code == 0, second.output
    assert {step["status"] for step in json.loads(second.stdout)["steps"]} == {"ok"}

    after = describe_pool(pool_id)
    assert after["LambdaConfig"]["PostAuthentication"] == deployed["post_auth"]
    assert after["Policies"]["PasswordPolicy"]["TemporaryPasswordValidityDays"] == 7
    assert after["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True


def test_update_request_keeps_only_what_update_user_pool_accepts():
    cognito = boto3.client("cognito-idp", region_name="us-east-1")
    described = {
        "Id": "us-east-1_Abc",
        "Name": "pool",
        "Arn": "arn:...",
        "Status": "Enabled",
        "CreationDate": 1,
        "LastModifiedDate": 2,
        "SchemaAttributes": [],
        "UsernameAttributes": ["email"],
        "Domain": "d",
        "EstimatedNumberOfUsers": 3,
        "SmsConfigurationFailure": "x",
        "EmailConfigurationFailure": "y",
        "Policies": {"PasswordPolicy": {"MinimumLength": 12, "TemporaryPasswordValidityDays": 3}},
        "AdminCreateUserConfig": {"AllowAdminCreateUserOnly": True, "UnusedAccountValidityDays": 3},
        "AutoVerifiedAttributes": ["email"],
        "MfaConfiguration": "OPTIONAL",
        "LambdaConfig": {"PreSignUp": "arn:pre"},
        "DeviceConfiguration": {"ChallengeRequiredOnNewDevice": True, "SomethingNewAndReadOnly": 1},
    }
    request = wire.update_request(cognito, described, {"PreSignUp": "arn:pre", "PostAuthentication": "arn:post"})
    accepted = set(cognito.meta.service_model.operation_model("UpdateUserPool").input_shape.members)
    assert set(request) <= accepted
    assert request["UserPoolId"] == "us-east-1_Abc"
    assert request["Policies"] == described["Policies"] and request["MfaConfiguration"] == "OPTIONAL"
    assert request["AutoVerifiedAttributes"] == ["email"]
    assert request["DeviceConfiguration"] == {"ChallengeRequiredOnNewDevice": True}
    assert request["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}  # AWS refuses both validity keys
    assert request["LambdaConfig"] == {"PreSignUp": "arn:pre", "PostAuthentication": "arn:post"}


def test_diff_pool_finds_nested_changes():
    before = {"Policies": {"PasswordPolicy": {"MinimumLength": 14}}, "LambdaConfig": {"A": "1"}, "X": [1]}
    after = {"Policies": {"PasswordPolicy": {"MinimumLength": 8}}, "LambdaConfig": {"A": "2"}, "X": [1]}
    changes = wire.diff_pool(before, after, {"LambdaConfig"})
    assert [(c.path, c.before, c.after) for c in changes] == [("Policies.PasswordPolicy.MinimumLength", 14, 8)]


LOGGING_STEP = "{}: no START/END/REPORT lines (LoggingConfig)"


def _logging_config(function_arn: str) -> dict:
    return boto3.client("lambda").get_function_configuration(FunctionName=function_arn)["LoggingConfig"]


def _step(output: str, what: str) -> dict:
    [step] = [s for s in json.loads(output)["steps"] if s["what"] == what]
    return step


def test_wire_turns_off_the_trigger_functions_platform_lines_and_reports_drift(project):
    """START/END/REPORT were ≈300 bytes of CloudWatch Logs per sign-in (docs/PERFORMANCE.md, finding 4)."""
    _pool_id, deployed = deployed_stage(project)
    wanted = {"LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "WARN"}
    assert _logging_config(deployed["post_auth"])["LogFormat"] == "Text"  # as chalice deploy leaves it

    dry = cli("wire", "--stage", "dev", "--post-confirmation", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    step = _step(dry.stdout, LOGGING_STEP.format("post_auth"))
    assert step["status"] == "would set" and "(was LogFormat Text" in step["detail"]
    assert _logging_config(deployed["post_auth"])["LogFormat"] == "Text"

    wired = cli("wire", "--stage", "dev", "--post-confirmation", "--json")
    assert wired.exit_code == 0, wired.output
    for name in ("post_auth", "post_confirmation"):
        assert _step(wired.stdout, LOGGING_STEP.format(name))["status"] == "set"
        config = _logging_config(deployed[name])
        assert {k: config[k] for k in wanted} == wanted
        assert config["LogGroup"] == f"/aws/lambda/{deployed[name].rsplit(':', 1)[-1]}"  # the log group is kept

    # changed by hand: reported with what it was, and set back
    boto3.client("lambda").update_function_configuration(
        FunctionName=deployed["post_auth"], LoggingConfig={"SystemLogLevel": "INFO"}
    )
    fixed = cli("wire", "--stage", "dev", "--json")
    assert fixed.exit_code == 0, fixed.output
    step = _step(fixed.stdout, LOGGING_STEP.format("post_auth"))
    assert (
        step["status"] == "set"
        and "(was LogFormat JSON, ApplicationLogLevel INFO, SystemLogLevel INFO)" in (step["detail"])
    )
    assert _logging_config(deployed["post_auth"])["SystemLogLevel"] == "WARN"
    again = cli("wire", "--stage", "dev", "--json")
    assert _step(again.stdout, LOGGING_STEP.format("post_auth"))["status"] == "ok"


def test_keep_platform_logs_leaves_the_logging_config_alone(project):
    _pool_id, deployed = deployed_stage(project)
    result = cli("wire", "--stage", "dev", "--keep-platform-logs", "--json")
    assert result.exit_code == 0, result.output
    step = _step(result.stdout, LOGGING_STEP.format("post_auth"))
    assert step["status"] == "left as is" and "LogFormat Text" in step["detail"]
    assert _logging_config(deployed["post_auth"])["LogFormat"] == "Text"
    assert describe_pool(_pool_id)["LambdaConfig"]["PostAuthentication"] == deployed["post_auth"]  # the rest ran


def test_an_endpoint_without_logging_config_is_reported_and_not_changed(project, monkeypatch):
    from tests import moto_logging

    monkeypatch.setattr(moto_logging, "ENABLED", False)  # moto as it is: no LoggingConfig in its answers
    _pool_id, deployed = deployed_stage(project)
    result = cli("wire", "--stage", "dev", "--json")
    assert result.exit_code == 0, result.output
    step = _step(result.stdout, LOGGING_STEP.format("post_auth"))
    assert (step["status"], step["detail"]) == (
        "not supported",
        "the Lambda endpoint reports no LoggingConfig; nothing set",
    )
    lam = boto3.client("lambda")
    assert "LoggingConfig" not in lam.get_function_configuration(FunctionName=deployed["post_auth"])
