"""Every way deliver could lose a message, or let one record break its batch, closed and pinned.

Driven through `app.deliver` (the Chalice handler) with a Lambda-shaped context, over moto's SQS and the fake
UserHub on real HTTP. docs/RELIABILITY.md's "loss paths closed" table points here.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import boto3
import pytest

import app
from chalicelib.dead_letter import FailureKind
from chalicelib.delivery import Deliverer, RetriesPending, reset_deliverer
from chalicelib.delivery.calls import NOT_STARTED, Transient
from chalicelib.delivery.plan import DeadLetter, Delay, Limits, QueueFacts, plan
from chalicelib.delivery.policy import RetryPolicy
from chalicelib.delivery.records import Record
from chalicelib.secrets import AdminKeyProvider
from chalicelib.settings import get_settings, reset_settings
from chalicelib.sqs_limits import PAYLOAD_BYTES, allowed_text
from tests.support import (
    ADMIN_KEY,
    POOL_ID,
    attrs,
    capture_visibility,
    depth,
    message_body,
    receive_all,
    receive_event,
    send,
)
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import MOTO_ACCOUNT, patched_environ

DAY = 86_400


def deliver(event: dict[str, Any], seconds: float = 60) -> dict[str, Any]:
    """The Chalice handler, as Lambda calls it, with an invocation of `seconds`."""
    return app.deliver(event, LambdaContext("deliver", seconds))


@pytest.fixture
def container() -> Iterator[Callable[..., None]]:
    """`container(NAME=value, ...)`: fresh settings and deliverer with these variables, as a cold start has."""
    with ExitStack() as stack:

        def start(**variables: str | None) -> None:
            stack.enter_context(patched_environ(variables))
            reset_settings()
            reset_deliverer()

        yield start
    reset_settings()
    reset_deliverer()


def ids_by_user(event: dict[str, Any]) -> dict[str, str]:
    return {json.loads(r["body"])["username"]: r["messageId"] for r in event["Records"]}


def test_a_retry_after_past_the_retention_dead_letters_now_with_the_reason(pipeline, hub) -> None:
    """SQS would delete the message at the end of its retention, never delivered and never dead-lettered."""
    sqs, queues = pipeline.sqs, pipeline.queues
    sqs.set_queue_attributes(QueueUrl=queues.events_url, Attributes={"MessageRetentionPeriod": str(2 * 3600)})
    hub.add_fault(Fault(status=429, retry_after=str(3 * 3600), match_external_id="too-late"))
    hub.add_fault(Fault(status=429, retry_after="600", match_external_id="in-time"))
    send(sqs, queues.events_url, message_body("too-late"), message_body("in-time"))
    event = pipeline.events_batch(2)

    result = deliver(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": ids_by_user(event)["in-time"]}]}
    [dead] = pipeline.dead_letters()
    failure = attrs(dead)
    assert (failure["failure_kind"], failure["failure_status"], failure["username"]) == ("exhausted", "429", "too-late")
    assert "retention" in failure["failure_reason"] and "2:00:00" in failure["failure_reason"]


@pytest.mark.parametrize(
    ("age_days", "retry_after_hours", "receive", "expected"),
    [
        (3.6, 8, 12, "dead"),  # the 13th attempt would fall after 4 days: the case SQS used to delete unseen
        (3.0, 8, 12, "delay"),  # 3 d + 8 h still ends before 4 d − 1 h
        (3.97, None, 5, "dead"),  # even an 8-minute backoff would start inside the last hour
        (0.0, 12, 1, "delay"),
    ],
)
def test_plan_keeps_every_next_attempt_inside_the_retention(
    age_days: float, retry_after_hours: float | None, receive: int, expected: str
) -> None:
    now = 1_800_000_000.0
    record = Record("m", "rh", "{}", receive, now - age_days * DAY, None)
    failure = Transient("HTTP 429", 429, retry_after=retry_after_hours * 3600 if retry_after_hours else None)
    limits = Limits(RetryPolicy(base=30, cap=43_200, jitter=0), retention_margin=3600)
    action = plan(record, failure, None, QueueFacts(13, 4 * DAY), limits, now=now, rng=random.Random(0))
    if expected == "dead":
        assert isinstance(action, DeadLetter) and action.info.kind is FailureKind.EXHAUSTED
        assert "retention" in action.info.reason
    else:
        assert isinstance(action, Delay) and now + action.seconds < now - age_days * DAY + 4 * DAY - 3600


@pytest.fixture
def in_lambda(pipeline) -> Iterator[dict[str, str]]:
    """deliver running as a deployed function, with its SQS mapping in moto (created disabled: moto would otherwise
    invoke the function inline on every send, which this test does not want)."""
    iam, lam = boto3.client("iam"), boto3.client("lambda")
    role = iam.create_role(RoleName="deliver-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "")
    name = "userhub-sync-test-deliver"
    lam.create_function(
        FunctionName=name, Runtime="python3.11", Role=role, Handler="app.deliver", Code={"ZipFile": code.getvalue()}
    )
    queue_arn = f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:test-events"
    mapping = lam.create_event_source_mapping(EventSourceArn=queue_arn, FunctionName=name, Enabled=False)
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": name}):
        reset_deliverer()
        yield {"uuid": mapping["UUID"], "function": name}
    reset_deliverer()


def test_without_report_batch_item_failures_deliver_keeps_the_retries_itself(pipeline, hub, in_lambda) -> None:
    """Lambda would delete every record of a normal return: deliver deletes what is settled and fails instead."""
    sqs, queues = pipeline.sqs, pipeline.queues
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    send(sqs, queues.events_url, message_body("fine"), message_body("flaky"))
    event = pipeline.events_batch(2)

    with pytest.raises(RetriesPending, match="1 of 2 records must be retried"):
        deliver(event)

    assert [e.external_id for e in hub.events()] == ["fine"]
    assert depth(queues.events_url) == 1, "the delivered record is deleted; the retry is kept"
    time.sleep(2.1)  # RETRY_BASE_SECONDS=1 (≤ 2 s with jitter): back after its own backoff, not the queue's 30 s
    [again] = receive_all(sqs, queues.events_url)
    assert json.loads(again["Body"])["username"] == "flaky"


def test_with_report_batch_item_failures_deliver_answers_with_the_partial_response(pipeline, hub, in_lambda) -> None:
    boto3.client("lambda").update_event_source_mapping(
        UUID=in_lambda["uuid"], FunctionResponseTypes=["ReportBatchItemFailures"]
    )
    sqs, queues = pipeline.sqs, pipeline.queues
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    send(sqs, queues.events_url, message_body("fine"), message_body("flaky"))
    event = pipeline.events_batch(2)
    assert deliver(event) == {"batchItemFailures": [{"itemIdentifier": ids_by_user(event)["flaky"]}]}


def test_an_unknown_mapping_counts_as_one_without_partial_responses(pipeline, hub, in_lambda) -> None:
    boto3.client("lambda").delete_event_source_mapping(UUID=in_lambda["uuid"])
    sqs, queues = pipeline.sqs, pipeline.queues
    hub.add_fault(Fault(status=503))
    send(sqs, queues.events_url, message_body("flaky"))
    with pytest.raises(RetriesPending):
        deliver(pipeline.events_batch(1))


def test_a_batch_without_retries_returns_normally_whatever_the_mapping(pipeline, hub, in_lambda) -> None:
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("fine"))
    assert deliver(pipeline.events_batch(1)) == {"batchItemFailures": []}


def _one_bad_among_good(pipeline, hub, bad_body: str) -> tuple[dict[str, Any], dict[str, str]]:
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("good-1"), bad_body, message_body("good-2"))
    event = pipeline.events_batch(3)
    return event, {r["body"]: r["messageId"] for r in event["Records"]}


@pytest.mark.parametrize(
    "fault",
    [
        # a 502 that claims gzip and sends plain text: httpx raises DecodingError reading it
        Fault(status=502, body_format="text", headers={"Content-Encoding": "gzip"}, match_external_id="bad"),
        # a load balancer redirecting: UserHub never redirects its API, so this is a setting to fix, not a rejection
        Fault(status=301, headers={"Location": "https://elsewhere.example/"}, match_external_id="bad"),
        Fault(status=307, body_format="html", match_external_id="bad"),
    ],
    ids=["undecodable-502", "301-redirect", "307-redirect"],
)
def test_an_odd_answer_is_retried_for_that_record_alone(pipeline, hub, fault: Fault, caplog) -> None:
    hub.add_fault(fault)
    bad = message_body("bad")
    event, ids = _one_bad_among_good(pipeline, hub, bad)
    with caplog.at_level(logging.WARNING, logger="userhub_sync"):
        result = deliver(event)
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[bad]}]}
    assert sorted(e.external_id for e in hub.events()) == ["good-1", "good-2"]
    assert pipeline.dead_letters() == []
    if 300 <= fault.status < 400:
        assert any("USERHUB_API_URL" in str(getattr(r, "error", "")) for r in caplog.records)


def test_a_connection_id_of_70000_characters_is_poison_not_a_crash(pipeline, hub) -> None:
    bad = message_body("long-connection", connection_id="conn_" + "x" * 70_000)
    event, _ = _one_bad_among_good(pipeline, hub, bad)
    assert deliver(event) == {"batchItemFailures": []}
    assert sorted(e.external_id for e in hub.events()) == ["good-1", "good-2"]
    [dead] = pipeline.dead_letters()
    assert attrs(dead)["failure_kind"] == "poison" and "connection_id" in attrs(dead)["failure_reason"]


@pytest.mark.parametrize(
    "text",
    ["lone \ud800 surrogate", "nul \x00 and escape \x1b[31m", "reversed \ufffe and \uffff"],
    ids=["lone-surrogate", "control-characters", "non-characters"],
)
def test_an_error_text_sqs_would_refuse_still_reaches_the_dlq(pipeline, hub, text: str) -> None:
    hub.add_fault(Fault(status=400, message=text, reason=f"R{text}", match_external_id="bad"))
    bad = message_body("bad")
    event, _ = _one_bad_among_good(pipeline, hub, bad)
    assert deliver(event) == {"batchItemFailures": []}
    [dead] = pipeline.dead_letters()
    failure = attrs(dead)
    assert failure["failure_kind"] == "permanent" and failure["failure_status"] == "400"
    assert failure["failure_detail"].endswith(allowed_text(text).split()[-1]) or "\ufffd" in failure["failure_detail"]
    assert all(allowed_text(value) == value for value in failure.values())


def test_an_unexpected_exception_fails_only_its_own_record(pipeline, hub) -> None:
    """No real fault produces an exception the client does not know, which is the point: one is injected here."""
    deliverer = Deliverer(get_settings(), sqs=pipeline.sqs)
    original = deliverer.client.report_event

    async def explode_for_one(username: str, *args: Any, **kwargs: Any) -> None:
        if username == "bad":
            raise RuntimeError("something nobody planned for")
        await original(username, *args, **kwargs)

    deliverer.client.report_event = explode_for_one  # type: ignore[method-assign]
    bad = message_body("bad")
    event, ids = _one_bad_among_good(pipeline, hub, bad)
    result = deliverer.handle(event, lambda: 60_000)
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[bad]}]}
    assert sorted(e.external_id for e in hub.events()) == ["good-1", "good-2"]
    assert deliverer.metrics.totals["unexpected_error"] == 1


def test_an_admin_key_with_a_pasted_invisible_character_is_retried_and_said_loudly(
    pipeline, hub, container, caplog
) -> None:
    """A configuration error: every message fails until an operator fixes it, so none may be dead-lettered."""
    container(USERHUB_ADMIN_KEY=ADMIN_KEY[:5] + "\u200b" + ADMIN_KEY[5:])
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("a"), message_body("b"))
    event = pipeline.events_batch(2)
    with caplog.at_level(logging.ERROR, logger="userhub_sync"):
        result = deliver(event)
    assert len(result["batchItemFailures"]) == 2
    assert pipeline.dead_letters() == []
    [loud] = [r for r in caplog.records if r.getMessage().startswith("configuration error")]
    assert "'\\u200b' at position 5" in str(getattr(loud, "error", ""))
    assert ADMIN_KEY[5:] not in caplog.text and ADMIN_KEY[:5] + "\u200b" not in caplog.text


def test_a_slow_drip_answer_cannot_hold_deliver_past_its_invocation(pipeline, hub) -> None:
    """httpx's read timeout applies per read: one byte every 0.1 s would keep a call going for ~10 s."""
    hub.add_fault(Fault(status=200, message="x" * 100, drip_ms=100))
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("dripped"))
    event = pipeline.events_batch(1)
    started = time.monotonic()
    result = deliver(event, seconds=3)
    assert time.monotonic() - started < 3, "deliver outlived its invocation: Lambda would have killed it"
    assert len(result["batchItemFailures"]) == 1


