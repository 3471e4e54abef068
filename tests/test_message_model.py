"""The queue message: what `parse_message` accepts, the exact reason it gives for what it refuses, and the key that
merges duplicates. Pure: a body in, a `SyncMessage` or a `PoisonMessage` out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from chalicelib.identifiers import is_connection_id
from chalicelib.messages import EventType, PoisonMessage, Source, SyncMessage, parse_message
from tests.support import POOL_ID, message_body


def reason(body: str | bytes | None) -> str:
    with pytest.raises(PoisonMessage) as raised:
        parse_message(body)
    assert str(raised.value) == raised.value.reason
    return raised.value.reason


def test_a_v1_body_parses_into_every_field() -> None:
    message = parse_message(message_body("alice", "CHANGED"))
    assert message == SyncMessage(
        id="id-alice-CHANGED",
        type=EventType.CHANGED,
        user_pool_id=POOL_ID,
        username="alice",
        connection_id="conn_test123",
        event_time=datetime(2026, 11, 26, tzinfo=UTC),
        source=Source.POST_AUTH,
    )
    assert parse_message(message.to_body()) == message
    assert parse_message(message.to_body().encode()) == message


@pytest.mark.parametrize(("body", "expected"), [(None, "empty body"), ("", "empty body"), (b"", "empty body")])
def test_an_empty_body_is_poison(body: str | bytes | None, expected: str) -> None:
    assert reason(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{", "body is not JSON: JSONDecodeError"),
        (b"\xff", "body is not JSON: UnicodeDecodeError"),
        ("[]", "body is JSON list, not an object"),
        ("7", "body is JSON int, not an object"),
        ("{}", "unsupported message version null (this code reads v1)"),
        ('{"v": true}', "unsupported message version true (this code reads v1)"),
        ('{"v": 1.5}', "unsupported message version 1.5 (this code reads v1)"),
        ('{"v": "' + "9" * 40 + '"}', 'unsupported message version "9999999999999999999 (this code reads v1)'),
    ],
)
def test_each_kind_of_unreadable_body_has_its_own_reason(body: str | bytes, expected: str) -> None:
    assert reason(body) == expected


def test_a_v1_body_with_bad_fields_names_each_field_and_what_is_wrong() -> None:
    body = json.loads(message_body("u"))
    body |= {"type": "LOGOUT", "username": ""}
    text = reason(json.dumps(body))
    assert text.startswith("invalid v1 message: type: Input should be 'SIGNIN', 'SIGNUP' or 'CHANGED', username: ")


def test_a_reason_names_the_first_five_problems_only() -> None:
    body = {"v": 1, "id": "", "type": "x", "user_pool_id": "y", "username": "", "connection_id": "c"}
    body |= {"event_time": "t", "source": "z"}
    text = reason(json.dumps(body))
    named = [part.rsplit(", ", 1)[-1] for part in text.removeprefix("invalid v1 message: ").split(": ")[:-1]]
    assert named == ["id", "type", "user_pool_id", "username", "connection_id"]


def test_unknown_fields_are_ignored_within_a_version() -> None:
    assert parse_message(json.dumps(json.loads(message_body("u")) | {"future": 1})).username == "u"


def test_a_new_message_gets_an_id_and_the_time_it_was_made() -> None:
    before = datetime.now(UTC)
    first = SyncMessage(type=EventType.SIGNIN, user_pool_id=POOL_ID, username="u", source=Source.RECONCILE)
    second = SyncMessage(type=EventType.SIGNIN, user_pool_id=POOL_ID, username="u", source=Source.RECONCILE)
    assert first.id != second.id and len(first.id) == 32
    assert before <= first.event_time <= datetime.now(UTC)
    assert (first.v, first.connection_id) == (1, None)


def test_messages_merge_by_user_connection_and_type() -> None:
    def key(**fields: str) -> tuple[str, str | None, str]:
        return parse_message(message_body(**{"username": "u", **fields})).dedup_key

    assert key() == ("u", "conn_test123", "SIGNIN")
    assert key(id="other", source="reconcile") == key()
    assert key(type_="CHANGED") != key()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("conn_26yEiYymqy6ZmG", True),
        ("conn_a", True),
        ("conn_" + "a" * 64, True),
        ("conn_", False),
        ("conn_" + "a" * 65, False),
        ("con_abc", False),
        ("conn_a/b", False),
        (None, False),
        (7, False),
    ],
)
def test_a_connection_id_is_conn_and_up_to_64_url_safe_characters(value: object, expected: bool) -> None:
    assert is_connection_id(value) is expected
