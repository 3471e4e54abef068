"""post_auth: enqueue one SIGNIN and give Cognito its event back, whatever SQS does."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
from chalicelib import post_auth
from chalicelib.messages import EventType, Source, parse_message
from tests.support import CONNECTION_ID, POOL_ID, signin_event, tcp_server, wait_for_sender_threads
from userhub_sync.local.moto import free_port, patched_environ
from userhub_sync.scenarios.rig import log_level


def queued(stack) -> list[dict]:
    messages = stack.sqs.receive_message(QueueUrl=stack.queues.events_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


# the deployed defaults (conftest's stage_environ gives other tests a roomier budget)
PRODUCTION_BUDGET = {"SQS_CONNECT_TIMEOUT": None, "SQS_READ_TIMEOUT": None, "POST_AUTH_BUDGET_SECONDS": None}
COGNITO_SAFE_SECONDS = 3.0  # the 1.8 s budget plus slack for a loaded machine; Cognito's limit is 5 s


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"level"')]


def recovery_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"recovery"')]


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


def emf_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def test_a_plain_success_writes_nothing_but_counts_enqueued_in_the_totals(pipeline, capsys) -> None:
    """A line per successful sign-in, then its EMF line, were dollars a month each at 1 M sign-ins a day; CloudWatch
    counts those sign-ins as Invocations − Errors − enqueue_failed − trigger_ignored, the local totals still count
    every one."""
    capsys.readouterr()
    before = post_auth.metrics.totals.get("enqueued", 0)
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}), log_level(logging.INFO):
        assert app.post_auth(signin_event("quiet"), None)
        out = capsys.readouterr()
    assert out.out == "" and log_lines(out.err) == []
    assert post_auth.metrics.totals["enqueued"] == before + 1

    with patched_environ({"USERHUB_SYNC_METRICS": "on"}), log_level(logging.DEBUG):  # on demand: LOG_LEVEL=DEBUG
        app.post_auth(signin_event("loud"), None)
        out = capsys.readouterr()
    assert [(line["level"], line["message"], line["user"]) for line in log_lines(out.err)] == [
        ("DEBUG", "enqueued", "loud")
    ]
    assert emf_lines(out.out) == []
    assert [b["username"] for b in queued(pipeline)] == ["quiet", "loud"]
    assert post_auth.metrics.totals["enqueued"] == before + 2


def test_an_ignored_trigger_source_writes_its_metrics_line(pipeline, capsys) -> None:
    """trigger_ignored is one of the counts the dashboard subtracts from Invocations: it must reach CloudWatch."""
    capsys.readouterr()
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        app.post_auth(signin_event("x") | {"triggerSource": "PreSignUp_SignUp"}, None)
    [emf] = emf_lines(capsys.readouterr().out)
    assert (emf["service"], emf["trigger_ignored"]) == ("post_auth", 1) and "enqueued" not in emf


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


def test_refused_connection_is_retried_counted_and_leaves_a_recovery_record(pipeline, capsys) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with patched_environ({"AWS_ENDPOINT_URL": endpoint, **PRODUCTION_BUDGET, "USERHUB_SYNC_METRICS": "on"}):
        post_auth.queue.reset()
        before = dict(post_auth.metrics.totals)
        started = time.monotonic()
        event = signin_event("dave")
        assert app.post_auth(event, None) is event
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    totals = post_auth.metrics.totals
    for name in ("enqueue_retried", "enqueue_failed", "recovery_record_written"):
        assert totals[name] == before.get(name, 0) + 1, name
    captured = capsys.readouterr()
    lines = log_lines(captured.err)
    [retry] = [line for line in lines if line["message"].startswith("enqueue attempt 1 failed")]
    [failure] = [line for line in lines if line["message"].startswith("enqueue failed twice")]
    for line in (retry, failure):
        assert line["user"] == "dave" and line["pool"] == POOL_ID and "EndpointConnectionError" in line["reason"]
    assert failure["reason"].count("EndpointConnectionError") == 2  # both attempts, each with its reason
    [record] = recovery_records(captured.out)
    assert record["message"]["username"] == "dave" and record["sub"] == event["request"]["userAttributes"]["sub"]
    [emf] = emf_lines(captured.out)  # a failure keeps its metrics line: the dashboard subtracts enqueue_failed
    assert (emf["enqueue_retried"], emf["enqueue_failed"], emf["recovery_record_written"]) == (1, 1, 1)
    assert "enqueued" not in emf


@pytest.mark.parametrize("queue_url_known", [True, False])
def test_black_holed_sqs_ends_within_the_budget_with_a_recovery_record(
    pipeline, black_hole: str, queue_url_known: bool, capsys
) -> None:
    url = f"{black_hole}/123456789012/test-events" if queue_url_known else None
    with patched_environ({"AWS_ENDPOINT_URL": black_hole, "EVENTS_QUEUE_URL": url, **PRODUCTION_BUDGET}):
        post_auth.queue.reset()
        started = time.monotonic()
        event = signin_event("erin")
        assert app.post_auth(event, None) is event
        elapsed = time.monotonic() - started
    assert elapsed < COGNITO_SAFE_SECONDS
    captured = capsys.readouterr()
    [failure] = [line for line in log_lines(captured.err) if line["message"].startswith("enqueue failed twice")]
    assert failure["reason"].count("no answer within") == 2  # cut by the budget, not by botocore
    [record] = recovery_records(captured.out)
    assert record["message"]["username"] == "erin"


@pytest.fixture
def slow_drip() -> Iterator[str]:
    """An SQS endpoint that answers one byte every 0.2 s for 8 s: botocore's per-read timeout never fires."""

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(1)
        with contextlib.suppress(OSError):
            conn.recv(65536)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"a" * 100
        ends = time.monotonic() + 8
        for byte in response:
            if stop.is_set() or time.monotonic() > ends:
                break
            with contextlib.suppress(OSError):
                conn.send(bytes([byte]))
            time.sleep(0.2)

    with tcp_server(drip) as url:
        yield url
    wait_for_sender_threads()


