"""The UserHub client over real HTTP against the fake: wire format, SDK-identical encoding, error classes."""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import formatdate
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from userhub_sdk._internal import util as sdk_util

from chalicelib.messages import EventType
from chalicelib.userhub import (
    USER_AGENT,
    PermanentError,
    TransientError,
    Unauthorized,
    UserHubClient,
    event_path,
    parse_retry_after,
    quote_path,
)
from tests.support import ADMIN_KEY
from userhub_sync.local.fake_userhub import FakeUserHub, Fault

KEY = SecretStr(ADMIN_KEY)


def call(
    hub: FakeUserHub,
    username: str = "u1",
    connection: str = "conn_1",
    event_type: EventType = EventType.SIGNIN,
    key: SecretStr = KEY,
    **client_kwargs: float,
) -> None:
    async def go() -> None:
        client = UserHubClient(hub.url, **client_kwargs)
        try:
            await client.report_event(username, connection, event_type, key)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_wire_format(hub: FakeUserHub) -> None:
    call(hub, "alice@example.com", "conn_abc")
    [entry] = hub.journal()
    assert entry.method == "POST"
    assert entry.raw_path == "/admin/v1/users/alice@example.com@conn_abc:event"
    assert json.loads(entry.body) == {"type": "SIGNIN"}  # the body the guide's `data:` never sent
    assert entry.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert entry.headers["content-type"] == "application/json"
    assert entry.headers["user-agent"] == USER_AGENT
    [event] = hub.events()
    assert (event.external_id, event.connection_id, event.type) == ("alice@example.com", "conn_abc", "SIGNIN")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_encoding_matches_the_official_sdk(username: str) -> None:
    assert quote_path(username) == sdk_util.quote_path(username)
    assert quote_path(f"{username}@conn_1") == sdk_util.quote_path(f"{username}@conn_1")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_no_username_reaches_another_path(username: str) -> None:
    """Whatever the username, the request stays one segment under /admin/v1/users/ and decodes back to it."""
    path = event_path(username, "conn_1")
    prefix, segment = path[: len("/admin/v1/users/")], path[len("/admin/v1/users/") :]
    assert prefix == "/admin/v1/users/"
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert segment.endswith("@conn_1:event")
    assert unquote(segment[: -len(":event")]).rsplit("@", 1) == [username, "conn_1"]


@pytest.mark.parametrize(
    "username", ["a b/c?d#e%f", "auth0|123", "user+tag@example.com", "José Müller", "..", "x:y", "../../admin/v1/users"]
)
def test_awkward_usernames_arrive_intact(hub: FakeUserHub, username: str) -> None:
    call(hub, username)
    [event] = hub.events()
    assert event.external_id == username
    assert hub.journal()[0].raw_path == f"/admin/v1/users/{sdk_util.quote_path(username + '@conn_1')}:event"


@pytest.mark.parametrize(
    ("fault", "error", "status", "retry_after"),
    [
        (Fault(status=429, retry_after="7"), TransientError, 429, 7.0),
        (Fault(status=429, retry_after="3", body_format="text"), TransientError, 429, 3.0),
        (Fault(status=500), TransientError, 500, None),
        (Fault(status=502, body_format="html"), TransientError, 502, None),
        (Fault(status=503, retry_after="12"), TransientError, 503, 12.0),
        (Fault(status=401), Unauthorized, 401, None),
        (Fault(status=400, code="INVALID_ARGUMENT", reason="BAD_ID"), PermanentError, 400, None),
        (Fault(status=403), PermanentError, 403, None),
        (Fault(status=404), PermanentError, 404, None),
        (Fault(kind="drop"), TransientError, None, None),
    ],
)
def test_error_classification(
    hub: FakeUserHub, fault: Fault, error: type, status: int | None, retry_after: float | None
) -> None:
    hub.add_fault(fault)
    with pytest.raises(error) as raised:
        call(hub)
    assert raised.value.status == status
    if isinstance(raised.value, TransientError):
        assert raised.value.retry_after == retry_after
    assert ADMIN_KEY not in str(raised.value)


def test_permanent_error_carries_userhub_code_and_reason(hub: FakeUserHub) -> None:
    hub.add_fault(Fault(status=400, code="INVALID_ARGUMENT", reason="BAD_ID", message="id is bad"))
    with pytest.raises(PermanentError) as raised:
        call(hub)
    assert (raised.value.code, raised.value.reason) == ("INVALID_ARGUMENT", "BAD_ID")
    assert "id is bad" in str(raised.value)


def test_slow_answer_is_a_bounded_transient_timeout(hub: FakeUserHub) -> None:
    hub.add_fault(Fault(kind="latency", latency_ms=2000))
    started = time.monotonic()
    with pytest.raises(TransientError, match="timeout"):
        call(hub, read_timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_transient() -> None:
    from userhub_sync.local.moto import free_port

    async def go() -> None:
        client = UserHubClient(f"http://127.0.0.1:{free_port()}")
        await client.report_event("u", "conn_1", EventType.SIGNIN, KEY)

    with pytest.raises(TransientError, match="connection error"):
        asyncio.run(go())


def test_parse_retry_after_forms() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == 999_999.0  # read as given; the retry policy caps the wait (12 h)
    assert 58 <= parse_retry_after(formatdate(now + 60, usegmt=True), now=now) <= 61
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
