"""Shared fixtures: one moto server per test process (real HTTP), reset for every test that asks for AWS.

No test talks to real AWS: the session fixture points AWS_ENDPOINT_URL at loopback before anything builds a
boto3 client, and the credentials are moto's dummies.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

from userhub_sync.local.moto import MotoServer, aws_environ, patched_environ
from userhub_sync.ops.queues import QueueSpec, QueueState, ensure_queues

ADMIN_KEY = "userhub_admin_test_key_0123456789"  # a fixture value, not a real key
CONNECTION_ID = "conn_test123"
POOL_ID = "us-east-1_TestPool1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    with patched_environ(aws_environ(server.endpoint)):
        yield server
    server.stop()


@dataclass
class Stack:
    moto: MotoServer
    sqs: object
    queues: QueueState
    spec: QueueSpec

    def client(self, service: str):
        return boto3.client(service)


def stage_environ(userhub_url: str = "http://127.0.0.1:9", **overrides: str | None) -> dict[str, str | None]:
    """The DESIGN.md variables for a local run, as a test would set them."""
    env: dict[str, str | None] = {
        "USERHUB_API_URL": userhub_url,
        "USERHUB_CONNECTION_ID": CONNECTION_ID,
        "USERHUB_ADMIN_KEY": ADMIN_KEY,
        "USERHUB_ADMIN_KEY_PARAMETER": None,
        "USERHUB_ADMIN_KEY_SECRET_ID": None,
        "EVENTS_QUEUE_NAME": "test-events",
        "DEAD_LETTER_QUEUE_NAME": "test-dlq",
        "EVENTS_QUEUE_URL": None,
        "USER_POOL_ID": POOL_ID,
        "SNAPSHOT_BUCKET": "test-snapshots",
        "RETRY_BASE_SECONDS": "1",
        "USERHUB_SYNC_METRICS": "off",
        # post_auth's deployed settings (connect 0.5 s, read 1 s, 1.8 s for both attempts) are tested on their own
        # (test_post_auth); elsewhere a moto server slowed by a loaded CI machine must not turn into failed enqueues
        "SQS_CONNECT_TIMEOUT": "2",
        "SQS_READ_TIMEOUT": "2",
        "POST_AUTH_BUDGET_SECONDS": "4",
    }
    env.update(overrides)
    return env


@pytest.fixture
def aws(moto_server: MotoServer) -> Iterator[Stack]:
    """A clean moto with the events queue and its DLQ (max receive count 4, short visibility for tests)."""
    moto_server.reset()
    from chalicelib.delivery import reset_deliverer
    from chalicelib.settings import reset_settings

    reset_settings()
    reset_deliverer()
    sqs = boto3.client("sqs")
    spec = QueueSpec("test-events", "test-dlq", max_receive_count=4, visibility_timeout=30)
    state = ensure_queues(sqs, spec)
    with patched_environ(stage_environ()):
        yield Stack(moto_server, sqs, state, spec)
    reset_settings()
    reset_deliverer()


@pytest.fixture(autouse=True)
def _no_real_aws_credentials() -> Iterator[None]:
    """Belt and braces: a test that forgot the moto fixture still cannot reach AWS with real credentials."""
    assert os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1").startswith(("http://127.0.0.1", "http://localhost"))
    yield


@pytest.fixture
def hub() -> Iterator[object]:
    """The fake UserHub over real HTTP on loopback, accepting the fixture key."""
    from userhub_sync.local.fake_userhub import FakeUserHub

    with FakeUserHub(admin_keys=[ADMIN_KEY], seed=1) as server:
        yield server


@pytest.fixture
def pipeline(aws: Stack, hub) -> Iterator[Stack]:
    """moto queues + fake UserHub, with the DESIGN variables pointing at both."""
    from chalicelib.post_auth import queue

    queue.reset()
    with patched_environ(stage_environ(hub.url)):
        yield aws
    queue.reset()


def signin_event(username: str, pool: str = POOL_ID) -> dict:
    """A Cognito PostAuthentication event, as the demo sends them."""
    from userhub_sync.scenarios.traffic import signin_event as traffic_event

    return traffic_event(username, pool)


def message_body(username: str, type_: str = "SIGNIN", **fields: object) -> str:
    import json

    body = {
        "v": 1,
        "id": f"id-{username}-{type_}",
        "type": type_,
        "user_pool_id": POOL_ID,
        "username": username,
        "connection_id": CONNECTION_ID,
        "event_time": "2026-11-26T00:00:00+00:00",
        "source": "post_auth",
    }
    body.update(fields)
    return json.dumps(body)


def receive_event(sqs, queue_url: str, expected: int) -> dict:
    """Receive `expected` messages for real and wrap them as Lambda's SQS event (real receipt handles)."""
    from userhub_sync.local.event_source import lambda_record

    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages: list[dict] = []
    for _ in range(20):
        messages += sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if len(messages) >= expected:
            break
    assert len(messages) == expected, f"received {len(messages)} of {expected}"
    return {"Records": [lambda_record(m, arn, "us-east-1") for m in messages]}


def wait_for_sender_threads(timeout: float = 10.0) -> None:
    """Calls given up on end once their server goes away; later tests should start with every thread free."""
    from chalicelib import post_auth

    ends = time.monotonic() + timeout
    while post_auth.queue.busy and time.monotonic() < ends:
        time.sleep(0.02)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: the worst SQS can do to us."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
    wait_for_sender_threads()
