"""Capture's set-up and health over moto's CloudTrail, EventBridge and Lambda: `bootstrap` finds (or with
`--create-trail` makes) a trail that feeds EventBridge, and `status` says whether capture is live.

moto's GetEventSelectors returns no selectors for a fresh trail where AWS returns the default one (management
events, read and write); the code treats both as the default, so the tests set selectors explicitly where they
matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support import _zip, bootstrap, cli, create_pool, enable_mapping, fake_chalice_deploy, iam_enforced
from userhub_sync.ops import trail as trail_module
from userhub_sync.ops.aws import client
from userhub_sync.ops.stage import StageContext, load_stage
from userhub_sync.ops.trail import _capture_deployed, capture_status, check_trail, read_trails, records_cognito_writes

RULE = "userhub-sync-dev-capture-event"
OURS = "userhub-sync-dev-capture"  # what `--create-trail` makes for stage dev


def _trail_step(output: str) -> dict:
    [step] = [s for s in json.loads(output)["steps"] if s["resource"] == "capture trail"]
    return step


def _trail(name: str, *, region: str = "us-east-1", logging: bool = True, **kwargs) -> None:
    s3 = boto3.client("s3", region_name=region)
    bucket = f"{name}-logs"
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    cloudtrail = boto3.client("cloudtrail", region_name=region)
    cloudtrail.create_trail(Name=name, S3BucketName=bucket, **kwargs)
    if logging:
        cloudtrail.start_logging(Name=name)


def test_without_a_trail_bootstrap_warns_what_is_missing_and_still_succeeds(project):
    result = bootstrap(create_pool(), "dev", "--json")
    step = _trail_step(result.stdout)
    assert step["status"] == "warning"
    assert "no trail in us-east-1 or multi-Region" in step["detail"] and "--create-trail" in step["detail"]


def test_a_trail_that_does_not_log_or_drops_writes_is_named_with_what_it_lacks(project):
    _trail("paused-trail", logging=False)
    _trail("reads-only")
    boto3.client("cloudtrail").put_event_selectors(
        TrailName="reads-only", EventSelectors=[{"ReadWriteType": "ReadOnly", "IncludeManagementEvents": True}]
    )
    _trail("elsewhere", region="eu-west-1")  # a single-Region trail of another Region never counts
    step = _trail_step(bootstrap(create_pool(), "dev", "--json").stdout)
    assert step["status"] == "warning"
    assert "paused-trail (us-east-1): logging is off" in step["detail"]
    assert "reads-only (us-east-1): its selectors drop write management events from cognito-idp" in step["detail"]
    assert "elsewhere" not in step["detail"]


def test_a_multi_region_trail_of_another_region_counts(project):
    _trail("org-wide", region="eu-west-1", IsMultiRegionTrail=True)
    step = _trail_step(bootstrap(create_pool(), "dev", "--json").stdout)
    assert (step["status"], step["name"]) == ("ok", "org-wide")
    assert step["detail"].startswith("multi-Region, logging")


def test_create_trail_makes_a_logging_trail_with_a_scoped_bucket_policy_once(project):
    pool = create_pool()
    check = cli("bootstrap", "--stage", "dev", "--create-trail", "--check", "--json")
    assert _trail_step(check.stdout)["status"] == "missing"
    assert boto3.client("cloudtrail").describe_trails()["trailList"] == []

    created = _trail_step(bootstrap(pool, "dev", "--create-trail", "--json").stdout)
    assert (created["status"], created["name"]) == ("created", "userhub-sync-dev-capture")
    cloudtrail = boto3.client("cloudtrail")
    assert cloudtrail.get_trail_status(Name="userhub-sync-dev-capture")["IsLogging"] is True
    selectors = cloudtrail.get_event_selectors(TrailName="userhub-sync-dev-capture")["EventSelectors"]
    assert [(s["ReadWriteType"], s["IncludeManagementEvents"]) for s in selectors] == [("WriteOnly", True)]
    [trail] = cloudtrail.describe_trails(trailNameList=["userhub-sync-dev-capture"])["trailList"]
    bucket = trail["S3BucketName"]
    assert bucket == "userhub-sync-dev-trail-123456789012"
    policy = json.loads(boto3.client("s3").get_bucket_policy(Bucket=bucket)["Policy"])
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {"cloudtrail.amazonaws.com"}
    assert {s["Condition"]["StringEquals"]["aws:SourceArn"] for s in policy["Statement"]} == {trail["TrailARN"]}
    blocked = boto3.client("s3").get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(blocked.values())

    again = _trail_step(bootstrap(None, "dev", "--create-trail", "--json").stdout)
    assert (again["status"], again["name"]) == ("ok", "userhub-sync-dev-capture")
    assert len(cloudtrail.describe_trails()["trailList"]) == 1


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ({}, True),  # CloudTrail's default
        ({"EventSelectors": [{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}]}, True),
        ({"EventSelectors": [{"ReadWriteType": "All", "IncludeManagementEvents": False}]}, False),
        (
            {"AdvancedEventSelectors": [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}]}]},
            True,
        ),
        (
            {
                "AdvancedEventSelectors": [
                    {
                        "FieldSelectors": [
                            {"Field": "eventCategory", "Equals": ["Management"]},
                            {"Field": "eventSource", "NotEquals": ["cognito-idp.amazonaws.com"]},
                        ]
                    }
                ]
            },
            False,
        ),
        (
            {
                "AdvancedEventSelectors": [
                    {
                        "FieldSelectors": [
                            {"Field": "eventCategory", "Equals": ["Management"]},
                            {"Field": "readOnly", "Equals": ["true"]},
                        ]
                    }
                ]
            },
            False,
        ),
        ({"AdvancedEventSelectors": [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Data"]}]}]}, False),
    ],
)
def test_selectors_that_keep_or_drop_cognitos_write_events(selectors, expected):
    """The shapes GetEventSelectors returns; a pure function, since moto stores but does not apply selectors."""
    assert records_cognito_writes(selectors) is expected


def _deploy_capture(deployed: dict[str, str]) -> None:
    """What `chalice deploy` adds for capture: the function and its EventBridge rule (named as chalice names it)."""
    lam = boto3.client("lambda")
    role = lam.get_function(FunctionName=deployed["deliver"])["Configuration"]["Role"]
    lam.create_function(
        FunctionName="userhub-sync-dev-capture",
        Runtime="python3.11",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": _zip()},
    )
    pattern = {"source": ["aws.cognito-idp"], "detail-type": ["AWS API Call via CloudTrail"]}
    boto3.client("events").put_rule(Name=RULE, EventPattern=json.dumps(pattern), State="ENABLED")


def _capture(*extra: str) -> tuple[int, dict]:
    result = cli("status", "--stage", "dev", "--json", *extra)
    return result.exit_code, json.loads(result.stdout)["capture"]


def test_status_says_capture_is_live_only_with_a_logging_trail_and_the_rule_enabled(project):
    bootstrap(create_pool())
    deployed = fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    enable_mapping(deployed["uuid"])
    code, capture = _capture("--check")
    assert code == 0 and capture["expected"] is False  # no capture function deployed: not judged
    assert capture["rule_state"] == "missing" and capture["live"] is False

    _deploy_capture(deployed)
    code, capture = _capture("--check")
    assert code == 2 and capture["expected"] is True and capture["live"] is False
    assert capture["rule_state"] == "ENABLED" and capture["trail"]["ok"] is False
    assert capture["last_event_age_seconds"] is None and capture["last_event_source"].startswith("unknown")

    _trail("audit")
    code, capture = _capture("--check")
    assert code == 0 and capture["live"] is True and capture["trail"]["name"] == "audit"

    boto3.client("events").disable_rule(Name=RULE)
    code, capture = _capture("--check")
    assert code == 2 and capture["rule_state"] == "DISABLED" and capture["live"] is False
    plain = cli("status", "--stage", "dev")
    assert "capture: not live" in plain.stdout and f"rule {RULE}: DISABLED" in plain.stdout


def test_the_last_captured_events_age_comes_from_the_newest_capture_enqueued_datapoint(project):
    """On AWS the datapoints come from capture's EMF lines; moto ingests no EMF, so PutMetricData stands in."""
    from datetime import UTC, datetime, timedelta

    bootstrap(create_pool())
    cloudwatch = boto3.client("cloudwatch")
    for minutes_ago in (50, 20):
        cloudwatch.put_metric_data(
            Namespace="UserHubSync",
            MetricData=[
                {
                    "MetricName": "capture_enqueued",
                    "Dimensions": [{"Name": "service", "Value": "capture"}],
                    "Timestamp": datetime.now(UTC) - timedelta(minutes=minutes_ago),
                    "Value": 1,
                    "Unit": "Count",
                }
            ],
        )
    _, capture = _capture()
    assert capture["last_event_source"] == "cloudwatch, to the minute"
    # The newer point's minute: its bucket starts at most 60 s before the point (AWS aligns it to the minute, moto
    # starts it at the oldest point, 30 whole minutes earlier), and the point was 20 min old when put; `status` adds
    # its own run time, a few seconds (a minute of slack for a loaded machine). The older point would read 50 min.
    assert 20 * 60 <= capture["last_event_age_seconds"] <= 22 * 60