def test_the_handler_honours_the_context_it_is_given(pipeline, hub) -> None:
    """Through app.deliver: a handler that dropped the context would assume 900 s and wait out a slow UserHub."""
    hub.add_fault(Fault(kind="latency", latency_ms=4000))
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("slow"))
    started = time.monotonic()
    result = deliver(pipeline.events_batch(1), seconds=2.5)
    assert time.monotonic() - started < 2.5
    assert len(result["batchItemFailures"]) == 1


def test_the_read_timeout_setting_bounds_a_call_even_with_time_to_spare(pipeline, hub, container) -> None:
    container(USERHUB_READ_TIMEOUT="0.3")
    hub.add_fault(Fault(kind="latency", latency_ms=3000))
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("slow"))
    started = time.monotonic()
    deliver(pipeline.events_batch(1), seconds=60)
    assert time.monotonic() - started < 2, "a 0.3 s read timeout was stretched to the invocation's time"


def test_settling_calls_have_short_timeouts(pipeline) -> None:
    config = Deliverer(get_settings()).sqs.meta.config
    assert config.connect_timeout <= 1 and config.read_timeout <= 3
    assert config.retries["total_max_attempts"] <= 2


def test_a_401_a_fresh_key_does_not_cure_costs_one_fetch_a_minute(pipeline, hub, container) -> None:
    boto3.client("ssm").put_parameter(Name="/test/admin-key", Value=ADMIN_KEY, Type="SecureString")
    container(USERHUB_ADMIN_KEY=None, USERHUB_ADMIN_KEY_PARAMETER="/test/admin-key")
    hub.set_admin_keys(["a_key_nobody_has_0123456789"])
    now = [1000.0]
    settings = get_settings()
    sqs, queues = pipeline.sqs, pipeline.queues
    deliverer = Deliverer(settings, sqs=sqs, keys=AdminKeyProvider(settings, clock=lambda: now[0]))
    for _ in range(2):
        send(sqs, queues.events_url, *(message_body(f"user{i}") for i in range(10)))
        result = deliverer.handle(pipeline.events_batch(10), lambda: 60_000)
        assert len(result["batchItemFailures"]) == 10
        now[0] += 30
    assert deliverer.keys.fetches == 2, "the first load and one refresh, for twenty 401s in a minute"
    now[0] += 31
    send(sqs, queues.events_url, message_body("later"))
    deliverer.handle(pipeline.events_batch(1), lambda: 60_000)
    assert deliverer.keys.fetches == 3, "a minute later, a 401 may fetch again"


