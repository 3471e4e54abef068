"""A local stand-in for the UserHub Admin API's `:event` route, for the demo, the scenarios, tests and benchmarks.

What it serves is what the product calls: `POST /admin/v1/users/{externalId}@{connectionId}:event` with a Bearer
Admin key, answering 200 `{}` or UserHub's error bodies. The user record an accepted event creates (UserHub imports
the external user) stays readable through `users()`, so a test can see under which connection each user landed.
Everything else is control: faults (status, latency, drop, a 200 that is not JSON; with extra headers, another
Content-Type, a slow drip), key rotation, a journal of every request as it arrived, and the accepted events, over
`/_fake/...` routes (no auth, never journaled, never faulted) or the Python API.

Invariants: the id splits on the last `:` (the verb) and then the last `@` (the connection), so no username can
reach another route; a faulted or dropped request never reaches the API logic; the journal entry of a request is
complete before its answer is sent, so a test never races it; state methods are thread-safe; keys are never
logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from chalicelib.token_bucket import TokenBucket
from userhub_sync.local.fake_http import ApiError, Handler, Response, Server, error_body, json_response
from userhub_sync.local.faults import Fault, FaultKind

DEFAULT_ADMIN_KEY = "userhub_admin_test"
RATE_LIMITED = 429  # what the rate-limit mode answers beyond its rate

# The id is lazy and the verb anchored, so `:event` must end the path: the split falls on the last ':'.
_EVENT_RE = re.compile(r"^/admin/v1/users/(?P<id>[^/]+?):event$")


class EventType(StrEnum):
    """The event types UserHub's `:event` accepts; a missing type means CHANGED."""

    CHANGED = "CHANGED"
    SIGNIN = "SIGNIN"
    SIGNUP = "SIGNUP"


@dataclass
class JournalEntry:
    """One request as the fake saw it; lets tests assert on the exact wire format, retries and their spacing."""

    method: str
    raw_path: str  # the request target exactly as sent, query string included
    headers: dict[str, str]  # lower-case names; the Authorization header is kept as received
    body: str
    ts: float
    decoded_id: str | None = None
    external_id: str | None = None
    connection_id: str | None = None
    verb: str | None = None  # "event" for the event route, None for anything else
    status: int | None = None  # None: dropped (or still in flight)
    fault: FaultKind | None = None


@dataclass
class RecordedEvent:
    """An ``:event`` call that UserHub accepted (200)."""

    external_id: str
    connection_id: str
    type: EventType
    ts: float
    headers: dict[str, str]
    wait: bool = False