def test_slow_drip_is_cut_at_the_budget_and_held_threads_never_block_a_sign_in(pipeline, slow_drip, capsys) -> None:
    """Before the wall-clock bound, one sign-in lasted as long as the drip (8 s here, 8.4 s in the issue)."""
    url = f"{slow_drip}/123456789012/test-events"
    with patched_environ({"AWS_ENDPOINT_URL": slow_drip, "EVENTS_QUEUE_URL": url, **PRODUCTION_BUDGET}):
        post_auth.queue.reset()
        for name in ("drip-1", "drip-2", "drip-3"):
            started = time.monotonic()
            event = signin_event(name)
            assert app.post_auth(event, None) is event
            assert time.monotonic() - started < COGNITO_SAFE_SECONDS, name
    captured = capsys.readouterr()
    assert [r["message"]["username"] for r in recovery_records(captured.out)] == ["drip-1", "drip-2", "drip-3"]
    failures = [line for line in log_lines(captured.err) if line["message"].startswith("enqueue failed twice")]
    # two abandoned calls per sign-in still hold their threads: the third sign-in goes straight to its record
    assert "no answer within" in failures[0]["reason"]
    assert f"all {post_auth.SENDER_THREADS} sender threads still held" in failures[2]["reason"]


class FlakyProxy:
    """A TCP proxy to moto whose next connection, once `black_hole_next()` is called, is accepted and never
    answered (a dead NAT entry, a stuck load balancer node); later connections get through."""

    def __init__(self, upstream: str) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.holes = 0
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def black_hole_next(self) -> None:
        self.holes = 1

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client = self.server.accept()[0]
            except OSError:
                continue
            self.sockets.append(client)
            if self.holes:
                self.holes -= 1
                continue
            upstream = socket.create_connection(self.upstream)
            self.sockets.append(upstream)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stop.set()
        for sock in (*self.sockets, self.server):
            with contextlib.suppress(OSError):
                sock.close()


def test_a_connection_that_never_answers_is_retried_on_a_fresh_client(pipeline, capsys) -> None:
    proxy = FlakyProxy(pipeline.moto.endpoint)
    try:
        settings = {"AWS_ENDPOINT_URL": proxy.url, **PRODUCTION_BUDGET, "POST_AUTH_BUDGET_SECONDS": "4"}
        with patched_environ(settings | {"USERHUB_SYNC_METRICS": "on"}):
            post_auth.queue.reset()
            app.post_auth(signin_event("before"), None)
            first_client = post_auth.queue.client
            proxy.black_hole_next()
            retried = post_auth.metrics.totals["enqueue_retried"]
            event = signin_event("after")
            assert app.post_auth(event, None) is event
    finally:
        proxy.close()
        wait_for_sender_threads()
    assert [b["username"] for b in queued(pipeline)] == ["before", "after"]  # enqueued once, by the second attempt
    assert post_auth.metrics.totals["enqueue_retried"] == retried + 1
    assert post_auth.queue.client is not first_client  # a new client: its own connections, kept for the next sign-in
    captured = capsys.readouterr()
    assert recovery_records(captured.out) == []
    [retry] = [line for line in log_lines(captured.err) if line["message"].startswith("enqueue attempt 1 failed")]
    assert retry["user"] == "after" and retry["pool"] == POOL_ID and "ReadTimeoutError" in retry["reason"]
    # "before" was a plain success (no line); "after" succeeded on its second attempt: one line, with both counts
    [emf] = emf_lines(captured.out)
    assert (emf["enqueue_retried"], emf["enqueued"]) == (1, 1) and "enqueue_failed" not in emf


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


