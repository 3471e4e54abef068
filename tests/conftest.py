"""Fixtures: one moto server per test process (real HTTP), reset for every test that asks for AWS; the fake UserHub
over real HTTP; a throwaway project for the operator commands. Helpers and constants are in tests/support.py.

No test talks to real AWS: the session fixture points AWS_ENDPOINT_URL at loopback before anything builds a
boto3 client, and the credentials are moto's dummies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.moto_logging import lambda_logging_config
from tests.support import ADMIN_KEY, HUB_SEED, Stack, make_project, stage_environ, tcp_server, wait_for_sender_threads
from userhub_sync.local.fake_userhub import FakeUserHub
from userhub_sync.local.moto import MotoServer, aws_environ, new_container, patched_environ
from userhub_sync.ops.queues import QueueSpec, ensure_queues


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    with patched_environ(aws_environ(server.endpoint)), lambda_logging_config():  # moto lacks it: tests/moto_logging.py
        yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer) -> Iterator[Stack]:
    """A clean moto with the events queue and its DLQ (max receive count 4, short visibility for tests)."""
    moto_server.reset()
    new_container()
    sqs = boto3.client("sqs")
    spec = QueueSpec("test-events", "test-dlq", max_receive_count=4, visibility_timeout=30)
    state = ensure_queues(sqs, spec)
    with patched_environ(stage_environ()):
        yield Stack(moto_server, sqs, state, spec)
    new_container()


@pytest.fixture(autouse=True)
def _no_real_aws_credentials() -> Iterator[None]:
    """Belt and braces: a test that forgot the moto fixture still cannot reach AWS with real credentials."""
    assert os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1").startswith(("http://127.0.0.1", "http://localhost"))
    yield


@pytest.fixture
def hub() -> Iterator[FakeUserHub]:
    """The fake UserHub over real HTTP on loopback, accepting the fixture key."""
    with FakeUserHub(admin_keys=[ADMIN_KEY], seed=HUB_SEED) as server:
        yield server


@pytest.fixture
def pipeline(aws: Stack, hub: FakeUserHub) -> Iterator[Stack]:
    """moto queues + fake UserHub, with the test stage's variables pointing at both."""
    with patched_environ(stage_environ(hub.url)):
        yield aws


@pytest.fixture
def project(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer
) -> Path:
    """A throwaway project dir (a copy of the repo's config.json), made current, with a clean moto; parametrize
    it indirectly with `{"with_app": True}` for one `chalice deploy` can package."""
    return make_project(tmp_path, monkeypatch, moto_server, **getattr(request, "param", {}))


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: the worst SQS can do to us."""
    with tcp_server(lambda _conn, _stop: None) as url:
        yield url
    wait_for_sender_threads()
