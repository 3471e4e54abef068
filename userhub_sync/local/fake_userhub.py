"""A local stand-in for the UserHub Admin API (reference/userhub-api.md §12), for tests, the demo and benchmarks.

It is a real HTTP/1.1 server on loopback so that clients are exercised through their actual transport (keep-alive,
timeouts, connection errors), not through mocks. Everything the real API leaves undocumented (404 vs 400 for an
unknown connection, the 429 body, ...) is modelled the way §12 suggests and can be overridden with faults.

Run it on its own with ``python -m userhub_sync.local.fake_userhub --port 8085``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import json
import random
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = ["EVENT_TYPES", "FakeUserHub", "Fault", "JournalEntry", "RecordedEvent", "main"]

EVENT_TYPES = ("CHANGED", "SIGNIN", "SIGNUP")
FAULT_KINDS = ("status", "latency", "drop", "bad_json_200")
BODY_FORMATS = ("json", "text", "html")
DEFAULT_ADMIN_KEY = "userhub_admin_test"
MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# The split on the LAST ':' falls out of the lazy id plus the anchored verb: ':event' must end the path.
_VERB_RE = re.compile(r"^/admin/v1/users/(?P<id>[^/]+?):(?P<verb>event|import)$")
_USER_RE = re.compile(r"^/admin/v1/users/(?P<id>[^/]+)$")

# gRPC-style code the real API would most plausibly use for each status (§6; the mapping is [INFERRED]).
_STATUS_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_MESSAGES: dict[int, str] = {
    400: "Invalid argument",
    401: "Invalid API key",
    404: "Not found",
    429: "API call rate limited",  # the SDK's own test fixture text
    500: "Internal error",
    503: "Service unavailable",
}


@dataclass
class Fault:
    """One injected misbehaviour; the first fault (in insertion order) that matches and fires decides a request."""

    kind: str = "status"
    status: int = 500
    retry_after: str | None = None  # sent verbatim: delta-seconds or an HTTP date
    body_format: str = "json"
    code: str | None = None  # JSON error "code"; default derived from status
    message: str | None = None
    reason: str | None = None
    param: str | None = None
    latency_ms: float = 0.0  # extra delay before the fault acts (the whole point of kind="latency")
    count: int | None = None  # next N matching requests, then the fault expires; None = until cleared
    probability: float = 1.0
    match_external_id: str | None = None
    match_path_regex: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra answer headers (Location, Content-Encoding, ...)
    content_type: str | None = None  # None: the body format's; "": no Content-Type header at all
    drip_ms: float = 0.0  # send the body one byte at a time, this far apart (a slow-drip answer)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.body_format not in BODY_FORMATS:
            raise ValueError(f"fault body_format must be one of {BODY_FORMATS}, not {self.body_format!r}")
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP status code, not {self.status!r}")
        if self.count is not None and self.count < 1:
            raise ValueError("fault count must be >= 1 or None")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("fault probability must be within [0, 1]")
        if self.latency_ms < 0 or self.drip_ms < 0:
            raise ValueError("fault latency_ms and drip_ms must be >= 0")
        if self.match_path_regex is not None:
            re.compile(self.match_path_regex)  # fail at insertion, not on the first request

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build from the JSON of ``POST /_fake/faults``; unknown keys are an error so typos don't pass silently."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def matches(self, raw_path: str, external_id: str | None) -> bool:
        if self.match_external_id is not None and external_id != self.match_external_id:
            return False
        return self.match_path_regex is None or re.search(self.match_path_regex, raw_path) is not None


@dataclass
class JournalEntry:
    """One request as the fake saw it; lets tests assert on the exact wire format, retries and their spacing."""

    method: str
    raw_path: str  # the request target exactly as sent, query string included
    decoded_id: str | None
    external_id: str | None
    connection_id: str | None
    verb: str | None  # "event", "import", "get", "list" or None
    headers: dict[str, str]  # lower-case names; the Authorization header is kept as received
    body: str
    status: int | None = None  # None: dropped (or still in flight)
    fault: str | None = None
    ts: float = 0.0


@dataclass
class RecordedEvent:
    """An ``:event`` call that UserHub accepted (200)."""

    external_id: str
    connection_id: str
    type: str
    ts: float
    headers: dict[str, str]
    wait: bool = False


@dataclass
class _User:
    id: str
    external_id: str
    connection_id: str
    create_time: float
    update_time: float

    def to_json(self) -> dict[str, Any]:
        created, updated = _rfc3339(self.create_time), _rfc3339(self.update_time)
        email = self.external_id if "@" in self.external_id else None
        return {
            "id": self.id,
            "state": "ACTIVE",
            "displayName": self.external_id,
            "email": email,
            "emailVerified": email is not None,
            "accountConnections": [
                {
                    "connection": {
                        "id": self.connection_id,
                        "displayName": "Amazon Cognito",
                        "state": "ACTIVE",
                        "type": "AMAZON_COGNITO",
                        "providers": [],
                        "createTime": created,
                        "updateTime": created,
                    },
                    "externalId": self.external_id,
                    "state": "ACTIVE",
                    "displayName": self.external_id,
                    "email": email,
                    "paymentMethods": [],
                    "createTime": created,
                    "updateTime": updated,
                }
            ],
            "memberships": [],
            "createTime": created,
            "updateTime": updated,
        }


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"  # "" sends no Content-Type
    headers: dict[str, str] = field(default_factory=dict)
    drip_ms: float = 0.0


class _ApiError(Exception):
    """Raised inside a route to answer with a UserHub error body (§6)."""

    def __init__(self, status: int, code: str, message: str, *, reason: str | None = None, param: str | None = None):
        super().__init__(message)
        self.response = _json_response(status, _error_body(code, message, reason=reason, param=param))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_body(code: str, message: str, *, reason: str | None = None, param: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if reason is not None:
        body["reason"] = reason
    if param is not None:
        body["param"] = param
    return body


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers=headers or {})


def _fault_response(fault: Fault) -> _Response:
    """The canned answer of a "status" or "bad_json_200" fault, with the fault's headers and pacing."""
    response = _fault_body(fault)
    response.headers.update(fault.headers)
    if fault.content_type is not None:
        response.content_type = fault.content_type
    response.drip_ms = fault.drip_ms
    return response