class LambdaContextStandIn:
    """The two fields of Lambda's context post_auth reads (chalice's local LambdaContext has no ARN)."""

    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:userhub-sync-test-post_auth"
    function_name = "userhub-sync-test-post_auth"


@pytest.mark.parametrize(
    ("handler", "trigger", "kind"),
    [
        ("post_auth", "PostAuthentication_Authentication", "SIGNIN"),
        ("post_confirmation", "PostConfirmation_ConfirmSignUp", "SIGNUP"),
    ],
)
def test_both_entry_points_build_the_queue_url_from_the_function_arn(pipeline, handler, trigger, kind) -> None:
    """Deployed, the role may only SendMessage: app.py must hand the context down, and no GetQueueUrl may happen.

    AWS_ENDPOINT_URL_SQS (not AWS_ENDPOINT_URL, which means "ask the local endpoint") sends the client to moto, so
    the URL built from the ARN (https://sqs.us-east-1.amazonaws.com/123456789012/test-events) really is used.
    """
    calls: list[tuple[str, str | None]] = []

    def record(params: dict, model, **_: object) -> None:
        calls.append((model.name, params.get("QueueUrl")))

    session = boto3._get_default_session()
    session.events.register("provide-client-params.sqs", record)
    try:
        with patched_environ({"AWS_ENDPOINT_URL": None, "AWS_ENDPOINT_URL_SQS": pipeline.moto.endpoint}):
            post_auth.queue.reset()
            event = signin_event("arn-user") | {"triggerSource": trigger}
            assert getattr(app, handler)(event, LambdaContextStandIn()) is event
    finally:
        session.events.unregister("provide-client-params.sqs", record)
        post_auth.queue.reset()
    assert calls == [("SendMessage", "https://sqs.us-east-1.amazonaws.com/123456789012/test-events")]
    assert [(b["username"], b["type"]) for b in queued(pipeline)] == [("arn-user", kind)]


@pytest.fixture
def never_connects() -> Iterator[str]:
    """A port whose accept backlog is full: SYNs are dropped, so connecting hangs until the connect timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=1)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    filler.close()
    server.close()
    wait_for_sender_threads()


def test_the_connect_timeout_is_half_a_second_and_ends_an_attempt(pipeline, never_connects, capsys) -> None:
    url = f"{never_connects}/123456789012/test-events"
    # a roomy budget (2 s per attempt), so that only the connect timeout can end an attempt early
    with patched_environ({"AWS_ENDPOINT_URL": never_connects, "EVENTS_QUEUE_URL": url, **PRODUCTION_BUDGET}):
        config = post_auth._new_client().meta.config
        assert (config.connect_timeout, config.read_timeout) == (0.5, 1.0)
        assert config.retries["total_max_attempts"] == 1  # botocore must not retry inside our budget
        with patched_environ({"POST_AUTH_BUDGET_SECONDS": "4"}):
            post_auth.queue.reset()
            app.post_auth(signin_event("connect"), None)
    [failure] = [
        line for line in log_lines(capsys.readouterr().err) if line["message"].startswith("enqueue failed twice")
    ]
    assert failure["reason"].count("ConnectTimeoutError") == 2


def test_the_deployed_budget_and_timeouts() -> None:
    with patched_environ(PRODUCTION_BUDGET):
        assert post_auth._seconds("POST_AUTH_BUDGET_SECONDS") == 1.8
        assert post_auth._seconds("SQS_CONNECT_TIMEOUT") == 0.5
        assert post_auth._seconds("SQS_READ_TIMEOUT") == 1.0
    assert post_auth.FIRST_ATTEMPT_SHARE == 0.5


@pytest.mark.parametrize("name", list(post_auth.DEFAULTS))
@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("4", True),
        ("0.05", True),
        ("4.01", False),
        ("5", False),
        ("0", False),
        ("-1", False),
        ("nan", False),
        ("inf", False),
        ("soon", False),
        ("", False),
    ],
)
def test_settings_outside_zero_to_four_seconds_fall_back_to_the_default(name, value, accepted, caplog) -> None:
    """Cognito gives the trigger 5 s in all: no setting may approach it; a bad one must not break sign-in."""
    with patched_environ({name: value}):
        assert post_auth._seconds(name) == (float(value) if accepted else post_auth.DEFAULTS[name])
    complaints = [r for r in caplog.records if r.getMessage() == "ignoring invalid setting"]
    assert [r.variable for r in complaints] == ([] if accepted else [name])