def test_a_record_never_attempted_on_its_last_receive_reaches_the_dlq_with_the_reason(pipeline, hub) -> None:
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("starved"))
    event = pipeline.events_batch(1)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "4"  # the queue's maxReceiveCount in conftest
    assert deliver(event, seconds=1) == {"batchItemFailures": []}
    assert hub.journal() == []
    [dead] = pipeline.dead_letters()
    assert attrs(dead)["failure_kind"] == "exhausted"
    assert "never attempted on its last allowed receive (4)" in attrs(dead)["failure_reason"]


def test_plan_releases_a_record_never_started_at_once() -> None:
    record = Record("m", "rh", "{}", 2, 1_800_000_000.0, None)
    limits = Limits(RetryPolicy(), retention_margin=3600)
    action = plan(record, NOT_STARTED, None, QueueFacts(13, 4 * DAY), limits, now=1_800_000_060.0, rng=random.Random())
    assert action == Delay(0, "not started: the invocation ran low on time")


def test_a_failed_visibility_change_still_keeps_the_record(pipeline, hub, caplog) -> None:
    sqs, queues = pipeline.sqs, pipeline.queues
    hub.add_fault(Fault(status=503))
    send(sqs, queues.events_url, message_body("x"))
    event = pipeline.events_batch(1)

    def break_it(params: dict[str, Any], **_: Any) -> None:
        params["Entries"][0]["ReceiptHandle"] = "not-a-receipt-handle"

    sqs.meta.events.register("provide-client-params.sqs.ChangeMessageVisibilityBatch", break_it)
    with caplog.at_level(logging.WARNING, logger="userhub_sync"):
        result = Deliverer(get_settings(), sqs=sqs).handle(event, lambda: 60_000)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert any(r.getMessage() == "visibility not changed" for r in caplog.records)