def _fault_body(fault: Fault) -> _Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    if fault.kind == "bad_json_200":
        status, text = 200, fault.message or "<html>this is not json</html>"
        if fault.body_format == "json":  # claims JSON, isn't: the nastiest variant for a client
            return _Response(status, b'{"truncated": ', "application/json", headers)
    else:
        status = fault.status
        text = fault.message or _STATUS_MESSAGES.get(status) or _phrase(status)
    if fault.body_format == "text":
        return _Response(status, text.encode(errors="surrogatepass"), "text/plain; charset=utf-8", headers)
    if fault.body_format == "html":
        html = fault.message or f"<html>{_phrase(status).lower()}</html>"
        return _Response(status, html.encode(errors="surrogatepass"), "text/html; charset=utf-8", headers)
    code = fault.code or _STATUS_CODES.get(status, "UNKNOWN")
    return _json_response(status, _error_body(code, text, reason=fault.reason, param=fault.param), headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
        if prefix != "offset" or offset < 0:
            raise ValueError(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _ApiError(400, "INVALID_ARGUMENT", "Invalid page token", param="pageToken") from None
    return offset


def _parse_json_body(body: bytes) -> dict[str, Any]:
    """Empty body means ``{}``: the guide's snippet sends none at all and §12 says to accept it."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise _ApiError(400, "INVALID_ARGUMENT", "Request body must be a JSON object")
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64+ clients connecting at once must not overflow the listen backlog
    hub: FakeUserHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, drop tests) are normal here; only real bugs deserve a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP glue; all behaviour lives in FakeUserHub, readable in one place."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add ~40 ms stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hub.verbose:  # request lines only; headers (and so keys) are never logged
            sys.stderr.write(f"fake-userhub: {self.address_string()} {format % args}\n")

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True  # the stream position is unknown now; don't reuse it
            self._send(_json_response(400, _error_body("INVALID_ARGUMENT", str(exc))))
            return
        try:
            response = self.server.hub._handle(self.command, self.path, self._header_dict(), body)
        except Exception:
            traceback.print_exc()
            response = _json_response(500, _error_body("INTERNAL", "fake UserHub bug, see its stderr"))
        if response is None:
            self._abort()
        else:
            self._send(response)

    def _header_dict(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise ValueError(f"Invalid Content-Length: {raw!r}") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ValueError(f"Content-Length out of range: {length}")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("chunked body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            if response.content_type:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.drip_ms:
                for byte in range(len(response.body)):
                    self.wfile.write(response.body[byte : byte + 1])
                    self.wfile.flush()
                    time.sleep(response.drip_ms / 1000)
            else:
                self.wfile.write(response.body)
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it

    def _abort(self) -> None:
        """The "drop" fault: no status line at all, so the client sees a remote-protocol/connection error."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


class FakeUserHub:
    """In-memory UserHub Admin API with fault injection and a request journal; all state methods are thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        admin_keys: Iterable[str] = (DEFAULT_ADMIN_KEY,),
        connections: Iterable[str] | None = None,
        latency_ms: float = 0.0,
        seed: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.verbose = verbose
        self._seed = seed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._admin_keys = frozenset(admin_keys)
        self._connections = None if connections is None else frozenset(connections)
        self._faults: list[Fault] = []
        self._journal: list[JournalEntry] = []
        self._events: list[RecordedEvent] = []
        self._users: dict[str, _User] = {}
        self._by_external: dict[tuple[str, str], str] = {}
        self._seeded: dict[str, set[str]] = {}  # the fake "Cognito" directory per connection
        self._next_user = 1
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._serving = False
        self._open_sockets: set[socket.socket] = set()

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeUserHub is not bound yet; call start() (or bind()) first")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def bind(self) -> FakeUserHub:
        """Open the listening socket without serving yet, so a CLI can print the real port before blocking."""
        if self._server is None:
            self._server = _Server((self.host, self.port), _Handler)
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

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._open_sockets.add(sock)
            else:
                self._open_sockets.discard(sock)

    # ----------------------------------------------------------------------------------------------- state API

    def set_admin_keys(self, keys: Iterable[str]) -> None:
        """Key rotation: requests with the old key get 401 from now on."""
        new = frozenset(keys)
        with self._lock:
            self._admin_keys = new

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
        """Back to a fresh state: users, seeded directory, events, faults, journal (keys and latency are kept)."""
        with self._lock:
            self._faults.clear()
            self._journal.clear()
            self._events.clear()
            self._users.clear()
            self._by_external.clear()
            self._seeded.clear()
            self._next_user = 1
            self._rng = random.Random(self._seed)

    def journal(self) -> list[JournalEntry]:
        with self._lock:
            return [dataclasses.replace(e, headers=dict(e.headers)) for e in self._journal]

    def events(self) -> list[RecordedEvent]:
        with self._lock:
            return [dataclasses.replace(e, headers=dict(e.headers)) for e in self._events]

    def seed_users(self, external_ids: Iterable[str], connection: str) -> None:
        """Populate the fake identity provider, so ``:import`` can tell known from unknown external users."""
        ids = list(external_ids)
        with self._lock:
            self._seeded.setdefault(connection, set()).update(ids)

    def users(self) -> list[dict]:
        with self._lock:
            return [u.to_json() for u in self._users.values()]

    # ----------------------------------------------------------------------------------------------- requests

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response | None:
        """Answer one request; None means "drop the connection"."""
        path, _, query = target.partition("?")
        if path.startswith("/_fake/"):
            return self._control(method, path, body)

        entry = JournalEntry(
            method=method,
            raw_path=target,
            decoded_id=None,
            external_id=None,
            connection_id=None,
            verb=None,
            headers=headers,
            body=body.decode("utf-8", errors="replace"),
            ts=time.time(),
        )
        self._describe(method, path, query, entry)
        with self._lock:
            self._journal.append(entry)
            fault = self._pick_fault(target, entry.external_id)
            entry.fault = fault.kind if fault else None  # visible at once, even while a latency fault sleeps

        delay_ms = self.latency_ms + (fault.latency_ms if fault else 0.0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)  # never under the lock: concurrent requests must overlap

        if fault is not None and fault.kind == "drop":
            response = None
        elif fault is not None and fault.kind in ("status", "bad_json_200"):
            response = _fault_response(fault)
        else:
            try:
                response = self._route(method, path, query, headers, body, entry)
            except _ApiError as exc:
                response = exc.response
        with self._lock:  # completed before the client can read the answer, so tests never race the journal
            entry.status = None if response is None else response.status
        return response

    def _describe(self, method: str, path: str, query: str, entry: JournalEntry) -> None:
        """Fill the decoded routing fields early, so faults can match on externalId and drops are still journaled."""
        match = _VERB_RE.match(path) if method == "POST" else None
        if match:
            entry.verb = match["verb"]
            raw_id = match["id"]
        elif (match := _USER_RE.match(path)) and method == "GET":
            entry.verb = "get"
            raw_id = match["id"]
        else:
            if path == "/admin/v1/users" and method == "GET":
                entry.verb = "list"
            return
        entry.decoded_id = unquote(raw_id, errors="replace")
        external_id, at, connection_id = entry.decoded_id.rpartition("@")
        if at and external_id and connection_id:
            entry.external_id, entry.connection_id = external_id, connection_id

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

    def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, entry: JournalEntry
    ) -> _Response:
        if not path.startswith("/admin/"):
            raise _ApiError(404, "NOT_FOUND", "Not found")
        if path.startswith("/admin/v1/"):
            self._authenticate(headers.get("authorization"))
        if entry.verb in ("event", "import"):
            if entry.external_id is None or entry.connection_id is None:
                raise _ApiError(400, "INVALID_ARGUMENT", "User id must be {externalId}@{connectionId}", param="userId")
            payload = _parse_json_body(body)
            if entry.verb == "event":
                return self._report_event(entry.external_id, entry.connection_id, payload, headers)
            return self._import(entry.external_id, entry.connection_id)
        if entry.verb == "get":
            return self._get_user(entry.decoded_id or "")
        if entry.verb == "list":
            return self._list_users(query)
        raise _ApiError(404, "NOT_FOUND", "Not found")

    def _authenticate(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        with self._lock:
            keys = self._admin_keys
        if scheme.lower() != "bearer" or not key.strip() or key.strip() not in keys:
            raise _ApiError(401, "UNAUTHENTICATED", "Invalid API key")

    def _check_connection(self, connection_id: str) -> None:
        if self._connections is not None and connection_id not in self._connections:
            raise _ApiError(404, "NOT_FOUND", "Connection not found", reason="CONNECTION_NOT_FOUND", param="userId")

    def _report_event(
        self, external_id: str, connection_id: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> _Response:
        self._check_connection(connection_id)
        event_type = payload.get("type")
        if event_type is None:
            event_type = "CHANGED"
        if event_type not in EVENT_TYPES:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Invalid event type: {event_type!r}", param="type")
        wait = payload.get("wait", False)
        if not isinstance(wait, bool):
            raise _ApiError(400, "INVALID_ARGUMENT", "wait must be a boolean", param="wait")
        now = time.time()
        with self._lock:
            known = self._known_external(external_id, connection_id)
            if not known and wait:  # only a synchronous event surfaces the failed import (§5.1)
                raise _ApiError(404, "NOT_FOUND", "External user not found", reason="USER_NOT_FOUND", param="userId")
            if known:
                user = self._user_for(external_id, connection_id, now)
                user.update_time = now
            self._events.append(RecordedEvent(external_id, connection_id, event_type, now, dict(headers), wait))
        return _json_response(200, {})

    def _import(self, external_id: str, connection_id: str) -> _Response:
        self._check_connection(connection_id)
        with self._lock:
            if not self._known_external(external_id, connection_id):
                raise _ApiError(404, "NOT_FOUND", "External user not found", reason="USER_NOT_FOUND", param="userId")
            user = self._user_for(external_id, connection_id, time.time())
            return _json_response(200, user.to_json())

    def _get_user(self, user_id: str) -> _Response:
        with self._lock:
            user = self._users.get(user_id)
            if user is None and "@" in user_id:  # §13 q4: unknown whether the real API allows this; we do
                external_id, _, connection_id = user_id.rpartition("@")
                found = self._by_external.get((external_id, connection_id))
                user = self._users.get(found) if found else None
            if user is None:
                raise _ApiError(404, "NOT_FOUND", "User not found")
            return _json_response(200, user.to_json())

    def _list_users(self, query: str) -> _Response:
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            page_size = int(params.get("pageSize") or DEFAULT_PAGE_SIZE)
        except ValueError:
            raise _ApiError(400, "INVALID_ARGUMENT", "Invalid page size", param="pageSize") from None
        if page_size < 1:
            raise _ApiError(400, "INVALID_ARGUMENT", "Invalid page size", param="pageSize")
        page_size = min(page_size, MAX_PAGE_SIZE)
        offset = _decode_page_token(params["pageToken"]) if params.get("pageToken") else 0
        email = params.get("email")
        with self._lock:
            users = [u.to_json() for u in self._users.values()]
        if email:
            if email.endswith("*"):
                users = [u for u in users if (u["email"] or "").startswith(email[:-1])]
            else:
                users = [u for u in users if u["email"] == email]
        page: dict[str, Any] = {"users": users[offset : offset + page_size]}
        if offset + page_size < len(users):
            page["nextPageToken"] = _encode_page_token(offset + page_size)
        return _json_response(200, page)

    def _known_external(self, external_id: str, connection_id: str) -> bool:
        """Without a seeded directory for the connection every external user "exists" (plain import semantics)."""
        seeded = self._seeded.get(connection_id)
        return seeded is None or external_id in seeded or (external_id, connection_id) in self._by_external

    def _user_for(self, external_id: str, connection_id: str, now: float) -> _User:
        """Find or import the user; caller holds the lock."""
        user_id = self._by_external.get((external_id, connection_id))
        if user_id is not None:
            return self._users[user_id]
        user = _User(f"usr_{self._next_user}", external_id, connection_id, now, now)
        self._next_user += 1
        self._users[user.id] = user
        self._by_external[(external_id, connection_id)] = user.id
        return user

    # ----------------------------------------------------------------------------------------------- control

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        """Test-only routes outside /admin: no auth, never journaled, never faulted."""
        try:
            return self._control_route(method, path, body)
        except _ApiError as exc:
            return exc.response
        except (TypeError, ValueError, re.error) as exc:
            return _json_response(400, _error_body("INVALID_ARGUMENT", str(exc)))

    def _control_route(self, method: str, path: str, body: bytes) -> _Response:
        route = (method, path)
        if route == ("GET", "/_fake/health"):
            return _json_response(200, {"status": "ok"})
        if route == ("POST", "/_fake/faults"):
            data = json.loads(body or b"null")
            faults = [Fault.from_dict(item) for item in (data if isinstance(data, list) else [data])]
            for fault in faults:
                self.add_fault(fault)
            return _json_response(200, {"faults": [asdict(f) for f in self.faults()]})
        if route == ("GET", "/_fake/faults"):
            return _json_response(200, {"faults": [asdict(f) for f in self.faults()]})
        if route == ("DELETE", "/_fake/faults"):
            self.clear_faults()
            return _json_response(200, {})
        if route == ("GET", "/_fake/requests"):
            return _json_response(200, [asdict(e) for e in self.journal()])
        if route == ("GET", "/_fake/events"):
            return _json_response(200, [asdict(e) for e in self.events()])
        if route == ("GET", "/_fake/users"):
            return _json_response(200, self.users())
        if route == ("POST", "/_fake/reset"):
            self.reset()
            return _json_response(200, {})
        if route == ("POST", "/_fake/seed"):
            data = _parse_json_body(body)
            connection, external_ids = data.get("connection"), data.get("external_ids")
            if not isinstance(connection, str) or not isinstance(external_ids, list):
                raise ValueError('expected {"connection": str, "external_ids": [str, ...]}')
            self.seed_users([str(x) for x in external_ids], connection)
            return _json_response(200, {})
        if route == ("POST", "/_fake/keys"):
            keys = _parse_json_body(body).get("admin_keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError('expected {"admin_keys": [str, ...]}')
            self.set_admin_keys(keys)
            return _json_response(200, {})
        raise _ApiError(404, "NOT_FOUND", "Unknown control route")


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="fake-userhub", description="Local fake of the UserHub Admin API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--admin-key",
        action="append",
        dest="admin_keys",
        metavar="KEY",
        help=f"accepted admin key; repeat for several (default {DEFAULT_ADMIN_KEY})",
    )
    parser.add_argument(
        "--connection",
        action="append",
        dest="connections",
        metavar="CONN_ID",
        help="known connection id; repeat for several (default: accept any)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every Admin API request")
    parser.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
    parser.add_argument("--verbose", action="store_true", help="log request lines to stderr")
    args = parser.parse_args(argv)

    hub = FakeUserHub(
        args.host,
        args.port,
        admin_keys=args.admin_keys or (DEFAULT_ADMIN_KEY,),
        connections=args.connections,
        latency_ms=args.latency_ms,
        seed=args.seed,
        verbose=args.verbose,
    ).bind()
    print(f"fake UserHub listening on {hub.url}", flush=True)
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
