"""Invoking the scheduled reconcile by hand, as docs/RECONCILE.md documents it, through the Chalice-wrapped handler.

Chalice's schedule wrapper used to build a CloudWatchEvent from the raw event and fail with KeyError('version') on
anything but a full EventBridge envelope. Each documented payload is driven through `app.reconcile` (the object Lambda
calls) and through Chalice's own test client, over moto and the real events queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.local import LambdaContext
from chalice.test import Client

from chalicelib import reconcile
from chalicelib.reconcile import read_last_summary
from tests.support import CONNECTION_ID
from tests.test_reconcile import BUCKET, Harness, build_harness, exactly_once, scheduled_event

DOC = Path(__file__).resolve().parents[1] / "docs" / "RECONCILE.md"

# What `sam local generate-event cloudwatch scheduled-event` prints with its defaults (aws-sam-cli,
# samcli/lib/generated_sample_events/events/cloudwatch/ScheduledEvent.json): no "version" key.
SAM_SCHEDULED_EVENT: dict[str, Any] = {
    "id": "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "1970-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/ExampleRule"],
    "detail": {},
}
HAND_PAYLOADS: dict[str, Any] = {"{}": {}, '{"dry_run": true}': {"dry_run": True}, '{"full": true}': {"full": True}}
PAYLOADS = {**HAND_PAYLOADS, "sam scheduled-event": SAM_SCHEDULED_EVENT}


@pytest.fixture
def harness(aws) -> Iterator[Harness]:
    yield from build_harness()


def drain(aws) -> list[str]:
    """Usernames of every message on the real events queue, received and deleted."""
    names: list[str] = []
    while True:
        got = aws.sqs.receive_message(QueueUrl=aws.queues.events_url, MaxNumberOfMessages=10, VisibilityTimeout=60)
        messages = got.get("Messages") or []
        if not messages:
            return names
        names += [json.loads(m["Body"])["username"] for m in messages]
        aws.sqs.delete_message_batch(
            QueueUrl=aws.queues.events_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def via_app(payload: Any) -> Any:
    import app

    reconcile.reset_clients()
    try:
        return app.reconcile(payload, LambdaContext("reconcile", 1024))
    finally:
        reconcile.reset_clients()


def via_test_client(payload: Any, project: Path, pool_id: str) -> Any:
    """Chalice's test client, with a stage whose variables are the test's (it copies them into os.environ)."""
    import app

    (project / ".chalice").mkdir(parents=True, exist_ok=True)
    variables = {
        "USER_POOL_ID": pool_id,
        "SNAPSHOT_BUCKET": BUCKET,
        "EVENTS_QUEUE_NAME": "test-events",
        "USERHUB_CONNECTION_ID": CONNECTION_ID,
    }
    config = {"version": "2.0", "app_name": "userhub-sync", "stages": {"test": {"environment_variables": variables}}}
    (project / ".chalice" / "config.json").write_text(json.dumps(config))
    reconcile.reset_clients()
    try:
        with Client(app.app, stage_name="test", project_dir=str(project)) as client:
            return client.lambda_.invoke("reconcile", payload).payload
    finally:
        reconcile.reset_clients()


def test_the_documented_payloads_are_exactly_the_tested_ones() -> None:
    text = DOC.read_text()
    section = text[text.index("## Invoking the Lambda by hand") : text.index("## Command line")]
    in_table = set(re.findall(r"^\| `(\{.*?\})` \|", section, re.M))
    in_commands = set(re.findall(r"--payload '(\{.*?\})'", section))
    piped = set(re.findall(r"echo '(\{.*?\})' \| chalice invoke", section))
    assert in_table == in_commands == set(HAND_PAYLOADS), (in_table, in_commands)
    assert piped and piped <= set(HAND_PAYLOADS)
    assert {k: json.loads(k) for k in HAND_PAYLOADS} == HAND_PAYLOADS
    assert "sam local generate-event cloudwatch scheduled-event" in section
    assert "version" not in SAM_SCHEDULED_EVENT


@pytest.mark.parametrize("via", ["app.reconcile", "chalice test client"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_every_documented_payload_runs_through_the_schedule_handler(
    harness: Harness, aws, tmp_path: Path, payload: str, via: str
) -> None:
    names = harness.pool.seed(30)
    assert via_app(scheduled_event())["status"] == "complete"  # the real EventBridge envelope still works
    assert exactly_once(drain(aws)) == set(names)
    committed = harness.snapshot_etag()
    harness.pool.change(names[:2])

    event = PAYLOADS[payload]
    summary = via_app(event) if via == "app.reconcile" else via_test_client(event, tmp_path, harness.pool.id)

    sent = drain(aws)
    if payload == '{"dry_run": true}':
        assert summary["status"] == "dry_run" and summary["dry_run"] is True
        assert set(summary["would_enqueue"]["changed"]) == set(names[:2])
        assert sent == [] and harness.snapshot_etag() == committed, "a dry run sends and writes nothing"
        assert read_last_summary(harness.s3, BUCKET).status == "complete"  # type: ignore[union-attr]
    elif payload == '{"full": true}':
        assert (summary["status"], summary["full"], summary["enqueued"]) == ("complete", True, 30)
        assert exactly_once(sent) == set(names)
    else:  # {} and SAM's event: the nightly run
        assert (summary["status"], summary["full"], summary["changed"]) == ("complete", False, 2)
        assert exactly_once(sent) == set(names[:2])
    assert harness.record() is None


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        ({"dry-run": True}, "unknown key(s) dry-run"),
        ({"dry_run": True, "fll": True}, "unknown key(s) fll"),
        ({"full": "sometimes"}, "full: Input should be a valid boolean"),
        (["dry_run"], "expected a JSON object, got list"),
        ("full", "expected a JSON object, got str"),
    ],
)
def test_a_payload_it_does_not_understand_is_refused_before_anything_runs(
    harness: Harness, aws, event: Any, complaint: str
) -> None:
    harness.pool.seed(5)
    with pytest.raises(reconcile.ReconcileError, match=re.escape(complaint)):
        via_app(event)
    assert drain(aws) == [] and harness.snapshot_etag() is None and harness.record() is None
