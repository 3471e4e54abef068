"""post_auth: enqueue one SIGNIN and give Cognito its event back, whatever SQS does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
from chalicelib import post_auth
from chalicelib.messages import EventType, Source, parse_message
from tests.conftest import CONNECTION_ID, POOL_ID, signin_event
from userhub_sync.local import free_port, patched_environ


def queued(stack) -> list[dict]:
    messages = stack.sqs.receive_message(QueueUrl=stack.queues.events_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_signin_is_enqueued_and_event_returned_unchanged(pipeline) -> None:
    event = signin_event("alice@example.com")
    original = json.loads(json.dumps(event))
    assert app.post_auth(event, None) is event
    assert event == original
    [body] = queued(pipeline)
    message = parse_message(json.dumps(body))  # what post_auth writes is what deliver reads
    assert message.type is EventType.SIGNIN
    assert message.source is Source.POST_AUTH
    assert (message.username, message.user_pool_id, message.connection_id) == (
        "alice@example.com",
        POOL_ID,
        CONNECTION_ID,
    )
    assert body["v"] == 1 and len(body["id"]) == 32


def test_post_confirmation_sends_signup(pipeline) -> None:
    event = signin_event("newbie") | {"triggerSource": "PostConfirmation_ConfirmSignUp"}
    assert app.post_confirmation(event, None) is event
    assert [b["type"] for b in queued(pipeline)] == ["SIGNUP"]


@pytest.mark.parametrize("source", ["PostConfirmation_ConfirmForgotPassword", "PreSignUp_SignUp", None, 42])
def test_other_trigger_sources_pass_through(pipeline, source: object) -> None:
    event = signin_event("bob") | {"triggerSource": source}
    assert app.post_auth(event, None) is event
    assert queued(pipeline) == []


def test_malformed_connection_id_is_left_to_deliver(pipeline) -> None:
    with patched_environ({"USERHUB_CONNECTION_ID": "not-a-connection"}):
        app.post_auth(signin_event("carol"), None)
    [body] = queued(pipeline)
    assert body["connection_id"] is None  # deliver fills in its own validated setting; never poison


def test_refused_connection_returns_at_once_and_is_counted(pipeline, capsys) -> None:
    with patched_environ(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "SQS_CONNECT_TIMEOUT": None,
            "SQS_READ_TIMEOUT": None,
            "POST_AUTH_BUDGET_SECONDS": None,
        }
    ):
        post_auth.queue.reset()
        before = post_auth.metrics.totals["enqueue_failed"]
        started = time.monotonic()
        event = signin_event("dave")
        assert app.post_auth(event, None) is event
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert post_auth.metrics.totals["enqueue_failed"] == before + 1
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [failure] = [line for line in lines if line["message"].startswith("enqueue failed")]
    assert failure["user"] == "dave" and failure["pool"] == POOL_ID and "EndpointConnectionError" in failure["reason"]


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


@pytest.mark.parametrize("queue_url_known", [True, False])
def test_black_holed_sqs_returns_under_two_seconds(pipeline, black_hole: str, queue_url_known: bool, capsys) -> None:
    url = f"{black_hole}/123456789012/test-events" if queue_url_known else None
    production_budget = {"SQS_CONNECT_TIMEOUT": None, "SQS_READ_TIMEOUT": None, "POST_AUTH_BUDGET_SECONDS": None}
    with patched_environ({"AWS_ENDPOINT_URL": black_hole, "EVENTS_QUEUE_URL": url, **production_budget}):
        post_auth.queue.reset()
        started = time.monotonic()
        event = signin_event("erin")
        assert app.post_auth(event, None) is event
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert "ReadTimeoutError" in capsys.readouterr().err


def test_warm_calls_reuse_client_and_queue_url(pipeline) -> None:
    calls: list[str] = []
    app.post_auth(signin_event("first"), None)
    post_auth.queue.client.meta.events.register("before-call.sqs", lambda model, **_: calls.append(model.name))
    for name in ("second", "third"):
        app.post_auth(signin_event(name), None)
    assert calls == ["SendMessage", "SendMessage"]  # no GetQueueUrl after the first invocation


def test_missing_queue_variable_never_raises(pipeline) -> None:
    with patched_environ({"EVENTS_QUEUE_NAME": None, "EVENTS_QUEUE_URL": None}):
        post_auth.queue.reset()
        event = signin_event("frank")
        assert app.post_auth(event, None) is event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.one_of(st.none(), st.integers(), st.text(max_size=3000), st.just("")),
    pool=st.one_of(st.none(), st.text(max_size=60), st.just(POOL_ID)),
    attributes=st.dictionaries(st.text(max_size=50), json_values, max_size=8),
    extra=st.dictionaries(st.sampled_from(["request", "response", "callerContext", "version"]), json_values),
    drop=st.sets(st.sampled_from(["userName", "userPoolId", "request", "triggerSource", "region"])),
)
def test_fuzzed_events_never_raise(pipeline, user, pool, attributes, extra, drop) -> None:
    event = signin_event("x") | {"userName": user, "userPoolId": pool} | extra
    if isinstance(event.get("request"), dict):
        event["request"]["userAttributes"] = attributes
    for key in drop:
        event.pop(key, None)
    snapshot = json.dumps(event, sort_keys=True, default=str)
    assert app.post_auth(event, None) is event
    assert json.dumps(event, sort_keys=True, default=str) == snapshot


@pytest.mark.parametrize("event", [None, [], "text", 7, {"triggerSource": []}, {"triggerSource": {"a": 1}}])
def test_non_dict_events_never_raise(event: object) -> None:
    assert app.post_auth(event, None) is event


def test_post_auth_import_path_stays_light(tmp_path) -> None:
    """Importing app and running post_auth loads neither pydantic nor httpx (measured cost: docs/PERFORMANCE.md)."""
    code = (
        "import sys, app\n"
        "app.post_auth({'triggerSource': 'PostAuthentication_Authentication'}, None)\n"
        "heavy = [m for m in ('pydantic', 'httpx', 'chalicelib.delivery', 'chalicelib.userhub') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=".",
        env={"PATH": "", "AWS_DEFAULT_REGION": "us-east-1", "USERHUB_SYNC_METRICS": "off"},
    )
    assert out.stdout.strip() == "[]"


def test_read_timeout_as_long_as_the_budget_still_enqueues(pipeline) -> None:
    """The budget stops a send from starting late; it must not stop every cold start when timeouts are generous."""
    with patched_environ({"SQS_READ_TIMEOUT": "4", "POST_AUTH_BUDGET_SECONDS": "4", "EVENTS_QUEUE_URL": None}):
        post_auth.queue.reset()
        app.post_auth(signin_event("generous"), None)
    assert [b["username"] for b in queued(pipeline)] == ["generous"]


def test_in_lambda_the_queue_url_comes_from_the_function_arn() -> None:
    """Deployed, post_auth's role may only SendMessage: the URL is built from its ARN, never looked up."""

    class Context:
        invoked_function_arn = "arn:aws:lambda:eu-west-1:210987654321:function:userhub-sync-prod-post_auth"

    with patched_environ({"AWS_ENDPOINT_URL": None, "EVENTS_QUEUE_NAME": "userhub-sync-prod-events"}):
        assert post_auth.queue_url_from_context(Context()) == (
            "https://sqs.eu-west-1.amazonaws.com/210987654321/userhub-sync-prod-events"
        )
        assert post_auth.queue_url_from_context(None) is None
    with patched_environ({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}):  # a local endpoint: ask it instead
        assert post_auth.queue_url_from_context(Context()) is None