def test_every_retry_of_a_batch_gets_its_own_visibility(pipeline, hub) -> None:
    """Entry ids are distinct within each request: SQS rejects a batch whose ids repeat."""
    sqs, queues = pipeline.sqs, pipeline.queues
    seen = capture_visibility(sqs)
    hub.add_fault(Fault(status=503))
    send(sqs, queues.events_url, *(message_body(f"u{i}") for i in range(12)))
    event = pipeline.events_batch(12)
    result = Deliverer(get_settings(), sqs=sqs).handle(event, lambda: 60_000)
    assert len(result["batchItemFailures"]) == 12 and len(seen) == 12
    time.sleep(0.2)
    assert sqs.receive_message(QueueUrl=queues.events_url, MaxNumberOfMessages=10).get("Messages") is None


def test_a_queue_without_a_redrive_policy_uses_max_receive_count(pipeline, hub, container) -> None:
    container(MAX_RECEIVE_COUNT="2")
    sqs = pipeline.sqs
    url = sqs.create_queue(QueueName="no-redrive")["QueueUrl"]
    hub.add_fault(Fault(status=503))
    send(sqs, url, message_body("x"))
    event = receive_event(sqs, url, 1)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "2"
    assert deliver(event) == {"batchItemFailures": []}
    [dead] = pipeline.dead_letters()
    assert attrs(dead)["failure_kind"] == "exhausted"


