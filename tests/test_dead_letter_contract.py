"""The dead-letter contract, as `deliver` writes it and `userhub-sync dlq` reads it back (`DeadLetterInfo`).

Pure: no SQS. Each test pins one promise of the contract that a mutant of `chalicelib/dead_letter.py` broke unseen.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.dead_letter import (
    ESSENTIAL,
    SHORT_REASON_CHARS,
    TEXT_CHARS,
    Attribute,
    DeadLetterInfo,
    FailureKind,
    attributes_bytes,
    dead_letter_entry,
    entry_bytes,
)
from chalicelib.observability import register_secret
from chalicelib.sqs_limits import PAYLOAD_BYTES, allowed_text

FIRST_SEEN = datetime(2026, 11, 28, 7, 30, 5, tzinfo=UTC)
FAILED_AT = datetime(2026, 11, 29, 19, 33, 21, tzinfo=UTC)
FULL = DeadLetterInfo(
    kind=FailureKind.PERMANENT,
    reason="USER_INVALID",
    attempts=3,
    status=404,
    code="NOT_FOUND",
    detail="no such user",
    first_seen=FIRST_SEEN,
    failed_at=FAILED_AT,
    source_message_id="m-1",
    username="alice@example.com",
)


def strings(attributes: dict[str, dict[str, str]]) -> dict[str, str]:
    assert all(value["DataType"] == "String" for value in attributes.values())
    return {name: value["StringValue"] for name, value in attributes.items()}


def test_every_field_survives_the_round_trip_through_message_attributes() -> None:
    assert DeadLetterInfo.from_message_attributes(strings(FULL.to_message_attributes())) == FULL


def test_the_attributes_carry_the_names_and_texts_the_dlq_commands_filter_on() -> None:
    assert strings(FULL.to_message_attributes()) == {
        "failure_kind": "permanent",
        "failure_status": "404",
        "failure_code": "NOT_FOUND",
        "failure_reason": "USER_INVALID",
        "failure_detail": "no such user",
        "attempts": "3",
        "first_seen": "2026-11-28T07:30:05Z",
        "failed_at": "2026-11-29T19:33:21Z",
        "source_message_id": "m-1",
        "username": "alice@example.com",
    }


def test_absent_fields_write_no_attribute_and_read_back_as_absent() -> None:
    bare = DeadLetterInfo(kind=FailureKind.POISON, reason="empty body")
    assert strings(bare.to_message_attributes()) == {"failure_kind": "poison", "failure_reason": "empty body"}
    assert DeadLetterInfo.from_message_attributes({"failure_kind": "poison"}) == DeadLetterInfo(
        kind=FailureKind.POISON, reason=""
    )


def test_a_message_without_a_known_failure_kind_was_moved_by_sqs_not_by_deliver() -> None:
    assert DeadLetterInfo.from_message_attributes({}) is None
    assert DeadLetterInfo.from_message_attributes({"failure_kind": "lost", "failure_reason": "?"}) is None
    assert DeadLetterInfo.from_message_attributes({"kind": "poison", "reason": "a sender's own attributes"}) is None


def test_unreadable_numbers_and_times_read_back_as_absent_not_as_an_error() -> None:
    info = DeadLetterInfo.from_message_attributes(
        {"failure_kind": "exhausted", "attempts": "three", "failure_status": "", "first_seen": "yesterday"}
    )
    assert info == DeadLetterInfo(kind=FailureKind.EXHAUSTED, reason="", attempts=None, status=None, first_seen=None)


def test_essential_only_keeps_what_replay_and_filters_need_with_a_short_reason() -> None:
    info = FULL.model_copy(update={"reason": "r" * 5000, "detail": "d" * 5000})
    essential = strings(info.to_message_attributes(essential_only=True))
    assert set(essential) == {a.value for a in ESSENTIAL}
    assert essential["failure_reason"] == "r" * SHORT_REASON_CHARS
    full = strings(info.to_message_attributes())
    assert full["failure_reason"] == "r" * TEXT_CHARS and full["failure_detail"] == "d" * TEXT_CHARS


def test_a_registered_secret_is_cut_out_before_the_text_is_clipped() -> None:
    secret = "dead-letter-contract-secret-0123456789"
    register_secret(secret)
    reason = "x" * (TEXT_CHARS - 10) + secret
    written = strings(DeadLetterInfo(kind=FailureKind.PERMANENT, reason=reason).to_message_attributes())
    assert written["failure_reason"] == "x" * (TEXT_CHARS - 10) + "***"


def test_a_usual_entry_keeps_every_attribute() -> None:
    entry = dead_letter_entry('{"v": 1}', FULL)
    assert entry == {"MessageBody": '{"v": 1}', "MessageAttributes": FULL.to_message_attributes()}


def test_an_empty_body_is_sent_as_a_visible_placeholder_sqs_accepts() -> None:
    assert dead_letter_entry("", FULL)["MessageBody"] == "<empty>"


@pytest.mark.parametrize("spare", [0, 1])
def test_next_to_a_body_at_the_limit_only_the_essential_attributes_are_kept(spare: int) -> None:
    attributes = FULL.to_message_attributes()
    body = "b" * (PAYLOAD_BYTES - attributes_bytes(attributes) + spare)
    entry = dead_letter_entry(body, FULL)
    if spare:  # one byte over with every attribute
        assert entry["MessageAttributes"] == FULL.to_message_attributes(essential_only=True)
    else:  # exactly at the limit: everything fits
        assert entry["MessageAttributes"] == attributes
        assert entry_bytes(entry) == PAYLOAD_BYTES


def test_an_entry_counts_its_body_and_each_attributes_name_type_and_value_in_utf8_bytes() -> None:
    entry = {"MessageBody": "é", "MessageAttributes": {"ü": {"DataType": "String", "StringValue": "ab"}}}
    assert entry_bytes(entry) == 2 + (2 + len("String") + 2)
    assert entry_bytes({"MessageBody": "abc"}) == 3


def test_every_attribute_name_is_one_of_the_contracts() -> None:
    assert {name for name in strings(FULL.to_message_attributes())} == {a.value for a in Attribute}


def test_texts_sqs_would_refuse_are_cleaned_and_long_ones_clipped() -> None:
    """A lone surrogate in UserHub's reason would make SendMessageBatch fail as a whole."""
    info = FULL.model_copy(update={"reason": "R\ud800", "detail": "x" * 5000, "username": "ü" * 300})
    values = {name: value["StringValue"] for name, value in info.to_message_attributes().items()}
    assert all(allowed_text(v) == v for v in values.values()) and values["failure_reason"] == "R\ufffd"
    assert len(values["failure_detail"]) == 1000 and len(values["username"]) == 256
