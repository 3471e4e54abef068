"""The second stage of deliver: one UserHub call per (user, connection, type) of a batch, each ending in exactly one
result, none started too late. Over the fake UserHub on real HTTP, with the Admin key from moto's SSM where the
key's source matters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import boto3
import pytest
from pydantic import SecretStr

from chalicelib.delivery.calls import DELIVERED, NOT_STARTED, BatchCaller, Deadline, Rejected, Transient
from chalicelib.delivery.flow import FlowControl
from chalicelib.messages import SyncMessage, parse_message
from chalicelib.observability import Metrics
from chalicelib.secrets import AdminKeyProvider
from chalicelib.settings import get_settings, reset_settings
from chalicelib.userhub import UserHubClient
from tests.support import ADMIN_KEY, message_body, stage_environ
from userhub_sync.local.fake_userhub import FakeUserHub, Fault
from userhub_sync.local.moto import patched_environ

DEFAULT_CONNECTION = "conn_default"


def message(username: str, type_: str = "SIGNIN", **fields: object) -> SyncMessage:
    return parse_message(message_body(username, type_, **fields))


def roomy() -> Deadline:
    return Deadline(end=time.monotonic() + 60, start_margin=1.5, settle_reserve=1.0)


def caller(hub: FakeUserHub, keys: AdminKeyProvider | None = None, concurrency: int = 4) -> BatchCaller:
    return BatchCaller(
        UserHubClient(hub.url, max_connections=1),
        keys or AdminKeyProvider(get_settings()),
        flow=FlowControl(concurrency, adaptive=False),  # adaptivity has its own tests (test_flow_control.py)
        default_connection=DEFAULT_CONNECTION,
        metrics=Metrics("deliver"),
    )


def call_all(batch: BatchCaller, messages: Sequence[SyncMessage], deadline: Deadline | None = None) -> list:
    async def go() -> list:
        try:
            return await batch.call_all(messages, deadline or roomy())
        finally:
            await batch.client.aclose()

    return asyncio.run(go())


def test_every_message_gets_its_own_result_in_order(pipeline, hub) -> None:
    hub.add_fault(Fault(status=404, code="NOT_FOUND", reason="NO_USER", message="gone", match_external_id="b"))
    hub.add_fault(Fault(status=503, retry_after="9", match_external_id="c"))
    results = call_all(caller(hub), [message("a"), message("b"), message("c")])
    assert results[0] is DELIVERED
    assert results[1] == Rejected("HTTP 404 NOT_FOUND: gone", 404, "NOT_FOUND", "NO_USER")
    assert isinstance(results[2], Transient) and (results[2].status, results[2].retry_after) == (503, 9.0)
    assert not results[2].configuration


def test_duplicates_make_one_call_and_share_its_result(pipeline, hub) -> None:
    batch = caller(hub)
    messages = [message("a"), message("b"), message("a", id="other-id"), message("a", "CHANGED")]
    assert call_all(batch, messages) == [DELIVERED] * 4
    assert sorted((e.external_id, e.type) for e in hub.events()) == [("a", "CHANGED"), ("a", "SIGNIN"), ("b", "SIGNIN")]
    assert batch.metrics.totals["duplicates_merged"] == 1


def test_a_message_without_a_connection_goes_to_the_default_one(pipeline, hub) -> None:
    call_all(caller(hub), [message("a", connection_id=None), message("b")])
    assert sorted((e.external_id, e.connection_id) for e in hub.events()) == [
        ("a", DEFAULT_CONNECTION),
        ("b", "conn_test123"),
    ]


def test_no_call_starts_once_less_than_the_margin_is_left(pipeline, hub) -> None:
    late = Deadline(end=time.monotonic() + 1.0, start_margin=1.5, settle_reserve=1.0)
    assert call_all(caller(hub), [message("a"), message("b")], late) == [NOT_STARTED, NOT_STARTED]
    assert hub.journal() == []


def test_the_deadline_starts_calls_while_the_margin_is_left_and_ends_them_before_the_reserve() -> None:
    now = time.monotonic()
    assert 49 < Deadline(end=now + 100, start_margin=50, settle_reserve=1).start_time_left() <= 50
    assert Deadline(end=now + 100, start_margin=150, settle_reserve=1).start_time_left() < 0
    seconds = Deadline(end=now + 100, start_margin=50, settle_reserve=30).call_seconds()
    assert 60 < seconds <= 70


def test_a_slow_answer_ends_before_the_time_kept_for_settling(pipeline, hub) -> None:
    hub.add_fault(Fault(kind="latency", latency_ms=5000))
    deadline = Deadline(end=time.monotonic() + 3.0, start_margin=0.5, settle_reserve=2.0)  # 1 s for the call
    [result] = call_all(caller(hub), [message("a")], deadline)
    assert isinstance(result, Transient) and "no complete answer" in result.detail
    assert time.monotonic() < deadline.end


def test_a_key_that_cannot_be_read_is_retried_later_without_calling(pipeline, hub) -> None:
    reset_settings()
    with patched_environ(stage_environ(hub.url, USERHUB_ADMIN_KEY=None, USERHUB_ADMIN_KEY_PARAMETER="/missing")):
        [result] = call_all(caller(hub), [message("a")])
    reset_settings()
    assert isinstance(result, Transient) and not result.configuration and result.status is None
    assert result.detail.startswith("cannot read the UserHub Admin key: ParameterNotFound")
    assert hub.journal() == []


def test_a_stored_key_no_header_can_carry_is_a_configuration_error(pipeline, hub) -> None:
    boto3.client("ssm").put_parameter(Name="/bad-key", Value="abc\u200bdef", Type="SecureString")
    reset_settings()
    with patched_environ(stage_environ(hub.url, USERHUB_ADMIN_KEY=None, USERHUB_ADMIN_KEY_PARAMETER="/bad-key")):
        [result] = call_all(caller(hub), [message("a")])
    reset_settings()
    assert isinstance(result, Transient) and result.configuration and "position 3" in result.detail


def test_a_401_is_cured_by_a_fresh_key_within_the_same_call(pipeline, hub) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/key", Value=ADMIN_KEY, Type="SecureString")
    reset_settings()
    with patched_environ(stage_environ(hub.url, USERHUB_ADMIN_KEY=None, USERHUB_ADMIN_KEY_PARAMETER="/key")):
        batch = caller(hub)
        batch.keys.get()
        ssm.put_parameter(Name="/key", Value="rotated-key-0123456789", Type="SecureString", Overwrite=True)
        hub.set_admin_keys(["rotated-key-0123456789"])
        assert call_all(batch, [message("a")]) == [DELIVERED]
    reset_settings()
    assert [entry.status for entry in hub.journal()] == [401, 200]
    assert (batch.metrics.totals["unauthorized"], batch.metrics.totals["key_refreshed"], batch.keys.fetches) == (
        1,
        1,
        2,
    )


def test_a_401_the_same_key_cannot_cure_is_retried_later_after_one_call(pipeline, hub) -> None:
    hub.set_admin_keys(["some-other-key-0123456789"])
    hub.add_fault(Fault(status=401, code="UNAUTHENTICATED", reason="KEY_REVOKED", message="Invalid API key"))
    batch = caller(hub)
    [result] = call_all(batch, [message("a")])
    assert result == Transient("HTTP 401 UNAUTHENTICATED: Invalid API key", 401, "UNAUTHENTICATED", "KEY_REVOKED")
    assert len(hub.journal()) == 1 and batch.metrics.totals["key_refreshed"] == 0


def test_an_unexpected_exception_is_that_messages_transient_result(pipeline, hub) -> None:
    batch = caller(hub)

    async def broken(*_: object, **__: object) -> None:  # a bug of ours, simulated: nothing in the stack raises it
        raise KeyError("surprise")

    batch.client.report_event = broken  # type: ignore[method-assign]
    [result] = call_all(batch, [message("a")])
    assert result == Transient("unexpected KeyError: 'surprise'")
    assert batch.metrics.totals["unexpected_error"] == 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_every_message_is_called_whatever_the_concurrency(pipeline, hub, concurrency: int) -> None:
    results = call_all(caller(hub, concurrency=concurrency), [message(f"u{n}") for n in range(6)])
    assert results == [DELIVERED] * 6 and len(hub.events()) == 6


def test_a_key_http_cannot_carry_that_reaches_the_client_is_still_a_configuration_error(pipeline, hub) -> None:
    """AdminKeyProvider refuses such a key first; this is the client's own net behind it, for any other source."""

    class PastedKey:
        fetches = 0

        def get(self) -> SecretStr:
            return SecretStr("abc\u00e9def")

    [result] = call_all(caller(hub, keys=PastedKey()), [message("a")])  # type: ignore[arg-type]
    assert isinstance(result, Transient) and result.configuration
    assert result.detail.startswith("the Admin key cannot be sent in an HTTP header: character '\\xe9' at position 3")
    assert hub.journal() == []