def test_a_record_from_another_queue_is_settled_on_that_queue(pipeline, hub) -> None:
    sqs = pipeline.sqs
    url = sqs.create_queue(QueueName="another-events")["QueueUrl"]
    seen = capture_visibility(sqs)
    hub.add_fault(Fault(status=503))
    send(sqs, url, message_body("x"))
    event = receive_event(sqs, url, 1)
    assert event["Records"][0]["eventSourceARN"].endswith(":another-events")
    result = Deliverer(get_settings(), sqs=sqs).handle(event, lambda: 60_000)
    assert len(result["batchItemFailures"]) == 1 and len(seen) == 1
    time.sleep(2.1)  # visible again after the ≤ 2 s backoff set on that queue (its default visibility is 30 s)
    assert len(receive_all(sqs, url)) == 1


def test_retry_max_seconds_below_twelve_hours_caps_the_wait(pipeline, hub, container) -> None:
    container(RETRY_MAX_SECONDS="100", RETRY_BASE_SECONDS="30")
    sqs, queues = pipeline.sqs, pipeline.queues
    seen = capture_visibility(sqs)
    hub.add_fault(Fault(status=503))
    send(sqs, queues.events_url, message_body("x"))
    event = pipeline.events_batch(1)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"
    Deliverer(get_settings(), sqs=sqs).handle(event, lambda: 60_000)
    assert [e["VisibilityTimeout"] for e in seen] == [100]


