"""`userhub-sync status`: depths, oldest age, last reconcile, wiring; a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.delivery import RetryPolicy
from tests.support import (
    bootstrap,
    cli,
    create_pool,
    drain,
    enable_mapping,
    fake_chalice_deploy,
    queue_url,
    stage_variable_names,
)
from userhub_sync.local.moto import patched_environ
from userhub_sync.ops import stage as stage_module
from userhub_sync.ops import status as status_module
from userhub_sync.ops.durations import format_span

EVENTS = "userhub-sync-dev-events"


def _send(name: str, count: int) -> None:
    sqs = boto3.client("sqs")
    for i in range(count):
        sqs.send_message(QueueUrl=queue_url(name), MessageBody=json.dumps({"n": i}))


def _status(*extra: str) -> dict:
    result = cli("status", "--stage", "dev", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_depths_and_wiring_before_and_after_wire(project):
    pool_id = create_pool()
    bootstrap(pool_id)
    _send("userhub-sync-dev-events", 3)
    _send("userhub-sync-dev-dlq", 2)
    boto3.client("sqs").receive_message(
        QueueUrl=queue_url("userhub-sync-dev-events"), MaxNumberOfMessages=1, VisibilityTimeout=300
    )

    report = _status()
    assert report["events_queue"]["visible"] == 2 and report["events_queue"]["in_flight"] == 1
    assert report["dead_letter_queue"]["visible"] == 2
    assert report["wiring"] == {"ok": False, "deployed": False, "detail": report["wiring"]["detail"]}
    assert "chalice deploy" in report["wiring"]["detail"]
    assert report["healthy"] is False

    deployed = fake_chalice_deploy(project)
    wiring = _status()["wiring"]
    assert wiring["deployed"] and not wiring["ok"]
    assert not wiring["event_source_mapping"]["ok"] and not wiring["trigger"]["ok"]
    assert not wiring["permission"]["ok"]

    assert cli("wire", "--stage", "dev").exit_code == 0
    wiring = _status()["wiring"]
    assert wiring["trigger"]["ok"] and wiring["permission"]["ok"]
    # wired, but the mapping is still Disabled: Lambda is not polling, so not ok
    assert not wiring["ok"] and wiring["event_source_mapping"]["state"] == "Disabled"
    enable_mapping(deployed["uuid"])
    wiring = _status()["wiring"]
    assert wiring["ok"] and wiring["event_source_mapping"]["ok"]


def test_oldest_age_is_unknown_without_cloudwatch_unless_peeking(project):
    bootstrap()
    _send("userhub-sync-dev-events", 2)
    plain = _status()["events_queue"]
    assert plain["oldest_age_seconds"] is None and "--peek" in plain["oldest_age_source"]
    peeked = _status("--peek")["events_queue"]
    assert peeked["oldest_age_seconds"] is not None and peeked["oldest_age_seconds"] >= 0
    assert "peek" in peeked["oldest_age_source"]
    assert _status()["events_queue"]["visible"] == 2  # peeking left the messages visible


def test_last_reconcile_summary_and_its_absence(project):
    bootstrap()
    assert _status()["last_reconcile"]["status"] == "never"
    summary = {"finished_at": "2026-01-01T03:05:00Z", "scanned": 1200, "enqueued": 7, "deleted": 1}
    boto3.client("s3").put_object(
        Bucket="userhub-sync-dev-snapshots", Key="reconcile/last-run.json", Body=json.dumps(summary).encode()
    )
    assert _status()["last_reconcile"] == {"status": "ok", "summary": summary}
    table = cli("status", "--stage", "dev")
    assert table.exit_code == 0 and "scanned=1200" in table.output


def test_table_output_and_check_exit_code(project):
    bootstrap()
    _send("userhub-sync-dev-dlq", 1)
    result = cli("status", "--stage", "dev")
    assert result.exit_code == 0, result.output
    for text in ("status dev", "userhub-sync-dev-events", "userhub-sync-dev-dlq", "wiring", "needs attention"):
        assert text in result.output
    assert cli("status", "--stage", "dev", "--check").exit_code == 2


def test_missing_queues_are_shown(project):
    result = cli("status", "--stage", "dev", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["events_queue"] == {"name": "userhub-sync-dev-events", "exists": False}
    assert report["healthy"] is False


def test_last_reconcile_from_the_bucket_through_chalicelib(project):
    """With the real chalicelib.reconcile: the summary it stored under reconcile/last-run.json is shown."""
    bootstrap()
    assert _status()["last_reconcile"]["status"] == "never"
    summary = {"status": "complete", "scanned": 42, "enqueued": 3}
    boto3.client("s3").put_object(
        Bucket="userhub-sync-dev-snapshots", Key="reconcile/last-run.json", Body=json.dumps(summary).encode()
    )
    assert _status()["last_reconcile"] == {"status": "ok", "summary": summary}


def test_a_failed_reconcile_is_shown_next_to_the_last_complete_one_and_fails_check(project):
    """Real runs through `userhub-sync reconcile`; the failed one dies while claiming (its queue is gone)."""
    pool_id = create_pool()
    cognito = boto3.client("cognito-idp")
    for i in range(3):
        cognito.admin_create_user(UserPoolId=pool_id, Username=f"user{i}@example.com")
    bootstrap(pool_id)
    deployed = fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    assert cli("reconcile", "--stage", "dev").exit_code == 0
    events = queue_url(EVENTS)
    drain(events)  # as deliver would; later runs enqueue nothing (no user changes), so the mapping may be enabled
    enable_mapping(deployed["uuid"])
    healthy = _status("--check")
    assert healthy["healthy"] is True and healthy["last_reconcile"]["status"] == "ok"
    complete = healthy["last_reconcile"]["summary"]

    failed = cli("reconcile", "--stage", "dev", env={"EVENTS_QUEUE_NAME": "userhub-sync-dev-gone"})
    assert failed.exit_code == 1 and "GetQueueUrl" in failed.output

    result = cli("status", "--stage", "dev", "--json")
    report = json.loads(result.stdout)
    rec = report["last_reconcile"]
    assert rec["status"] == "failing" and report["healthy"] is False
    assert rec["last_complete"] == complete and rec["summary"]["status"] == "failed"
    assert rec["detail"].startswith("last complete run ") and " ago (" in rec["detail"]
    assert f"last run failed at {rec['summary']['finished_at']}: " in rec["detail"]
    assert "GetQueueUrl" in rec["detail"]
    assert cli("status", "--stage", "dev", "--check").exit_code == 2
    table = cli("status", "--stage", "dev")
    assert "last reconcile: failing" in table.output and "last complete run" in table.output
    assert "needs attention" in table.output

    assert cli("reconcile", "--stage", "dev").exit_code == 0  # recovered: healthy again
    assert cli("status", "--stage", "dev", "--check").exit_code == 0


def test_a_stopped_reconcile_shows_the_last_complete_run_and_stays_healthy(project):
    bootstrap()
    s3 = boto3.client("s3")
    complete = {"status": "complete", "finished_at": "2026-01-01T03:05:00+00:00", "scanned": 9}
    stopped = {"status": "stopped", "finished_at": "2026-01-02T03:05:00+00:00", "scanned": 4}
    for key, summary in (("reconcile/last-complete.json", complete), ("reconcile/last-run.json", stopped)):
        s3.put_object(Bucket="userhub-sync-dev-snapshots", Key=key, Body=json.dumps(summary).encode())
    rec = _status()["last_reconcile"]
    assert rec["status"] == "ok" and rec["summary"] == stopped and rec["last_complete"] == complete
    assert rec["detail"].startswith("last complete run ") and "(2026-01-01T03:05:00+00:00)" in rec["detail"]
    assert "last run stopped at 2026-01-02T03:05:00+00:00" in rec["detail"]


def _healthy_stage(project) -> dict[str, str]:
    """Bootstrapped, deployed, wired, mapping enabled: `status --check` has nothing to flag."""
    bootstrap(create_pool())
    deployed = fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    enable_mapping(deployed["uuid"])
    return deployed


def _line(output: str, prefix: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(prefix))


def test_check_flags_a_disabled_mapping_and_plain_status_shows_its_state(project):
    deployed = _healthy_stage(project)
    healthy = cli("status", "--stage", "dev", "--check")
    assert healthy.exit_code == 0, healthy.output
    assert "state=Enabled" in _line(healthy.stdout, "│ event_source_mapping")

    enable_mapping(deployed["uuid"], enabled=False)
    flagged = cli("status", "--stage", "dev", "--check")
    assert flagged.exit_code == 2, flagged.output
    row = _line(flagged.stdout, "│ event_source_mapping")
    assert "state is Disabled, not Enabled" in row and f"--uuid {deployed['uuid']} --enabled" in row
    plain = cli("status", "--stage", "dev")
    assert plain.exit_code == 0 and "state is Disabled" in plain.stdout  # shown without --check too


def test_the_mapping_is_found_on_the_stage_queue_as_wire_finds_it(project):
    """deliver also has a mapping on another queue and no deployed file records the UUID: status must judge the
    mapping on the stage's events queue (as wire does), not give up on "2 SQS mappings"."""
    bootstrap(create_pool())
    deployed = fake_chalice_deploy(project, record=False)
    sqs, lam = boto3.client("sqs"), boto3.client("lambda")
    other = sqs.create_queue(QueueName="someone-elses-queue")["QueueUrl"]
    other_arn = sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lam.create_event_source_mapping(EventSourceArn=other_arn, FunctionName=deployed["deliver"], Enabled=False)
    assert cli("wire", "--stage", "dev").exit_code == 0
    enable_mapping(deployed["uuid"])

    result = cli("status", "--stage", "dev", "--check", "--json")
    assert result.exit_code == 0, result.output
    mapping = json.loads(result.stdout)["wiring"]["event_source_mapping"]
    assert mapping["uuid"] == deployed["uuid"] and mapping["state"] == "Enabled"

    lam.update_event_source_mapping(UUID=deployed["uuid"], FunctionResponseTypes=[])
    missing = cli("status", "--stage", "dev", "--check", "--json")
    assert missing.exit_code == 2
    detail = json.loads(missing.stdout)["wiring"]["event_source_mapping"]["detail"]
    assert "lacks ReportBatchItemFailures" in detail and "userhub-sync wire" in detail


