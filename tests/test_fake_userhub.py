"""The fake UserHub is what every delivery test trusts, so it is tested over real HTTP like its clients use it."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.support import ADMIN_KEY, HUB_SEED
from userhub_sync.local import fake_userhub
from userhub_sync.local.fake_userhub import FakeUserHub, Fault

KEY = ADMIN_KEY
CONN = "conn_test1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def sdk_quote(value: str) -> str:
    """The official SDK's path encoding (userhub_sdk's quote_path): `@` and `:` stay, `/ ? # % space |` and
    non-ASCII go."""
    return quote(value, safe="-._~!$&'()*+,;=:@'")


def event_path(external_id: str, connection: str = CONN, verb: str = "event") -> str:
    return f"/admin/v1/users/{sdk_quote(f'{external_id}@{connection}')}:{verb}"


@pytest.fixture
def client(hub: FakeUserHub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, headers=AUTH, timeout=5) as c:
        yield c


def test_auth_missing_bad_key_and_rotation(hub: FakeUserHub, client: httpx.Client) -> None:
    unauthenticated = {"code": "UNAUTHENTICATED", "message": "Invalid API key"}
    for headers in ({}, {"Authorization": KEY}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
        r = httpx.post(hub.url + event_path("alice"), headers=headers, json={})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/json"
        assert r.json() == unauthenticated
    assert client.post(event_path("alice"), json={}).status_code == 200

    hub.set_admin_keys(["userhub_admin_new"])
    assert client.post(event_path("alice"), json={}).status_code == 401
    r = client.post(event_path("alice"), json={}, headers={"Authorization": "Bearer userhub_admin_new"})
    assert r.status_code == 200
    assert [e.external_id for e in hub.events()] == ["alice", "alice"]  # 401s are not events


def test_event_type_recorded_and_empty_body_is_changed(hub: FakeUserHub, client: httpx.Client) -> None:
    r = client.post(event_path("alice"), json={"type": "SIGNIN"})
    assert (r.status_code, r.json(), r.headers["content-type"]) == (200, {}, "application/json")
    # The guide's snippet passes the body as `data:`, so nothing at all is sent: that must count as CHANGED.
    r = client.post(event_path("bob"))
    assert r.status_code == 200
    assert client.post(event_path("carol"), json={"type": "SIGNUP", "wait": True}).status_code == 200

    assert [(e.external_id, e.connection_id, e.type, e.wait) for e in hub.events()] == [
        ("alice", CONN, "SIGNIN", False),
        ("bob", CONN, "CHANGED", False),
        ("carol", CONN, "SIGNUP", True),
    ]
    signin, empty, _ = hub.journal()
    assert signin.body == '{"type":"SIGNIN"}' and signin.headers["content-type"] == "application/json"
    assert empty.body == "" and "content-type" not in empty.headers
    assert {u["accountConnections"][0]["externalId"] for u in hub.users()} == {"alice", "bob", "carol"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"type": "LOGIN"}', "type"),
        (b'{"type": "SIGNIN", "wait": "yes"}', "wait"),
        (b'{"type": ', None),
        (b"[1, 2]", None),
    ],
)
def test_event_rejects_bad_bodies(hub: FakeUserHub, client: httpx.Client, body: bytes, param: str | None) -> None:
    r = client.post(event_path("alice"), content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_ARGUMENT"
    assert r.json().get("param") == param
    assert hub.events() == []


def test_event_id_without_at_is_invalid(hub: FakeUserHub, client: httpx.Client) -> None:
    r = client.post("/admin/v1/users/usr_123:event", json={})
    assert (r.status_code, r.json()["code"], r.json()["param"]) == (400, "INVALID_ARGUMENT", "userId")
    assert client.post(event_path("alice"), json={}).status_code == 200
    assert len(hub.events()) == 1


@pytest.mark.parametrize(
    ("external_id", "connection", "encoded"),
    [
        ("a b/c?d#e%f", "conn", "a%20b%2Fc%3Fd%23e%25f@conn"),
        ("auth0|123", "conn_1", "auth0%7C123@conn_1"),
        ("user+tag@example.com", "conn_1", "user+tag@example.com@conn_1"),
        ("a@b@example.com", "conn_2", "a@b@example.com@conn_2"),
        ("us-east-1:abc/def", "conn_123", "us-east-1:abc%2Fdef@conn_123"),
        ("event:import", CONN, f"event:import@{CONN}"),
        ("jürgen ユーザー", CONN, f"j%C3%BCrgen%20%E3%83%A6%E3%83%BC%E3%82%B6%E3%83%BC@{CONN}"),
    ],
)
def test_ids_decode_on_last_colon_and_last_at(
    hub: FakeUserHub, client: httpx.Client, external_id: str, connection: str, encoded: str
) -> None:
    path = event_path(external_id, connection)
    assert path == f"/admin/v1/users/{encoded}:event"  # guards the test's own encoding
    r = client.post(path, json={"type": "SIGNIN"})
    assert r.status_code == 200, r.text
    (entry,) = hub.journal()
    assert entry.raw_path == path
    assert (entry.decoded_id, entry.external_id, entry.connection_id, entry.verb) == (
        f"{external_id}@{connection}",
        external_id,
        connection,
        "event",
    )
    (event,) = hub.events()
    assert (event.external_id, event.connection_id, event.type) == (external_id, connection, "SIGNIN")


def test_unknown_admin_routes_are_json_404(client: httpx.Client) -> None:
    for method, path in [
        ("POST", "/admin/v1/users/x@c:connect"),
        ("POST", "/admin/v1/users/x@c:import"),  # the product only reports events: nothing else is served
        ("GET", "/admin/v1/users"),
        ("GET", "/admin/v2/x"),
        ("DELETE", "/nope"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json"
        assert r.json()["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "body"),
    [
        (
            Fault(status=429, retry_after="7"),
            429,
            "application/json",
            {"code": "RESOURCE_EXHAUSTED", "message": "API call rate limited"},
        ),
        (Fault(status=429, body_format="text"), 429, "text/plain; charset=utf-8", "API call rate limited"),
        (Fault(status=500), 500, "application/json", {"code": "INTERNAL", "message": "Internal error"}),
        (Fault(status=503), 503, "application/json", {"code": "UNAVAILABLE", "message": "Service unavailable"}),
        (Fault(status=502, body_format="html"), 502, "text/html; charset=utf-8", "<html>bad gateway</html>"),
        (
            Fault(status=400, reason="USER_PENDING_DELETION", param="userId", message="pending"),
            400,
            "application/json",
            {"code": "INVALID_ARGUMENT", "message": "pending", "reason": "USER_PENDING_DELETION", "param": "userId"},
        ),
        (
            Fault(status=400, code="FAILED_PRECONDITION", reason="X"),
            400,
            "application/json",
            {"code": "FAILED_PRECONDITION", "message": "Invalid argument", "reason": "X"},
        ),
        (Fault(kind="bad_json_200"), 200, "application/json", None),
        (Fault(kind="bad_json_200", body_format="html"), 200, "text/html; charset=utf-8", None),
    ],
)
def test_status_faults(
    hub: FakeUserHub, client: httpx.Client, fault: Fault, status: int, content_type: str, body: object
) -> None:
    hub.add_fault(fault)
    r = client.post(event_path("alice"), json={"type": "SIGNIN"})
    assert r.status_code == status
    assert r.headers["content-type"] == content_type
    assert r.headers.get("retry-after") == fault.retry_after
    assert int(r.headers["content-length"]) == len(r.content)
    if body is None:
        with pytest.raises(json.JSONDecodeError):
            r.json()
    elif isinstance(body, str):
        assert r.text == body
    else:
        assert r.json() == body
    assert hub.events() == []  # a faulted request never reaches the API logic
    assert [(e.status, e.fault) for e in hub.journal()] == [(status, fault.kind)]


def test_retry_after_http_date_is_verbatim(hub: FakeUserHub, client: httpx.Client) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    hub.add_fault(Fault(status=503, retry_after=date))
    assert client.post(event_path("alice"), json={}).headers["retry-after"] == date


def test_latency_fault_then_normal_answer(hub: FakeUserHub, client: httpx.Client) -> None:
    hub.add_fault(Fault(kind="latency", latency_ms=150, count=1))
    start = time.perf_counter()
    r = client.post(event_path("alice"), json={})
    assert r.status_code == 200 and time.perf_counter() - start >= 0.15
    hub.add_fault(Fault(kind="latency", latency_ms=300, count=1))
    with pytest.raises(httpx.ReadTimeout):
        client.post(event_path("alice"), json={}, timeout=0.05)
    assert [e.fault for e in hub.journal()] == ["latency", "latency"]


def test_drop_closes_without_response(hub: FakeUserHub, client: httpx.Client) -> None:
    assert client.get("/admin/v1/users").status_code == 404  # warm a keep-alive connection first
    hub.add_fault(Fault(kind="drop", count=1))
    with pytest.raises(httpx.TransportError):
        client.post(event_path("alice"), json={"type": "SIGNIN"})
    assert client.post(event_path("alice"), json={"type": "SIGNIN"}).status_code == 200
    dropped = hub.journal()[1]
    assert (dropped.status, dropped.fault, dropped.external_id) == (None, "drop", "alice")
    assert len(hub.events()) == 1


def test_count_expiry(hub: FakeUserHub, client: httpx.Client) -> None:
    hub.add_fault(Fault(status=503, count=2))
    statuses = [client.post(event_path("alice"), json={}).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert hub.faults() == []


def test_probability_is_seeded_and_deterministic(client: httpx.Client, hub: FakeUserHub) -> None:
    def run() -> list[int]:
        hub.reset()  # reseeds the fake's random.Random
        hub.add_fault(Fault(status=500, probability=0.3))
        return [client.post(event_path("alice"), json={}).status_code for _ in range(60)]

    first = run()
    assert run() == first
    rng = random.Random(HUB_SEED)  # the fixture's seed; one draw per matching request
    assert first == [500 if rng.random() < 0.3 else 200 for _ in range(60)]
    assert 8 <= first.count(500) <= 30


def test_match_external_id_and_path_regex(hub: FakeUserHub, client: httpx.Client) -> None:
    hub.add_fault(Fault(status=500, match_external_id="a b/c"))
    hub.add_fault(Fault(status=429, match_path_regex=r"c@conn_test1:event$"))
    assert client.post(event_path("a b/c"), json={}).status_code == 500  # both match: the first one wins
    assert client.post(event_path("bob"), json={}).status_code == 200
    assert client.post(event_path("c"), json={}).status_code == 429
    hub.clear_faults()
    assert client.post(event_path("a b/c"), json={}).status_code == 200


def test_invalid_fault_rejected() -> None:
    with pytest.raises(ValueError):
        Fault(kind="explode")
    with pytest.raises(ValueError):
        Fault(body_format="xml")
    with pytest.raises(ValueError):
        Fault.from_dict({"kind": "status", "stauts": 500})


def test_concurrent_requests_overlap_their_latency() -> None:
    n = 64
    with (
        FakeUserHub(admin_keys=[KEY], latency_ms=100) as fake,
        httpx.Client(base_url=fake.url, headers=AUTH, limits=httpx.Limits(max_connections=n), timeout=10) as c,
        ThreadPoolExecutor(max_workers=n) as pool,
    ):
        start = time.perf_counter()
        statuses = list(pool.map(lambda i: c.post(event_path(f"user{i}"), json={}).status_code, range(n)))
        elapsed = time.perf_counter() - start
        assert statuses == [200] * n
        assert elapsed < 2.0, f"{n} requests of 100 ms took {elapsed:.2f}s: the fake serialises requests"
        assert len(fake.events()) == n and len(fake.users()) == n


def test_control_routes_over_http(hub: FakeUserHub, client: httpx.Client) -> None:
    ctl = httpx.Client(base_url=hub.url)  # no auth on control routes
    assert ctl.get("/_fake/health").json() == {"status": "ok"}

    r = ctl.post("/_fake/faults", json=[{"status": 429, "retry_after": "1", "count": 1}, {"kind": "drop", "count": 1}])
    assert r.status_code == 200 and len(r.json()["faults"]) == 2
    assert client.post(event_path("alice"), json={}).status_code == 429
    with pytest.raises(httpx.TransportError):
        client.post(event_path("alice"), json={})
    assert client.post(event_path("alice"), json={"type": "SIGNIN"}).status_code == 200
    assert ctl.post("/_fake/faults", json={"kind": "nope"}).status_code == 400
    ctl.post("/_fake/faults", json={"status": 500})
    assert ctl.delete("/_fake/faults").status_code == 200
    assert client.post(event_path("alice"), json={}).status_code == 200

    journal = ctl.get("/_fake/requests").json()
    assert [(e["status"], e["fault"]) for e in journal] == [(429, "status"), (None, "drop"), (200, None), (200, None)]
    assert all(e["raw_path"].startswith("/admin/") for e in journal)  # control calls stay out of the journal
    events = ctl.get("/_fake/events").json()
    assert [(e["external_id"], e["type"]) for e in events] == [("alice", "SIGNIN"), ("alice", "CHANGED")]

    assert [u["displayName"] for u in ctl.get("/_fake/users").json()] == ["alice"]

    assert ctl.post("/_fake/keys", json={"admin_keys": ["k2"]}).status_code == 200
    assert client.post(event_path("known"), json={}).status_code == 401
    assert client.post(event_path("known"), headers={"Authorization": "Bearer k2"}).status_code == 200

    assert ctl.post("/_fake/reset").status_code == 200
    assert ctl.get("/_fake/requests").json() == [] and ctl.get("/_fake/events").json() == []
    assert hub.users() == [] and hub.faults() == []
    assert ctl.get("/_fake/nope").status_code == 404
    ctl.close()


def test_journal_contents(hub: FakeUserHub, client: httpx.Client) -> None:
    before = time.time()
    headers = {"Authorization": "Bearer  weird spacing", "User-Agent": "UserHub-AmazonCognito/1.0", "X-Trace": "t1"}
    client.post(event_path("us-east-1:abc"), json={"type": "SIGNIN"}, headers=headers)
    client.get("/admin/v1/users", params={"pageSize": 5})
    event, other = hub.journal()

    assert event.method == "POST" and event.verb == "event" and event.status == 401 and event.fault is None
    assert event.headers["authorization"] == "Bearer  weird spacing"  # exactly as received
    assert event.headers["user-agent"] == "UserHub-AmazonCognito/1.0" and event.headers["x-trace"] == "t1"
    assert all(name == name.lower() for name in event.headers)
    assert event.body == '{"type":"SIGNIN"}'
    assert before <= event.ts <= other.ts <= time.time()

    # a route the fake does not serve is journaled too, exactly as sent
    assert (other.method, other.verb, other.raw_path, other.status) == ("GET", None, "/admin/v1/users?pageSize=5", 404)
    assert other.headers["authorization"] == AUTH["Authorization"]
    assert other.body == "" and other.decoded_id is None
    json.dumps([asdict(e) for e in hub.journal()])  # serialisable as promised


def test_stop_cuts_keep_alive_connections() -> None:
    fake = FakeUserHub(admin_keys=[KEY]).start()
    with httpx.Client(base_url=fake.url, headers=AUTH, timeout=2) as c:
        assert c.post(event_path("alice"), json={}).status_code == 200
        fake.stop()
        with pytest.raises(httpx.TransportError):
            c.post(event_path("alice"), json={})


def test_official_sdk_talks_to_the_fake(hub: FakeUserHub) -> None:
    sdk = pytest.importorskip("userhub_sdk")
    api = sdk.AdminApi(KEY, base_url=hub.url)
    api.users.report_event("us-east-1:abc/def@conn_123", type="SIGNIN")
    assert [(e.external_id, e.type) for e in hub.events()] == [("us-east-1:abc/def", "SIGNIN")]
    assert hub.journal()[0].raw_path == "/admin/v1/users/us-east-1:abc%2Fdef@conn_123:event"


def test_the_command_prints_the_real_port() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        fake_userhub.command(admin_keys=["k1", "k2"]),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake UserHub listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        assert not url.endswith(":0")
        r = httpx.post(url + event_path("alice"), headers={"Authorization": "Bearer k2"}, json={}, timeout=5)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert "k2" not in (proc.stderr.read() if proc.stderr else "")  # keys never reach the logs


def test_the_rate_limit_mode_answers_429_with_retry_after_beyond_its_rate() -> None:
    with FakeUserHub(admin_keys=["k"], rate_limit=20) as hub:
        statuses = []
        with httpx.Client(base_url=hub.url, headers={"Authorization": "Bearer k"}) as client:
            started = time.monotonic()
            while time.monotonic() - started < 1.0:
                answer = client.post(event_path(f"u{len(statuses)}"), json={"type": "SIGNIN"})
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    assert answer.headers["retry-after"] == "1"
                    assert answer.json()["code"] == "RESOURCE_EXHAUSTED"
        accepted = statuses.count(200)
        assert 20 <= accepted <= 41 and statuses.count(429) > 0  # a second's burst, then 20 a second
        assert len(hub.events()) == accepted
        timeline = hub.timeline()
        assert sum(calls for _, calls, _ in timeline) == len(statuses)
        assert sum(limited for _, _, limited in timeline) == statuses.count(429)
        hub.set_rate_limit(None)
        with httpx.Client(base_url=hub.url, headers={"Authorization": "Bearer k"}) as client:
            assert all(client.post(event_path(f"v{n}"), json={}).status_code == 200 for n in range(50))
