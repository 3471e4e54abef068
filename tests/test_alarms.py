"""The stage's CloudWatch alarms and dashboard (moto's CloudWatch over HTTP): created by `bootstrap`, idempotent,
drift reported and fixed on request, thresholds as options, states shown by `status`, ALARM fails `status --check`.

moto does not evaluate alarms (it ingests no EMF either), so a firing alarm is made with SetAlarmState, as an
operator would test an alarm's actions on AWS."""

from __future__ import annotations

import json

import boto3

from tests.support import bootstrap, cli, config, create_pool, enable_mapping, fake_chalice_deploy
from userhub_sync.ops.alarms import AlarmKind

PREFIX = "userhub-sync-dev"


def _alarms() -> dict[str, dict]:
    names = [f"{PREFIX}-{kind}" for kind in AlarmKind]
    found = boto3.client("cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"]
    return {a["AlarmName"].removeprefix(PREFIX + "-"): a for a in found}


def _steps(output: str, resource: str) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads(output)["steps"] if s["resource"] == resource}


def test_bootstrap_creates_the_five_alarms_and_the_dashboard_then_changes_nothing(project):
    first = bootstrap(create_pool(), "dev", "--json")
    assert {s["status"] for s in _steps(first.stdout, "alarm").values()} == {"created"}
    alarms = _alarms()
    assert set(alarms) == {str(kind) for kind in AlarmKind}

    dlq = alarms["dlq-not-empty"]
    assert (dlq["Namespace"], dlq["MetricName"], dlq["Dimensions"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        [{"Name": "QueueName", "Value": "userhub-sync-dev-dlq"}],
    )
    assert (dlq["ComparisonOperator"], dlq["Threshold"]) == ("GreaterThanThreshold", 0.0)
    oldest = alarms["oldest-message"]
    assert oldest["Dimensions"][0]["Value"] == "userhub-sync-dev-events" and oldest["Threshold"] == 3600.0
    enqueue = alarms["enqueue-failures"]
    assert (enqueue["Namespace"], enqueue["MetricName"]) == ("UserHubSync", "enqueue_failed")
    assert enqueue["Dimensions"] == [{"Name": "service", "Value": "post_auth"}]
    share = alarms["userhub-429-share"]
    metrics = {m["Id"]: m for m in share["Metrics"]}
    assert metrics["share"]["Expression"] == "100 * FILL(throttled, 0) / calls"
    assert metrics["throttled"]["MetricStat"]["Metric"]["MetricName"] == "userhub_429"
    assert metrics["calls"]["MetricStat"]["Metric"]["MetricName"] == "userhub_calls"
    assert share["Threshold"] == 10.0
    reconcile = alarms["no-completed-reconcile"]
    assert (reconcile["MetricName"], reconcile["Period"] * reconcile["EvaluationPeriods"]) == (
        "reconcile_completed",
        26 * 3600,
    )
    assert (reconcile["ComparisonOperator"], reconcile["TreatMissingData"]) == ("LessThanThreshold", "breaching")

    body = json.loads(boto3.client("cloudwatch").get_dashboard(DashboardName=PREFIX)["DashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert titles == [
        "Queue depth",
        "Oldest message age (s)",
        "Delivery per minute",
        "UserHub 429 share (%)",
        "Concurrency",
        "Sign-ins enqueued per minute",
    ]
    shown = json.dumps(body)
    assert "concurrency_limit" in shown and "userhub_429" in shown and "userhub-sync-dev-events" in shown
    # post_auth writes no metrics line on a plain success: the count is Lambda's own, by metric math
    enqueued = body["widgets"][5]["properties"]["metrics"]
    [math] = [m[0] for m in enqueued if isinstance(m[0], dict)]
    series = {m[-1]["id"]: m[:-1] for m in enqueued if isinstance(m[0], str)}
    assert math["label"] == "sign-ins enqueued"
    terms = math["expression"].replace(" ", "").split("-")
    assert [t.removeprefix("FILL(").removesuffix(",0)") for t in terms[0].split("+")] == ["invoked", "confirmInvoked"]
    subtracted = [series[t.removeprefix("FILL(").removesuffix(",0)")] for t in terms[1:]]
    assert subtracted == [
        ["AWS/Lambda", "Errors", "FunctionName", "userhub-sync-dev-post_auth"],
        ["AWS/Lambda", "Errors", "FunctionName", "userhub-sync-dev-post_confirmation"],
        ["UserHubSync", "enqueue_failed", "service", "post_auth"],
        ["UserHubSync", "trigger_ignored", "service", "post_auth"],
    ]
    assert series["invoked"] == ["AWS/Lambda", "Invocations", "FunctionName", "userhub-sync-dev-post_auth"]
    assert series["confirmInvoked"][-1] == "userhub-sync-dev-post_confirmation"
    assert all(m[-1]["stat"] == "Sum" for m in enqueued if isinstance(m[0], str))

    second = bootstrap(None, "dev", "--json")
    assert {s["status"] for s in _steps(second.stdout, "alarm").values()} == {"ok"}
    assert _steps(second.stdout, "dashboard")[PREFIX]["status"] == "ok"
    assert cli("bootstrap", "--stage", "dev", "--check").exit_code == 0


def test_thresholds_are_options_kept_in_config_and_drift_is_reported_then_fixed(project):
    topic = "arn:aws:sns:us-east-1:123456789012:ops"
    bootstrap(
        create_pool(),
        "dev",
        *("--alarm-oldest-age", "30m", "--alarm-429-percent", "25", "--alarm-reconcile-hours", "50"),
        *("--alarm-action", topic),
    )
    alarms = _alarms()
    assert alarms["oldest-message"]["Threshold"] == 1800.0 and alarms["userhub-429-share"]["Threshold"] == 25.0
    assert alarms["no-completed-reconcile"]["EvaluationPeriods"] == 50
    assert all(a["AlarmActions"] == [topic] and a["OKActions"] == [topic] for a in alarms.values())
    variables = config(project)["stages"]["dev"]["environment_variables"]
    assert (variables["ALARM_OLDEST_AGE_SECONDS"], variables["ALARM_ACTIONS"]) == ("1800", topic)

    # someone edits an alarm and the dashboard by hand: reported, not undone
    cloudwatch = boto3.client("cloudwatch")
    edited = {k: v for k, v in alarms["oldest-message"].items() if k in ("Namespace", "MetricName", "Dimensions")}
    cloudwatch.put_metric_alarm(
        AlarmName=f"{PREFIX}-oldest-message",
        **edited,
        Statistic="Maximum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=99999.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.put_dashboard(DashboardName=PREFIX, DashboardBody=json.dumps({"widgets": []}))
    drifted = cli("bootstrap", "--stage", "dev", "--json")
    assert drifted.exit_code == 2, drifted.output
    step = _steps(drifted.stdout, "alarm")[f"{PREFIX}-oldest-message"]
    assert step["status"] == "drift" and "Threshold" in step["detail"]
    assert _steps(drifted.stdout, "dashboard")[PREFIX]["status"] == "drift"
    assert _alarms()["oldest-message"]["Threshold"] == 99999.0

    fixed = cli("bootstrap", "--stage", "dev", "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    assert _steps(fixed.stdout, "alarm")[f"{PREFIX}-oldest-message"]["status"] == "fixed"
    assert _alarms()["oldest-message"]["Threshold"] == 1800.0  # the stage's threshold, kept in config.json

    # the topic is taken out of config.json: the alarms still notifying it is drift too
    path = project / ".chalice" / "config.json"
    data = json.loads(path.read_text())
    del data["stages"]["dev"]["environment_variables"]["ALARM_ACTIONS"]
    path.write_text(json.dumps(data))
    quiet = cli("bootstrap", "--stage", "dev", "--json")
    assert quiet.exit_code == 2 and "AlarmActions" in _steps(quiet.stdout, "alarm")[f"{PREFIX}-dlq-not-empty"]["detail"]
    assert json.loads(cloudwatch.get_dashboard(DashboardName=PREFIX)["DashboardBody"])["widgets"]


def test_bad_thresholds_are_refused_before_anything_is_created(project):
    refused = cli("bootstrap", "--stage", "dev", env={"ALARM_ACTIONS": "my-topic", "USERHUB_ADMIN_KEY": "k" * 20})
    assert refused.exit_code != 0 and "alarm actions must be ARNs" in refused.output
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
    assert boto3.client("cloudwatch").describe_alarms()["MetricAlarms"] == []


def test_status_shows_each_alarms_state_and_check_fails_on_alarm(project):
    bootstrap(create_pool())
    deployed = fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    enable_mapping(deployed["uuid"])
    healthy = cli("status", "--stage", "dev", "--json", "--check")
    assert healthy.exit_code == 0, healthy.output
    states = json.loads(healthy.stdout)["alarms"]["states"]
    assert set(states) == {f"{PREFIX}-{kind}" for kind in AlarmKind}
    assert {s["state"] for s in states.values()} == {"OK"}  # moto starts every alarm at OK, never evaluates it

    boto3.client("cloudwatch").set_alarm_state(
        AlarmName=f"{PREFIX}-userhub-429-share", StateValue="ALARM", StateReason="40 % of calls answered 429"
    )
    flagged = cli("status", "--stage", "dev", "--check")
    assert flagged.exit_code == 2, flagged.output
    row = next(line for line in flagged.stdout.splitlines() if "userhub-429-share" in line)
    assert "ALARM" in row and "40 % of calls answered 429" in row
    assert cli("status", "--stage", "dev").exit_code == 0  # shown without --check, not an error


def test_status_lists_alarms_bootstrap_has_not_created_as_missing(project):
    bootstrap(create_pool())
    boto3.client("cloudwatch").delete_alarms(AlarmNames=[f"{PREFIX}-dlq-not-empty"])
    states = json.loads(cli("status", "--stage", "dev", "--json").stdout)["alarms"]["states"]
    assert states[f"{PREFIX}-dlq-not-empty"]["state"] == "missing"
