"""capture's handler, to the letter: what it returns for a captured change, how it reads a record (both source
fields must be Cognito's, a failed call is skipped on either error field, the time and id fall back to the envelope's,
an offset is an instant), and its one SQS client per environment, so a process that points it at another events
queue sends there. SQS is moto over HTTP.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from chalicelib import capture
from chalicelib.capture import Skip
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


def test_both_the_envelope_source_and_the_event_source_must_be_cognito_s() -> None:
    other_service = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    other_service["detail"]["eventSource"] = "iam.amazonaws.com"
    other_bus = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    other_bus["source"] = "aws.iam"
    assert capture.read_change(other_service, POOL_ID) is Skip.NOT_A_CHANGE
    assert capture.read_change(other_bus, POOL_ID) is Skip.NOT_A_CHANGE


def test_a_failed_call_is_skipped_on_its_error_code_alone_or_its_message_alone() -> None:
    by_code = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    by_code["detail"]["errorCode"] = "UserNotFoundException"
    by_message = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    by_message["detail"]["errorMessage"] = "User does not exist."
    assert capture.read_change(by_code, POOL_ID) is Skip.FAILED_CALL
    assert capture.read_change(by_message, POOL_ID) is Skip.FAILED_CALL


def test_without_a_cloudtrail_time_the_envelope_s_time_is_kept() -> None:
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    del event["detail"]["eventTime"]
    event["time"] = "2026-11-28T07:30:00Z"
    change = capture.read_change(event, POOL_ID)
    assert isinstance(change, CaptureMessage) and change.event_time == datetime(2026, 11, 28, 7, 30, tzinfo=UTC)


def test_the_event_id_falls_back_to_the_envelope_s_then_to_unknown() -> None:
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub=SUB)
    del event["detail"]["eventID"]
    change = capture.read_change(event, POOL_ID)
    assert isinstance(change, CaptureMessage) and change.event_id == event["id"]
    del event["id"]
    change = capture.read_change(event, POOL_ID)
    assert isinstance(change, CaptureMessage) and change.event_id == "unknown"


def test_another_region_gets_a_client_of_its_own() -> None:
    """The cached client follows the environment post_auth's does: the Region and the SQS endpoint included."""
    with patched_environ({"EVENTS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/q"}):
        with patched_environ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}):
            first = capture._queue(None, None)
        with patched_environ({"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-central-1"}):
            second = capture._queue(None, None)
            again = capture._queue(None, None)
    assert first.sqs.meta.region_name == "eu-west-1" and second.sqs.meta.region_name == "eu-central-1"
    assert again is second
