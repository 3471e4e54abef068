"""Settings and messages at the edges: every bad value is one clear error, every bad body is poison with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.messages import EventType, PoisonMessage, Source, SyncMessage, parse_message
from chalicelib.settings import ConfigError, get_settings, reset_settings
from tests.support import ADMIN_KEY, message_body, stage_environ
from userhub_sync.local.moto import patched_environ


def settings_with(**overrides: str | None):
    reset_settings()
    with patched_environ(stage_environ(**overrides)):
        try:
            return get_settings()
        finally:
            reset_settings()


def test_defaults() -> None:
    s = settings_with(USERHUB_API_URL=None, RETRY_BASE_SECONDS=None)
    assert s.userhub_api_url == "https://api.userhub.com"
    assert (s.retry_base_seconds, s.retry_max_seconds, s.max_receive_count) == (30, 43_200, 13)
    assert s.delivery_concurrency == 16


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("USERHUB_CONNECTION_ID", None, "USERHUB_CONNECTION_ID"),
        ("USERHUB_CONNECTION_ID", "abc", "USERHUB_CONNECTION_ID"),
        ("EVENTS_QUEUE_NAME", None, "EVENTS_QUEUE_NAME"),
        ("USERHUB_API_URL", "http://api.userhub.com", "only for loopback"),
        ("USERHUB_API_URL", "ftp://x", "USERHUB_API_URL"),
        ("USERHUB_API_URL", "https://api.userhub.com/admin", "without path"),
        ("DELIVERY_CONCURRENCY", "many", "DELIVERY_CONCURRENCY"),
        ("DELIVERY_CONCURRENCY", "0", "DELIVERY_CONCURRENCY"),
        ("RETRY_MAX_SECONDS", "50000", "RETRY_MAX_SECONDS"),
        ("RECONCILE_RATE_LIMIT", "31", "RECONCILE_RATE_LIMIT"),
        ("USER_POOL_ID", "not a pool", "USER_POOL_ID"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_with(**{variable: value})


def test_a_key_source_is_required() -> None:
    with pytest.raises(ConfigError, match="USERHUB_ADMIN_KEY_PARAMETER, USERHUB_ADMIN_KEY_SECRET_ID or"):
        settings_with(USERHUB_ADMIN_KEY=None)


def test_errors_never_echo_values() -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(USERHUB_API_URL="http://evil.example/" + ADMIN_KEY)
    assert ADMIN_KEY not in str(raised.value)
    assert ADMIN_KEY not in repr(settings_with())


def test_loopback_http_is_allowed() -> None:
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        assert settings_with(USERHUB_API_URL=url).userhub_api_url == url
    assert settings_with(USERHUB_API_URL="http://127.0.0.1:8080/").userhub_api_url == "http://127.0.0.1:8080"


def test_require_optional_variable() -> None:
    with pytest.raises(ConfigError, match="SNAPSHOT_BUCKET: required"):
        settings_with(SNAPSHOT_BUCKET=None).require("SNAPSHOT_BUCKET")


def test_message_round_trip() -> None:
    message = SyncMessage(type=EventType.CHANGED, user_pool_id="us-east-1_X", username="ü ser", source=Source.RECONCILE)
    parsed = parse_message(message.to_body())
    assert parsed == message
    assert parsed.dedup_key == ("ü ser", None, "CHANGED")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "empty body"),
        (None, "empty body"),
        ("{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "JSON list, not an object"),
        ('"text"', "JSON str"),
        ("{}", "unsupported message version null"),
        ('{"v": "1"}', 'unsupported message version "1"'),
        ('{"v": true}', "unsupported message version true"),
        ('{"v": 2}', "unsupported message version 2"),
        (message_body("u", "LOGOUT"), "type"),
        (message_body("", "SIGNIN"), "username"),
        (message_body("u", event_time="yesterday"), "event_time"),
        (message_body("u", event_time="2026-01-01T00:00:00"), "timezone"),
        (message_body("u", connection_id="bad"), "connection_id"),
        (message_body("u", source="elsewhere"), "source"),
    ],
)
def test_poison_bodies(body: str | None, reason: str) -> None:
    with pytest.raises(PoisonMessage) as raised:
        parse_message(body)
    assert reason in raised.value.reason


@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10)).map(json.dumps),
    )
)
def test_any_body_parses_or_is_poison(body: str | bytes) -> None:
    try:
        parse_message(body)
    except PoisonMessage as poison:
        assert poison.reason and len(poison.reason) <= 500