def _deployed_functions(capture: str) -> tuple[int, str]:
    """What app.py registers when Chalice imports it with CAPTURE set (a fresh interpreter: app.py reads its
    decorator arguments once, at import)."""
    code = "import app; print(sorted(e.name for e in app.app.event_sources))"
    env = {**os.environ, "CAPTURE": capture}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True
    )
    return done.returncode, done.stdout + done.stderr


def test_capture_off_deploys_no_capture_and_needs_no_trail(project, monkeypatch):
    assert _deployed_functions("on") == (0, "['capture', 'deliver', 'reconcile']\n")
    assert _deployed_functions("off") == (0, "['deliver', 'reconcile']\n")
    code, output = _deployed_functions("maybe")
    assert code != 0 and "CAPTURE must be on or off (or true/false, yes/no, 1/0), not 'maybe'" in output
    monkeypatch.setenv("CAPTURE", "off")
    step = _trail_step(bootstrap(create_pool(), "dev", "--json").stdout)
    assert (step["status"], step["name"]) == ("ok", "not needed")


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(None, True), ("", True), ("  ", True), ("On", True), ("yes", True), ("1", True), (" Off ", False), ("no", False)],
)
def test_capture_takes_every_spelling_the_docs_list(value: str | None, enabled: bool) -> None:
    """Unset, empty or blank means on (a blank value was refused although the docs call it the default)."""
    from chalicelib.capture_rule import capture_enabled

    assert capture_enabled(value) is enabled


