"""capture's handler, to the letter: what it returns for a captured change, the time it keeps (an offset is an
instant, not a label), and its one SQS client per environment, so a process that points it at another events queue
sends there. SQS is moto over HTTP.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from chalicelib import capture
from chalicelib.messages import CaptureMessage
from tests.support import POOL_ID, receive_all
from tests.test_capture import record
from userhub_sync.local.moto import patched_environ

SUB = "0b1c2d3e-aaaa-bbbb-cccc-000000000001"


def test_a_captured_change_returns_its_event_id_and_the_sqs_message_id(aws) -> None:
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    result = capture.handle_capture_event(event, None)
    [queued] = receive_all(aws.sqs, aws.queues.events_url)
    assert result == {"captured": True, "event_id": event["detail"]["eventID"], "sqs_message_id": queued["MessageId"]}


def test_an_event_time_with_an_offset_is_kept_as_the_same_instant() -> None:
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    event["detail"]["eventTime"] = "2026-11-29T14:00:00+02:00"
    change = capture.read_change(event, POOL_ID)
    assert isinstance(change, CaptureMessage)
    assert change.event_time == datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_an_event_time_without_a_zone_is_read_as_utc() -> None:
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    event["detail"]["eventTime"] = "2026-11-29T12:00:00"
    change = capture.read_change(event, POOL_ID)
    assert isinstance(change, CaptureMessage) and change.event_time == datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_pointing_the_handler_at_another_events_queue_sends_there(aws) -> None:
    other = aws.sqs.create_queue(QueueName="capture-other-events")["QueueUrl"]
    first = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    second = record("AdminDisableUser", pool=POOL_ID, sub=SUB)
    with patched_environ({"EVENTS_QUEUE_URL": aws.queues.events_url}):
        capture.handle_capture_event(first, None)
    with patched_environ({"EVENTS_QUEUE_URL": other}):
        capture.handle_capture_event(second, None)
    assert [json.loads(m["Body"])["event_name"] for m in receive_all(aws.sqs, aws.queues.events_url)] == [
        "AdminUpdateUserAttributes"
    ]
    assert [json.loads(m["Body"])["event_name"] for m in receive_all(aws.sqs, other)] == ["AdminDisableUser"]
