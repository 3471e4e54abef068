"""The bounds of one UserHub call: each phase has its own timeout within the call's share of the invocation, and
the client's pools are sized from the settings. On loopback only."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from chalicelib.messages import EventType
from chalicelib.userhub import (
    API_VERSION,
    USER_AGENT,
    PermanentError,
    TransientError,
    UserHubClient,
    environment_proxy,
)
from tests.support import ADMIN_KEY
from userhub_sync.local.fake_userhub import FakeUserHub, Fault

KEY = SecretStr(ADMIN_KEY)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops new SYNs, so a connect hangs until it times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for sock in [*fillers, server]:
        sock.close()


def report(client: UserHubClient, timeout_seconds: float | None = None) -> None:
    async def go() -> None:
        try:
            await client.report_event("u1", "conn_1", EventType.SIGNIN, KEY, timeout_seconds=timeout_seconds)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_connection_never_accepted_fails_at_the_connect_timeout_not_the_calls_whole_time(unanswered_port) -> None:
    client = UserHubClient(f"http://127.0.0.1:{unanswered_port}", connect_timeout=0.2, max_connections=1)
    with pytest.raises(TransientError) as raised:
        report(client, timeout_seconds=2)
    assert str(raised.value) == "timeout: ConnectTimeout"


def test_every_request_says_who_calls_and_which_api_version(hub: FakeUserHub) -> None:
    report(UserHubClient(hub.url + "/", max_connections=1))
    [entry] = hub.journal()
    assert (entry.headers["user-agent"], entry.headers["userhub-api-version"]) == (USER_AGENT, API_VERSION)
    assert entry.raw_path == "/admin/v1/users/u1@conn_1:event"


def test_a_url_httpx_refuses_to_build_is_a_transient_error_that_says_so() -> None:
    """Messages bound every path segment, so deliver never builds one; the client still says what went wrong."""

    async def go() -> None:
        client = UserHubClient("http://127.0.0.1:9", max_connections=1)
        try:
            await client.report_event("u" * 70_000, "conn_1", EventType.SIGNIN, KEY)
        finally:
            await client.aclose()

    with pytest.raises(TransientError) as raised:
        asyncio.run(go())
    assert str(raised.value) == "cannot build the request URL: URL too long" and raised.value.status is None


@pytest.mark.parametrize(("max_connections", "pools"), [(1, 1), (8, 1), (9, 2), (16, 2), (64, 8)])
def test_connections_are_split_over_pools_of_at_most_eight(max_connections: int, pools: int) -> None:
    """httpcore's pool costs O(connections × idle connections) per request (encode/httpcore#1035): small pools."""
    client = UserHubClient("http://127.0.0.1:9", max_connections=max_connections)
    assert len(client._transports) == pools
    asyncio.run(client.aclose())


def test_a_given_transport_is_one_pool() -> None:
    client = UserHubClient("http://127.0.0.1:9", max_connections=64, transport=httpx.AsyncHTTPTransport())
    assert len(client._transports) == 1
    asyncio.run(client.aclose())


def test_each_call_goes_to_the_pool_with_the_fewest_calls_in_flight(hub: FakeUserHub) -> None:
    hub.add_fault(Fault(kind="latency", latency_ms=300))
    client = UserHubClient(hub.url, max_connections=16)
    during: list[list[int]] = []

    async def go() -> None:
        calls = [
            asyncio.create_task(client.report_event(f"u{n}", "conn_1", EventType.SIGNIN, KEY, timeout_seconds=10))
            for n in range(16)
        ]
        await asyncio.sleep(0)  # one turn of the loop: every call has taken its pool before its first wait
        during.append(list(client._in_flight))
        await asyncio.gather(*calls)
        await client.aclose()

    asyncio.run(go())
    assert during == [[8, 8]] and client._in_flight == [0, 0]
    assert len(hub.events()) == 16


def test_a_failed_call_gives_its_pool_slot_back() -> None:
    from userhub_sync.local.moto import free_port

    client = UserHubClient(f"http://127.0.0.1:{free_port()}", max_connections=1)
    with pytest.raises(TransientError) as raised:
        report(client, timeout_seconds=2)
    assert str(raised.value) == "connection error: ConnectError" and client._in_flight == [0]


def test_a_2xx_whose_body_cannot_be_decoded_is_still_delivered(hub: FakeUserHub) -> None:
    hub.add_fault(Fault(status=200, body_format="text", message="plain", headers={"Content-Encoding": "gzip"}))
    report(UserHubClient(hub.url, max_connections=1))  # no exception: the status is what counts
    [entry] = hub.journal()
    assert entry.status == 200


def test_the_proxy_comes_from_the_environment_as_httpx_would_take_it(hub: FakeUserHub, monkeypatch) -> None:
    """HTTP_PROXY sends the call through the proxy (here the fake itself, which journals the absolute-form target);
    NO_PROXY naming the host sends it straight to UserHub."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", hub.url)
    with pytest.raises(PermanentError):  # the fake is no proxy: it answers the absolute target itself, 404
        report(UserHubClient("http://userhub.invalid", max_connections=1))
    assert [entry.raw_path for entry in hub.journal()] == ["http://userhub.invalid/admin/v1/users/u1@conn_1:event"]

    from userhub_sync.local.moto import free_port

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    report(UserHubClient(hub.url, max_connections=1))
    assert environment_proxy(hub.url) is None and len(hub.events()) == 1
    monkeypatch.delenv("NO_PROXY")
    assert environment_proxy(hub.url) == os.environ["HTTP_PROXY"]
