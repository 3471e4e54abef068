"""capture's one SQS call is bounded: three attempts, then it raises so that Lambda retries the event (and the
nightly reconcile stays behind it). An SQS endpoint that answers every request with HTTP 500 counts them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from chalicelib import capture
from tests.support import POOL_ID, tcp_server
from tests.test_capture import record
from userhub_sync.local.moto import patched_environ


@pytest.fixture
def failing_sqs() -> Iterator[tuple[str, list[str]]]:
    """An endpoint that reads each HTTP request and answers 500; yields its URL and the requests' first lines."""
    seen: list[str] = []
    lock = threading.Lock()

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(0.5)
        buffer = b""
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            if len(rest) < length:
                continue
            buffer = rest[length:]
            with lock:
                seen.append(head.split(b"\r\n")[0].decode())
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    with tcp_server(answer) as url:
        yield url, seen


def test_a_failing_sqs_is_tried_three_times_then_the_handler_raises(aws, failing_sqs) -> None:
    url, seen = failing_sqs
    event = record("AdminUpdateUserAttributes", pool=POOL_ID, sub="0b1c2d3e-aaaa-bbbb-cccc-000000000001")
    env = {"AWS_ENDPOINT_URL": url, "EVENTS_QUEUE_URL": f"{url}/123456789012/test-events"}
    with patched_environ(env), pytest.raises(ClientError, match="reached max retries: 2"):
        capture.handle_capture_event(event, None)
    assert len(seen) == 3 and all(line.startswith("POST ") for line in seen)