def test_check_flags_messages_waiting_with_nothing_consuming(project):
    deployed = _healthy_stage(project)
    enable_mapping(deployed["uuid"], enabled=False)
    _send(EVENTS, 3)  # the mapping is disabled, so moto delivers nothing by itself
    result = cli("status", "--stage", "dev", "--check", "--json")
    assert result.exit_code == 2
    backlog = json.loads(result.stdout)["backlog"]
    assert backlog["ok"] is False and backlog["visible"] == 3 and backlog["mapping_state"] == "Disabled"
    assert "nothing consumes them" in backlog["detail"]
    table = cli("status", "--stage", "dev")
    assert "backlog: stalled: 3 message(s) wait and deliver's mapping is Disabled" in table.stdout


def test_check_flags_a_growing_backlog_that_an_enabled_mapping_does_not_drain(project):
    """moto's mapping only acts inside SendMessage, so once enabled after the sends it behaves like a mapping
    that stopped polling: 2 visible now, 3 more becoming visible within the sample (DelaySeconds), none in flight."""
    deployed = _healthy_stage(project)
    sqs = boto3.client("sqs")
    enable_mapping(deployed["uuid"], enabled=False)
    for i in range(5):
        sqs.send_message(QueueUrl=queue_url(EVENTS), MessageBody=json.dumps({"n": i}), DelaySeconds=0 if i < 2 else 1)
    enable_mapping(deployed["uuid"])
    result = cli("status", "--stage", "dev", "--check", "--json", "--sample-seconds", "2")
    assert result.exit_code == 2, result.output
    backlog = json.loads(result.stdout)["backlog"]
    assert (backlog["ok"], backlog["visible"], backlog["sampled_visible"]) == (False, 2, 5)
    assert "none in flight" in backlog["detail"] and backlog["mapping_state"] == "Enabled"

    # messages in flight mean something is consuming: no sample, no flag
    sqs.receive_message(QueueUrl=queue_url(EVENTS), MaxNumberOfMessages=1, VisibilityTimeout=300)
    consumed = json.loads(cli("status", "--stage", "dev", "--json", "--sample-seconds", "2").stdout)["backlog"]
    assert consumed["ok"] is True and consumed["sampled_visible"] is None