def test_a_poison_body_at_the_size_limit_reaches_the_dlq_with_its_reason(pipeline, hub) -> None:
    sqs, queues = pipeline.sqs, pipeline.queues
    body = "{" + "x" * (PAYLOAD_BYTES - 200)  # not JSON, and too big to carry every attribute beside it
    sqs.send_message(QueueUrl=queues.events_url, MessageBody=body)
    event = pipeline.events_batch(1)
    assert deliver(event) == {"batchItemFailures": []}
    [dead] = pipeline.dead_letters()
    assert dead["Body"] == body
    assert attrs(dead)["failure_kind"] == "poison" and "not JSON" in attrs(dead)["failure_reason"]


def test_an_error_answer_without_content_type_keeps_its_text(pipeline, hub) -> None:
    hub.add_fault(Fault(status=400, message="connection disabled by admin", content_type=""))
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, message_body("x"))
    deliver(pipeline.events_batch(1))
    [dead] = pipeline.dead_letters()
    assert attrs(dead)["failure_kind"] == "permanent"
    assert "connection disabled by admin" in attrs(dead)["failure_detail"]


def test_one_call_per_user_connection_and_type(pipeline, hub) -> None:
    sqs, queues = pipeline.sqs, pipeline.queues
    send(
        sqs,
        queues.events_url,
        message_body("same", id="a"),
        message_body("same", id="b"),
        message_body("same", id="c", connection_id="conn_other"),
    )
    assert deliver(pipeline.events_batch(3)) == {"batchItemFailures": []}
    assert sorted((e.external_id, e.connection_id) for e in hub.events()) == [
        ("same", "conn_other"),
        ("same", "conn_test123"),
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"connection_id": "conn_"}, "connection_id"),
        ({"connection_id": "con_abc"}, "connection_id"),
        ({"connection_id": "conn_" + "a" * 65}, "connection_id"),
        ({"connection_id": "conn_a/b"}, "connection_id"),
        ({"username": ""}, "username"),
        ({"username": "u" * 129}, "username"),
        ({"user_pool_id": "nopool"}, "user_pool_id"),
        ({"user_pool_id": "us-east-1_" + "a" * 50}, "user_pool_id"),
        ({"id": "i" * 129}, "id"),
        ({"id": ""}, "id"),
    ],
)
def test_every_field_of_the_message_is_bounded(change: dict[str, str], problem: str) -> None:
    from chalicelib.messages import PoisonMessage, parse_message

    body = json.loads(message_body("u"))
    with pytest.raises(PoisonMessage, match=problem):
        parse_message(json.dumps(body | change))


def test_the_message_limits_admit_what_cognito_and_userhub_produce() -> None:
    from chalicelib.messages import parse_message

    body = json.loads(message_body("u" * 128))
    body |= {"connection_id": "conn_26yEiYymqy6ZmG", "user_pool_id": POOL_ID, "id": "i" * 128, "extra": {"a": 1}}
    assert parse_message(json.dumps(body)).username == "u" * 128  # and unknown fields are ignored
