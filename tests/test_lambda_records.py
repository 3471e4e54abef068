"""The first stage of deliver: a Lambda SQS record read defensively. Any shape of input gives a `Record` (so the
batch goes on and the record gets its own outcome), with the receive count and first-seen time delivery decides by.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.delivery.records import Poison, Record, parse
from chalicelib.messages import SyncMessage
from tests.support import message_body

ARN = "arn:aws:sqs:us-east-1:123456789012:test-events"


def lambda_record(**changes: object) -> dict:
    record = {
        "messageId": "m-1",
        "receiptHandle": "rh-1",
        "body": message_body("u"),
        "attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1795980801000"},
        "eventSourceARN": ARN,
    }
    record.update(changes)
    return record


def test_a_lambda_record_gives_every_field_delivery_needs() -> None:
    record = Record.from_lambda(lambda_record())
    assert record == Record("m-1", "rh-1", message_body("u"), 3, 1_795_980_801.0, ARN)
    assert record.first_seen == datetime(2026, 11, 29, 19, 33, 21, tzinfo=UTC)


@pytest.mark.parametrize("raw", [None, "text", 7, [], {}])
def test_any_input_gives_a_record_that_cannot_be_delivered(raw: object) -> None:
    record = Record.from_lambda(raw)
    assert record == Record("", "", "", 1, None, None) and record.first_seen is None
    assert isinstance(parse(record), Poison)


@pytest.mark.parametrize(
    ("count", "expected"), [("1", 1), ("12", 12), (7, 7), (None, 1), ("0", 1), ("-4", 1), ("x", 1), ("1e3", 1)]
)
def test_the_receive_count_is_at_least_one(count: object, expected: int) -> None:
    assert Record.from_lambda(lambda_record(attributes={"ApproximateReceiveCount": count})).receive_count == expected


@pytest.mark.parametrize(
    ("sent", "expected"),
    [("1500", 1.5), (1795980801000, 1_795_980_801.0), ("0", None), ("-5", None), (str(10**14), None), ("x", None)],
)
def test_the_sent_time_is_read_in_seconds_when_a_datetime_can_hold_it(sent: object, expected: float | None) -> None:
    assert Record.from_lambda(lambda_record(attributes={"SentTimestamp": sent})).sent_at == expected


@pytest.mark.parametrize(
    "changes",
    [{"body": 7}, {"body": None}, {"eventSourceARN": 7}, {"attributes": "x"}, {"messageId": None}],
)
def test_a_field_of_the_wrong_type_is_read_as_absent(changes: dict) -> None:
    record = Record.from_lambda(lambda_record(**changes))
    if "body" in changes:
        assert record.body == ""
    if "eventSourceARN" in changes:
        assert record.source_arn is None
    if "attributes" in changes:
        assert (record.receive_count, record.sent_at) == (1, None)
    if "messageId" in changes:
        assert record.message_id == "" and record.receipt_handle == "rh-1"


def test_a_record_parses_into_its_message_or_poison_with_the_reason() -> None:
    assert isinstance(parse(Record.from_lambda(lambda_record())), SyncMessage)
    assert parse(Record.from_lambda(lambda_record(body="{"))) == Poison("body is not JSON: JSONDecodeError")