def test_check_flags_a_retention_shorter_than_the_retry_schedule(project):
    _healthy_stage(project)
    sqs = boto3.client("sqs")
    sqs.set_queue_attributes(QueueUrl=queue_url(EVENTS), Attributes={"MessageRetentionPeriod": str(86400)})
    result = cli("status", "--stage", "dev", "--check")
    assert result.exit_code == 2, result.output
    line = _line(result.stdout, "retention:")
    assert line.startswith("retention: too short: ") and format_span(RetryPolicy().longest_horizon(13)) in line
    assert "margin 1h 00m" in line and "retention of 1d 00h 00m" in line and "up to 14d" in line
    report = json.loads(cli("status", "--stage", "dev", "--json").stdout)
    assert report["retention"]["ok"] is False and report["retention"]["max_receive_count"] == 13


def _count_deployed_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap `read_deployed` in every module of the CLI that looks it up; the list names each caller's module.

    Wrapping each module's own name is the only way to count: `from userhub_sync.ops.stage import read_deployed`
    binds the function in each importing module, so patching the stage module alone misses those calls, and the
    file itself is read with Path.read_text, which every other file read of the command shares.
    """
    reads: list[str] = []
    original = stage_module.read_deployed
    for name, module in list(sys.modules.items()):
        if name.startswith("userhub_sync") and getattr(module, "read_deployed", None) is original:

            def counted(project_dir: Path, stage: str, _name: str = name) -> Any:
                reads.append(_name)
                return original(project_dir, stage)

            monkeypatch.setattr(module, "read_deployed", counted)
    return reads


@pytest.mark.parametrize("record", [True, False], ids=["deployed-file", "function-names"])
def test_the_wiring_check_reads_the_deployed_file_once_and_names_its_source(project, monkeypatch, record):
    bootstrap(create_pool())
    fake_chalice_deploy(project, record=record)
    expected = str(project / ".chalice" / "deployed" / "dev.json") if record else "function names"
    assert _status()["wiring"]["source"] == expected

    reads = _count_deployed_reads(monkeypatch)
    with patched_environ(dict.fromkeys(stage_variable_names())):  # load_stage writes the stage into os.environ
        wiring = status_module.wiring_status(stage_module.load_stage("dev", project))
    assert wiring.deployed and wiring.source == expected
    assert len(reads) == 1, reads


def test_an_unreadable_pool_is_reported_on_the_trigger_and_the_permission(project):
    pool_id = create_pool()
    bootstrap(pool_id)
    fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    boto3.client("cognito-idp").delete_user_pool(UserPoolId=pool_id)

    wiring = _status()["wiring"]
    assert wiring["trigger"] == wiring["permission"] == {"ok": False, "detail": wiring["trigger"]["detail"]}
    detail = wiring["trigger"]["detail"]
    assert detail.startswith("ResourceNotFoundException: ") and "DescribeUserPool" in detail
    assert wiring["ok"] is False and wiring["event_source_mapping"]["uuid"]


def test_a_programming_error_in_the_pool_checks_is_not_turned_into_a_status_line(project, monkeypatch):
    bootstrap(create_pool())
    fake_chalice_deploy(project)

    # mocked: a bug in our own code cannot be provoked through moto; this TypeError stands for one
    def broken(*_args: Any, **_kwargs: Any) -> bool:
        raise TypeError("a bug in the permission check")

    monkeypatch.setattr(status_module, "has_cognito_permission", broken)
    result = cli("status", "--stage", "dev", "--json")
    assert isinstance(result.exception, TypeError), result.output
    assert "a bug in the permission check" in str(result.exception)
