"""`userhub-sync status`: depths, oldest age, last reconcile, wiring; a table or JSON."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.ops_support import bootstrap, cli, create_pool, fake_chalice_deploy, make_project, queue_url


@pytest.fixture
def project(tmp_path, monkeypatch, moto_server):
    return make_project(tmp_path, monkeypatch, moto_server)


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

    fake_chalice_deploy(project)
    wiring = _status()["wiring"]
    assert wiring["deployed"] and not wiring["ok"]
    assert not wiring["event_source_mapping"]["ok"] and not wiring["trigger"]["ok"]
    assert not wiring["permission"]["ok"]

    assert cli("wire", "--stage", "dev").exit_code == 0
    wiring = _status()["wiring"]
    assert wiring["ok"] and wiring["event_source_mapping"]["ok"] and wiring["trigger"]["ok"]
    assert wiring["permission"]["ok"]


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
    fake_chalice_deploy(project)
    assert cli("wire", "--stage", "dev").exit_code == 0
    assert cli("reconcile", "--stage", "dev").exit_code == 0
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
