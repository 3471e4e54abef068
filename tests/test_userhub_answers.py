"""How the UserHub client reads each answer, over real HTTP against the fake UserHub: which exception, with which
status, code, reason and text. deliver's choice (retry, dead-letter, fetch the key again) and the DLQ's attributes
come from exactly these fields.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from pydantic import SecretStr

from chalicelib import userhub
from chalicelib.messages import EventType
from chalicelib.userhub import ConfigurationError, PermanentError, TransientError, Unauthorized
from tests.support import ADMIN_KEY
from userhub_sync.local.fake_userhub import FakeUserHub, Fault

KEY = SecretStr(ADMIN_KEY)


def outcome(hub: FakeUserHub, fault: Fault | None = None, key: SecretStr = KEY) -> userhub.UserHubError | None:
    """The exception one call raises (None: delivered)."""
    if fault is not None:
        hub.add_fault(dataclasses.replace(fault, count=1))

    async def go() -> None:
        client = userhub.UserHubClient(hub.url, max_connections=1)  # one pool: each pool costs an SSL context
        try:
            await client.report_event("u1", "conn_1", EventType.SIGNIN, key)
        finally:
            await client.aclose()

    try:
        asyncio.run(go())
    except userhub.UserHubError as error:
        return error
    return None


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_every_2xx_is_delivered(hub: FakeUserHub, status: int) -> None:
    assert outcome(hub, Fault(status=status)) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentError),
        (401, Unauthorized),
        (403, PermanentError),
        (404, PermanentError),
        (408, TransientError),
        (409, PermanentError),
        (422, PermanentError),
        (429, TransientError),
        (499, PermanentError),
        (500, TransientError),
        (503, TransientError),
        (599, TransientError),
    ],
)
def test_each_status_maps_to_one_outcome(hub: FakeUserHub, status: int, kind: type) -> None:
    error = outcome(hub, Fault(status=status, code="SOME_CODE", message="what went wrong"))
    assert type(error) is kind
    assert (error.status, error.code) == (status, "SOME_CODE")
    assert str(error) == f"HTTP {status} SOME_CODE: what went wrong"


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_retry_after_comes_with_every_retryable_status(hub: FakeUserHub, status: int) -> None:
    error = outcome(hub, Fault(status=status, retry_after="42"))
    assert isinstance(error, TransientError) and error.retry_after == 42.0


def test_no_retry_after_header_means_no_floor(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=503))
    assert isinstance(error, TransientError) and error.retry_after is None


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308, 399])
def test_a_redirect_is_retried_and_names_where_it_pointed(hub: FakeUserHub, status: int) -> None:
    error = outcome(hub, Fault(status=status, headers={"Location": "https://elsewhere.example/login"}))
    assert type(error) is TransientError and error.status == status
    assert str(error).startswith(f"HTTP {status} redirect to https://elsewhere.example/login: ")
    assert "check USERHUB_API_URL" in str(error)


def test_a_redirect_without_a_location_says_so(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=302))
    assert "HTTP 302 redirect to (no Location): " in str(error)


def test_userhubs_code_reason_and_message_are_read_from_a_json_error(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=400, code="INVALID_ARGUMENT", reason="USER_INVALID", message="bad user"))
    assert (error.code, error.reason, str(error)) == (
        "INVALID_ARGUMENT",
        "USER_INVALID",
        "HTTP 400 INVALID_ARGUMENT: bad user",
    )


def test_an_error_without_code_or_message_reads_as_its_status_alone(hub: FakeUserHub) -> None:
    # a JSON error with an empty code and message (the fake fills in defaults for missing ones)
    error = outcome(hub, Fault(status=404, body_format="text", message=" ", content_type="text/plain"))
    assert (error.code, error.reason, str(error)) == (None, None, "HTTP 404")


def test_a_body_is_read_as_json_only_when_the_answer_says_it_is_json(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=400, code="FROM_JSON", message="m", content_type="text/plain"))
    assert error.code is None and error.reason is None
    assert str(error) == 'HTTP 400: {"code": "FROM_JSON", "message": "m"}'


def test_a_json_answer_that_is_not_an_object_reads_as_text(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=500, kind="bad_json_200"))  # b'{"truncated": ' labelled JSON, status 200
    assert error is None  # a 2xx is delivered, whatever its body
    error = outcome(
        hub, Fault(status=502, body_format="text", message='["a", "list"]', content_type="application/json")
    )
    assert (error.code, str(error)) == (None, 'HTTP 502: ["a", "list"]')


def test_long_and_spread_out_texts_are_collapsed_and_clipped(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=400, code="C" * 100, reason="R" * 200, message="many\n\n   spaces  " + "m" * 300))
    assert (error.code, error.reason) == ("C" * 64, "R" * 128)
    assert str(error) == f"HTTP 400 {'C' * 64}: many spaces {'m' * (200 - len('many spaces '))}"
    text = outcome(hub, Fault(status=502, body_format="text", message="t" * 500))
    assert str(text) == f"HTTP 502: {'t' * 120}"


def test_a_key_echoed_in_an_error_becomes_three_stars(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=400, code="X", message=f"bad key {ADMIN_KEY} sent", reason=ADMIN_KEY))
    assert str(error) == "HTTP 400 X: bad key *** sent" and error.reason == "***"


def test_characters_sqs_refuses_are_replaced_in_every_field(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=400, code="A\x01B", reason="R\x02", message="M\x03"))
    assert (error.code, error.reason, str(error)) == ("A\ufffdB", "R\ufffd", "HTTP 400 A\ufffdB: M\ufffd")


def test_a_key_no_http_header_can_carry_is_a_configuration_error_naming_only_its_place(hub: FakeUserHub) -> None:
    error = outcome(hub, key=SecretStr("abc\u200bdef"))
    assert type(error) is ConfigurationError
    assert str(error).startswith("the Admin key cannot be sent in an HTTP header: character '\\u200b' at position 3")
    assert "abc" not in str(error) and hub.journal() == []


def test_a_json_error_without_a_code_or_reason_has_none(hub: FakeUserHub) -> None:
    json_text = Fault(status=400, body_format="text", message='{"message": "m"}', content_type="application/json")
    error = outcome(hub, json_text)
    assert (error.code, error.reason, str(error)) == (None, None, "HTTP 400: m")


def test_an_error_body_that_is_not_utf8_is_read_with_replacement_characters(hub: FakeUserHub) -> None:
    error = outcome(hub, Fault(status=502, body_format="text", message="bad \ud800 byte"))  # sent as ED A0 80
    assert type(error) is TransientError and str(error) == "HTTP 502: bad \ufffd\ufffd\ufffd byte"


@pytest.mark.parametrize("status", [429, 503])
def test_a_retryable_error_keeps_userhubs_reason(hub: FakeUserHub, status: int) -> None:
    error = outcome(hub, Fault(status=status, code="UNAVAILABLE", reason="MAINTENANCE"))
    assert isinstance(error, TransientError) and (error.code, error.reason) == ("UNAVAILABLE", "MAINTENANCE")