@dataclass
class _User:
    """The user UserHub imports on a first event: the parts of its JSON the tests read, in UserHub's shape."""

    id: str
    external_id: str
    connection_id: str
    create_time: float
    update_time: float

    def to_json(self) -> dict[str, Any]:
        created, updated = _rfc3339(self.create_time), _rfc3339(self.update_time)
        connection = {"id": self.connection_id, "type": "AMAZON_COGNITO", "state": "ACTIVE", "createTime": created}
        return {
            "id": self.id,
            "state": "ACTIVE",
            "displayName": self.external_id,
            "accountConnections": [
                {"connection": connection, "externalId": self.external_id, "state": "ACTIVE", "updateTime": updated}
            ],
            "createTime": created,
            "updateTime": updated,
        }


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_json_body(body: bytes) -> dict[str, Any]:
    """An empty body means ``{}``: the connection guide's snippet sends none at all, and UserHub accepts that."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "Request body must be a JSON object")
    return data


class FakeUserHub:
    """In-memory UserHub `:event` API with fault injection and a request journal; all state methods are thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        admin_keys: Iterable[str] = (DEFAULT_ADMIN_KEY,),
        latency_ms: float = 0.0,
        seed: int | None = None,
        verbose: bool = False,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self._limit: TokenBucket | None = None
        self.verbose = verbose
        self._seed = seed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._admin_keys = frozenset(admin_keys)
        self._faults: list[Fault] = []
        self._journal: list[JournalEntry] = []
        self._events: list[RecordedEvent] = []
        self._users: dict[tuple[str, str], _User] = {}  # (external id, connection id) -> user
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._serving = False
        self._open_sockets: set[socket.socket] = set()
        self.set_rate_limit(rate_limit, rate_burst)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeUserHub is not bound yet; call start() (or bind()) first")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def bind(self) -> FakeUserHub:
        """Open the listening socket without serving yet, so a CLI can print the real port before blocking."""
        if self._server is None:
            self._server = Server((self.host, self.port), Handler)
            self._server.hub = self
            self.port = self._server.server_address[1]
        return self

    def start(self) -> FakeUserHub:
        """Serve on a daemon thread; returns self so ``hub = FakeUserHub().start()`` reads naturally."""
        server = self.bind()._server
        assert server is not None
        if self._thread is None:
            self._serving = True
            # A short poll interval keeps stop() (and so each test's teardown) fast.
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-userhub", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() from another thread, or KeyboardInterrupt."""
        server = self.bind()._server
        assert server is not None
        self._serving = True
        try:
            server.serve_forever(poll_interval=0.1)
        finally:
            self._serving = False

    def stop(self) -> None:
        """Stop accepting and cut open keep-alive connections, so clients see the server really gone."""
        server = self._server
        if server is None:
            return
        if self._serving or self._thread is not None:
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._serving = False
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        self._server = None

    def __enter__(self) -> FakeUserHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._open_sockets.add(sock)
            else:
                self._open_sockets.discard(sock)

    def set_admin_keys(self, keys: Iterable[str]) -> None:
        """Key rotation: requests with the old key get 401 from now on."""
        new = frozenset(keys)
        with self._lock:
            self._admin_keys = new

    def set_rate_limit(self, rate: float | None, burst: float | None = None) -> None:
        """Answer `:event` calls beyond `rate` a second (bursts of `burst`, default one second's worth) with 429 and
        `Retry-After`, as a rate-limited API does; None lifts the limit."""
        bucket = TokenBucket(rate, burst=max(1.0, burst or rate)) if rate else None
        with self._lock:
            self._limit = bucket

    def timeline(self) -> list[tuple[int, int, int]]:
        """(second since the first call, calls, of them answered 429) for every second with calls."""
        with self._lock:
            entries = [(e.ts, e.status) for e in self._journal if e.verb == "event"]
        if not entries:
            return []
        start = int(entries[0][0])
        counts: dict[int, list[int]] = {}
        for ts, status in entries:
            second = counts.setdefault(int(ts) - start, [0, 0])
            second[0] += 1
            second[1] += status == RATE_LIMITED
        return [(second, calls, limited) for second, (calls, limited) in sorted(counts.items())]

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(dataclasses.replace(fault))  # a copy: count is decremented in place

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        """Active faults; ``count`` shows what remains."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def reset(self) -> None:
        """Back to a fresh state: users, events, faults, journal (keys and latency are kept)."""
        with self._lock:
            self._faults.clear()
            self._journal.clear()
            self._events.clear()
            self._users.clear()
            self._rng = random.Random(self._seed)

    def journal(self) -> list[JournalEntry]:
        with self._lock:
            return [dataclasses.replace(e, headers=dict(e.headers)) for e in self._journal]

    def events(self) -> list[RecordedEvent]:
        with self._lock:
            return [dataclasses.replace(e, headers=dict(e.headers)) for e in self._events]

    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            return [u.to_json() for u in self._users.values()]

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response | None:
        """Answer one request; None means "drop the connection"."""
        path = target.partition("?")[0]
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        entry = JournalEntry(method, target, headers, body.decode("utf-8", errors="replace"), time.time())
        match = _EVENT_RE.match(path) if method == "POST" else None
        if match:  # filled early, so faults can match on externalId and drops are still journaled
            entry.verb, entry.decoded_id = "event", unquote(match["id"], errors="replace")
            external_id, at, connection_id = entry.decoded_id.rpartition("@")
            if at and external_id and connection_id:
                entry.external_id, entry.connection_id = external_id, connection_id
        with self._lock:
            self._journal.append(entry)
            fault = self._pick_fault(target, entry.external_id)
            entry.fault = fault.kind if fault else None  # visible at once, even while a latency fault sleeps

        delay_ms = self.latency_ms + (fault.latency_ms if fault else 0.0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)  # never under the lock: concurrent requests must overlap

        response: Response | None
        if fault is not None and fault.kind == FaultKind.DROP:
            response = None
        elif fault is not None and fault.kind in (FaultKind.STATUS, FaultKind.BAD_JSON_200):
            response = fault.response()
        elif entry.verb == "event" and self._limit is not None and not self._limit.try_acquire(timeout=0):
            wait = max(1, math.ceil(1 / (self._limit.rate or 1)))  # HTTP's Retry-After is whole seconds
            limited = error_body("RESOURCE_EXHAUSTED", "API call rate limited")
            response = json_response(RATE_LIMITED, limited, {"Retry-After": str(wait)})
        else:
            try:
                response = self._route(path, headers, body, entry)
            except ApiError as exc:
                response = exc.response
        with self._lock:  # completed before the client can read the answer, so tests never race the journal
            entry.status = None if response is None else response.status
        return response

    def _pick_fault(self, raw_path: str, external_id: str | None) -> Fault | None:
        """Called under the lock: matching, the random draw and the count decrement form one atomic decision."""
        for fault in self._faults:
            if not fault.matches(raw_path, external_id):
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            fired = dataclasses.replace(fault)
            if fault.count is not None:
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
            return fired
        return None

    def _route(self, path: str, headers: dict[str, str], body: bytes, entry: JournalEntry) -> Response:
        if path.startswith("/admin/v1/"):
            self._authenticate(headers.get("authorization"))
        if entry.verb != "event":
            raise ApiError(404, "NOT_FOUND", "Not found")
        if entry.external_id is None or entry.connection_id is None:
            raise ApiError(400, "INVALID_ARGUMENT", "User id must be {externalId}@{connectionId}", param="userId")
        return self._report_event(entry.external_id, entry.connection_id, _parse_json_body(body), headers)

    def _authenticate(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        with self._lock:
            keys = self._admin_keys
        if scheme.lower() != "bearer" or not key.strip() or key.strip() not in keys:
            raise ApiError(401, "UNAUTHENTICATED", "Invalid API key")

    def _report_event(
        self, external_id: str, connection_id: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> Response:
        event_type = payload.get("type")
        if event_type is None:
            event_type = EventType.CHANGED
        if not isinstance(event_type, str) or event_type not in set(EventType):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid event type: {event_type!r}", param="type")
        wait = payload.get("wait", False)
        if not isinstance(wait, bool):
            raise ApiError(400, "INVALID_ARGUMENT", "wait must be a boolean", param="wait")
        now = time.time()
        with self._lock:
            user = self._users.get((external_id, connection_id))
            if user is None:
                user = _User(f"usr_{len(self._users) + 1}", external_id, connection_id, now, now)
                self._users[(external_id, connection_id)] = user
            user.update_time = now
            self._events.append(
                RecordedEvent(external_id, connection_id, EventType(event_type), now, dict(headers), wait)
            )
        return json_response(200, {})

    def _control(self, method: str, path: str, body: bytes) -> Response:
        """Test-only routes outside /admin: no auth, never journaled, never faulted."""
        try:
            return self._control_route(method, path, body)
        except ApiError as exc:
            return exc.response
        except (TypeError, ValueError, re.error) as exc:
            return json_response(400, error_body("INVALID_ARGUMENT", str(exc)))

    def _control_route(self, method: str, path: str, body: bytes) -> Response:
        route = (method, path)
        if route == ("GET", "/_fake/health"):
            return json_response(200, {"status": "ok"})
        if route == ("POST", "/_fake/faults"):
            data = json.loads(body or b"null")
            for fault in [Fault.from_dict(item) for item in (data if isinstance(data, list) else [data])]:
                self.add_fault(fault)
            return json_response(200, {"faults": [asdict(f) for f in self.faults()]})
        if route == ("GET", "/_fake/faults"):
            return json_response(200, {"faults": [asdict(f) for f in self.faults()]})
        if route == ("DELETE", "/_fake/faults"):
            self.clear_faults()
            return json_response(200, {})
        if route == ("GET", "/_fake/requests"):
            return json_response(200, [asdict(e) for e in self.journal()])
        if route == ("POST", "/_fake/rate-limit"):
            data = _parse_json_body(body)
            self.set_rate_limit(data.get("rate"), data.get("burst"))
            return json_response(200, {})
        if route == ("GET", "/_fake/timeline"):
            return json_response(200, self.timeline())
        if route == ("GET", "/_fake/events"):
            return json_response(200, [asdict(e) for e in self.events()])
        if route == ("GET", "/_fake/users"):
            return json_response(200, self.users())
        if route == ("POST", "/_fake/reset"):
            self.reset()
            return json_response(200, {})
        if route == ("POST", "/_fake/keys"):
            keys = _parse_json_body(body).get("admin_keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError('expected {"admin_keys": [str, ...]}')
            self.set_admin_keys(keys)
            return json_response(200, {})
        raise ApiError(404, "NOT_FOUND", "Unknown control route")


def command(*, admin_keys: Iterable[str] = (), latency_ms: float = 0.0, rate_limit: float | None = None) -> list[str]:
    """The command line that runs the fake in its own process on a free port (it prints the URL on its first line)."""
    argv = [sys.executable, "-m", "userhub_sync.cli", "fake-userhub", "--port", "0", "--latency-ms", str(latency_ms)]
    if rate_limit:
        argv += ["--rate-limit", str(rate_limit)]
    for key in admin_keys:
        argv += ["--admin-key", key]
    return argv
