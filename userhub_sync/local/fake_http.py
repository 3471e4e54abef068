"""The fake UserHub's HTTP side: a real HTTP/1.1 server on loopback, and the answers it writes.

Real sockets, so clients are exercised through their actual transport (keep-alive, timeouts, connection errors),
not through mocks. Error bodies are UserHub's documented shape, `{"code", "message", "reason"?, "param"?}` with
gRPC-style codes. All behaviour lives in `FakeUserHub`; this module only moves bytes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from userhub_sync.local.fake_userhub import FakeUserHub

MAX_BODY_BYTES = 5 * 1024 * 1024

# The gRPC-style code UserHub answers each status with (the ones its Admin API documents; 5xx as gRPC names them).
STATUS_CODES: dict[int, str] = {
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
STATUS_MESSAGES: dict[int, str] = {
    400: "Invalid argument",
    401: "Invalid API key",
    404: "Not found",
    429: "API call rate limited",  # the official SDK's own test fixture text
    500: "Internal error",
    503: "Service unavailable",
}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"  # "" sends no Content-Type
    headers: dict[str, str] = field(default_factory=dict)
    drip_ms: float = 0.0  # send the body one byte at a time, this far apart


class ApiError(Exception):
    """Raised inside a route to answer with a UserHub error body."""

    def __init__(self, status: int, code: str, message: str, *, reason: str | None = None, param: str | None = None):
        super().__init__(message)
        self.response = json_response(status, error_body(code, message, reason=reason, param=param))


def error_body(code: str, message: str, *, reason: str | None = None, param: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if reason is not None:
        body["reason"] = reason
    if param is not None:
        body["param"] = param
    return body


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), headers=headers or {})


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64+ clients connecting at once must not overflow the listen backlog
    hub: FakeUserHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, drop tests) are normal here; only real bugs deserve a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Thin HTTP glue; all behaviour lives in FakeUserHub, readable in one place."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add ~40 ms stalls
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.hub.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub.track(self.connection, add=False)

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
            self._send(json_response(400, error_body("INVALID_ARGUMENT", str(exc))))
            return
        try:
            response = self.server.hub.handle(self.command, self.path, self._header_dict(), body)
        except Exception:  # broad: a bug in the fake is a 500 and a traceback on stderr, never a dead server
            traceback.print_exc()
            response = json_response(500, error_body("INTERNAL", "fake UserHub bug, see its stderr"))
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

    def _send(self, response: Response) -> None:
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