def test_a_trail_read_in_its_home_region_gets_the_same_bounded_client_as_every_other_call() -> None:
    """A multi-Region trail is read where it lives: that client keeps the ops timeouts and retries (no 60 s read)."""
    from userhub_sync.ops.trail import _regional_cloudtrail

    reader = _regional_cloudtrail("eu-west-1")
    config = reader.meta.config
    assert reader.meta.region_name == "eu-west-1"
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (5, 30.0, 3)


def _describe_trails_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The DescribeTrails calls the trail module sends, counted by botocore's before-call hook on each client it makes
    (the calls still go to moto over HTTP)."""
    calls: list[str] = []
    make = trail_module.client

    def counted(service: str, **kwargs: Any) -> Any:
        made = make(service, **kwargs)
        made.meta.events.register("before-call.cloudtrail.DescribeTrails", lambda **_: calls.append(service))
        return made

    monkeypatch.setattr(trail_module, "client", counted)
    return calls


def test_each_bootstrap_reads_the_trails_once_whether_it_creates_fixes_or_finds_ours(project, monkeypatch):
    calls = _describe_trails_calls(monkeypatch)
    created = _trail_step(bootstrap(create_pool(), "dev", "--create-trail", "--json").stdout)
    assert (created["status"], len(calls)) == ("created", 1)
    boto3.client("cloudtrail").stop_logging(Name=OURS)
    fixed = _trail_step(bootstrap(None, "dev", "--create-trail", "--json").stdout)
    assert (fixed["status"], len(calls)) == ("fixed", 2)
    found = _trail_step(bootstrap(None, "dev", "--create-trail", "--json").stdout)
    assert (found["status"], len(calls)) == ("ok", 3)


def test_create_trail_puts_our_drifted_trail_right_in_place_and_says_fixed(project):
    assert _trail_step(bootstrap(create_pool(), "dev", "--create-trail", "--json").stdout)["status"] == "created"
    cloudtrail = boto3.client("cloudtrail")
    [made] = cloudtrail.describe_trails()["trailList"]
    cloudtrail.stop_logging(Name=OURS)
    cloudtrail.put_event_selectors(
        TrailName=OURS, EventSelectors=[{"ReadWriteType": "ReadOnly", "IncludeManagementEvents": True}]
    )
    boto3.client("s3").create_bucket(Bucket="moved-trail-logs")  # someone pointed our trail at another bucket
    cloudtrail.update_trail(Name=OURS, S3BucketName="moved-trail-logs")
    made["S3BucketName"] = "moved-trail-logs"
    drifted = _trail_step(bootstrap(None, "dev", "--json").stdout)
    assert drifted["status"] == "warning"
    assert f"{OURS} (us-east-1): logging is off and its selectors drop write management events" in drifted["detail"]
    checked = _trail_step(cli("bootstrap", "--stage", "dev", "--create-trail", "--check", "--json").stdout)
    assert checked["status"] == "would update" and checked["detail"].startswith("--create-trail would fix it.")

    fixed = _trail_step(bootstrap(None, "dev", "--create-trail", "--json").stdout)
    assert (fixed["status"], fixed["name"]) == ("fixed", OURS)
    assert fixed["detail"].endswith("logs in s3://moved-trail-logs")  # its own bucket, with no expiry we never set
    assert cloudtrail.get_trail_status(Name=OURS)["IsLogging"] is True
    selectors = cloudtrail.get_event_selectors(TrailName=OURS)["EventSelectors"]
    assert [(s["ReadWriteType"], s["IncludeManagementEvents"]) for s in selectors] == [("WriteOnly", True)]
    [after] = cloudtrail.describe_trails()["trailList"]  # the same trail, bucket and ARN: no second trail
    assert (after["TrailARN"], after["S3BucketName"]) == (made["TrailARN"], made["S3BucketName"])
    again = _trail_step(bootstrap(None, "dev", "--create-trail", "--json").stdout)
    assert (again["status"], again["name"]) == ("ok", OURS)


def test_a_trail_aws_refuses_to_show_is_still_reported_as_not_readable(project):
    _trail("audit")
    allow_describe = [{"Effect": "Allow", "Action": "cloudtrail:DescribeTrails", "Resource": "*"}]
    with iam_enforced(allow_describe):
        cloudtrail = client("cloudtrail")
        found = check_trail(cloudtrail, "us-east-1", read_trails(cloudtrail))
    assert (found.ok, found.trail) == (False, None)
    assert found.detail.startswith("capture gets no events: audit: not readable (403). Run `bootstrap")

    _trail("org-audit", IsOrganizationTrail=True)  # seen from a member account: its owner is trusted to keep it on
    with iam_enforced(allow_describe, user="member"):
        cloudtrail = client("cloudtrail")
        found = check_trail(cloudtrail, "us-east-1", read_trails(cloudtrail))
    assert (found.ok, found.trail) == (True, "org-audit")
    assert found.detail == "us-east-1, organization; status not readable here (403)"


def test_trails_aws_refuses_to_list_are_a_bootstrap_warning_and_a_status_detail(project):
    pool = create_pool()
    everything_but_trails = [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "cloudtrail:DescribeTrails", "Resource": "*"},
    ]
    with iam_enforced(everything_but_trails):
        step = _trail_step(bootstrap(pool, "dev", "--json").stdout)
        # capture_status itself: `status` as a whole meets moto's SignatureDoesNotMatch on Lambda's REST paths
        capture = capture_status(load_stage("dev"), "us-east-1")
    assert (step["status"], step["name"], step["detail"]) == ("warning", "?", "trails not readable (403)")
    assert (capture.trail.ok, capture.trail.detail) == (False, "trails not readable: 403")


def test_a_bug_while_judging_trails_is_a_traceback_not_a_status_line(project, monkeypatch):
    bootstrap(create_pool())
    _trail("audit")

    def broken(selectors: dict[str, Any]) -> bool:
        raise TypeError("a bug")

    # a programming error has to be planted: nothing in the code raises one on purpose
    monkeypatch.setattr(trail_module, "records_cognito_writes", broken)
    for args in (("bootstrap", "--stage", "dev", "--json"), ("status", "--stage", "dev", "--json")):
        result = cli(*args, env={"USERHUB_ADMIN_KEY": "unused-by-this-test"})
        assert isinstance(result.exception, TypeError), result.output


def test_whether_capture_is_deployed_is_no_when_aws_says_so_and_a_bug_when_the_code_has_one(project, monkeypatch):
    bootstrap(create_pool())
    ctx = load_stage("dev")
    assert _capture_deployed(ctx) is False  # moto's ResourceNotFoundException for GetFunction: not deployed

    def broken(self: StageContext, function: str) -> str:
        raise TypeError("a bug")

    # a programming error has to be planted: nothing in the code raises one on purpose
    monkeypatch.setattr(StageContext, "function_name", broken)
    with pytest.raises(TypeError, match="a bug"):
        _capture_deployed(ctx)