def test_at_the_cut_off_the_running_call_times_out_and_the_waiting_ones_are_not_started(pipeline, hub) -> None:
    """One timer for the batch: the call still running is cut off, the calls queued behind it never start."""
    hub.add_fault(Fault(kind="latency", latency_ms=5000, match_external_id="slow"))
    deadline = Deadline(end=time.monotonic() + 3.0, start_margin=0.5, settle_reserve=2.0)  # 1 s for the calls
    batch = caller(hub, concurrency=1)
    results = call_all(batch, [message("slow"), message("b"), message("c")], deadline)
    assert isinstance(results[0], Transient) and results[0].congestion and "no complete answer" in results[0].detail
    assert results[1:] == [NOT_STARTED, NOT_STARTED]
    assert [entry.external_id for entry in hub.journal()] == ["slow"]
    assert batch.flow.in_flight == 0 and batch.metrics.totals["userhub_calls"] == 1


def test_a_cancellation_from_outside_cancels_every_call_and_is_not_taken_for_the_deadline(pipeline, hub) -> None:
    hub.add_fault(Fault(kind="latency", latency_ms=5000))
    batch = caller(hub, concurrency=2)
    left: list[asyncio.Task] = []

    async def go() -> None:
        task = asyncio.ensure_future(batch.call_all([message("a"), message("b"), message("c")], roomy()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        left.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        await batch.client.aclose()

    asyncio.run(go())
    assert left == [] and batch.flow.in_flight == 0
