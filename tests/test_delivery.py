"""deliver, driven as Lambda drives it: real SQS messages from moto (over HTTP) and the fake UserHub (over HTTP)."""

from __future__ import annotations

import json
import random

import boto3
import pytest

import app
from chalicelib.delivery import Deliverer, RetryPolicy
from chalicelib.settings import get_settings
from tests.support import (
    ADMIN_KEY,
    CONNECTION_ID,
    attrs,
    capture_visibility,
    depth,
    message_body,
    send,
)
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import patched_environ


def deliverer_with(sqs) -> Deliverer:
    return Deliverer(get_settings(), sqs=sqs, rng=random.Random(0))


def test_batch_outcomes_success_transient_permanent_poison(pipeline, hub) -> None:
    sqs = pipeline.sqs
    send(
        sqs,
        pipeline.queues.events_url,
        message_body("ok-user"),
        message_body("flaky"),
        message_body("rejected"),
        "{not json",
        json.dumps({"v": 2, "type": "SIGNIN"}),
    )
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    hub.add_fault(
        Fault(
            status=400,
            code="INVALID_ARGUMENT",
            reason="USER_INVALID",
            message="no such user",
            match_external_id="rejected",
        )
    )
    event = pipeline.events_batch(5)
    ids = {
        json.loads(r["body"]).get("username") if r["body"].startswith('{"v": 1') else r["body"]: r["messageId"]
        for r in event["Records"]
    }

    result = deliverer_with(sqs).handle(event, LambdaContext("deliver", 60).get_remaining_time_in_millis)

    assert result == {"batchItemFailures": [{"itemIdentifier": ids["flaky"]}]}
    assert [e.external_id for e in hub.events()] == ["ok-user"]
    dead = pipeline.dead_letters()
    assert sorted(attrs(m)["failure_kind"] for m in dead) == ["permanent", "poison", "poison"]
    [rejected] = [m for m in dead if attrs(m)["failure_kind"] == "permanent"]
    permanent = attrs(rejected)
    assert permanent["failure_status"] == "400"
    assert permanent["failure_code"] == "INVALID_ARGUMENT"
    assert permanent["failure_reason"] == "USER_INVALID"
    assert "no such user" in permanent["failure_detail"]
    assert permanent["attempts"] == "1"
    assert permanent["username"] == "rejected"
    assert permanent["first_seen"].endswith("Z")
    assert json.loads(rejected["Body"])["username"] == "rejected"  # the original body, replayable
    # dead letters are deleted from the events queue at once; the delivered one waits for the mapping to delete
    # it (Lambda does that for records not reported as failures) and the retry is in flight
    assert depth(pipeline.queues.events_url) == 2


def test_poison_reasons_are_specific(pipeline) -> None:
    sqs = pipeline.sqs
    send(
        sqs,
        pipeline.queues.events_url,
        "{not json",
        json.dumps({"v": 2, "type": "SIGNIN"}),
        json.dumps({"v": 1, "type": "LOGOUT", "user_pool_id": "p", "username": "u", "source": "post_auth"}),
    )
    event = pipeline.events_batch(3)
    assert deliverer_with(sqs).handle(event, lambda: 60_000) == {"batchItemFailures": []}
    dead = pipeline.dead_letters()
    assert [attrs(m)["failure_kind"] for m in dead] == ["poison"] * 3
    reasons = sorted(attrs(m)["failure_reason"] for m in dead)
    assert any("not JSON" in r for r in reasons)
    assert any("unsupported message version 2" in r for r in reasons)
    assert any("type" in r and "invalid v1 message" in r for r in reasons)


def test_retry_after_sets_visibility_at_least_that_long(pipeline, hub) -> None:
    sqs = pipeline.sqs
    seen = capture_visibility(sqs)
    send(sqs, pipeline.queues.events_url, message_body("slow-down"))
    hub.add_fault(Fault(status=429, retry_after="7", body_format="text"))
    event = pipeline.events_batch(1)
    result = deliverer_with(sqs).handle(event, lambda: 60_000)
    assert result["batchItemFailures"] == [{"itemIdentifier": event["Records"][0]["messageId"]}]
    assert len(seen) == 1 and seen[0]["VisibilityTimeout"] >= 7
    # and SQS really hides it: an immediate receive gets nothing
    assert sqs.receive_message(QueueUrl=pipeline.queues.events_url, WaitTimeSeconds=0).get("Messages") is None


def test_retry_after_http_date_is_honoured(pipeline, hub) -> None:
    import time
    from email.utils import formatdate

    sqs = pipeline.sqs
    seen = capture_visibility(sqs)
    send(sqs, pipeline.queues.events_url, message_body("dated"))
    hub.add_fault(Fault(status=503, retry_after=formatdate(time.time() + 120, usegmt=True)))
    deliverer_with(sqs).handle(pipeline.events_batch(1), lambda: 60_000)
    assert 115 <= seen[0]["VisibilityTimeout"] <= 125


def test_backoff_grows_with_receive_count(pipeline, hub) -> None:
    """The visibility deliver sets follows the policy for the record's ApproximateReceiveCount."""
    sqs = pipeline.sqs
    seen = capture_visibility(sqs)
    hub.add_fault(Fault(status=500))
    with patched_environ({"RETRY_BASE_SECONDS": "30", "RETRY_JITTER": "0"}):
        from chalicelib.settings import reset_settings

        reset_settings()
        deliverer = deliverer_with(sqs)
        send(sqs, pipeline.queues.events_url, message_body("down"))
        event = pipeline.events_batch(1)
        for count in (1, 2, 3):
            event["Records"][0]["attributes"]["ApproximateReceiveCount"] = str(count)
            deliverer.handle(event, lambda: 60_000)
    assert [e["VisibilityTimeout"] for e in seen] == [30, 60, 120]


def test_last_attempt_is_dead_lettered_with_reason(pipeline, hub) -> None:
    sqs = pipeline.sqs
    hub.add_fault(Fault(status=503))
    send(sqs, pipeline.queues.events_url, message_body("never-up"))
    event = pipeline.events_batch(1)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "4"  # the queue's maxReceiveCount in conftest
    assert deliverer_with(sqs).handle(event, lambda: 60_000) == {"batchItemFailures": []}
    [dead] = pipeline.dead_letters()
    assert attrs(dead)["failure_kind"] == "exhausted"
    assert attrs(dead)["failure_status"] == "503"
    assert "retries exhausted after 4 attempts" in attrs(dead)["failure_reason"]


def test_duplicates_in_a_batch_make_one_call(pipeline, hub) -> None:
    sqs = pipeline.sqs
    send(
        sqs,
        pipeline.queues.events_url,
        message_body("twice", id="a"),
        message_body("twice", id="b"),
        message_body("twice", "CHANGED", id="c"),
    )
    result = deliverer_with(sqs).handle(pipeline.events_batch(3), lambda: 60_000)
    assert result == {"batchItemFailures": []}
    assert sorted(e.type for e in hub.events()) == ["CHANGED", "SIGNIN"]


def test_duplicates_share_the_leaders_failure(pipeline, hub) -> None:
    sqs = pipeline.sqs
    hub.add_fault(Fault(status=503))
    send(sqs, pipeline.queues.events_url, message_body("twice", id="a"), message_body("twice", id="b"))
    event = pipeline.events_batch(2)
    result = deliverer_with(sqs).handle(event, lambda: 60_000)
    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == sorted(
        r["messageId"] for r in event["Records"]
    )
    assert len(hub.journal()) == 1


def test_no_new_calls_when_time_runs_low(pipeline, hub) -> None:
    sqs = pipeline.sqs
    send(sqs, pipeline.queues.events_url, *(message_body(f"u{i}") for i in range(3)))
    event = pipeline.events_batch(3)
    result = deliverer_with(sqs).handle(event, lambda: 1_000)  # under the 1.5 s default margin
    assert len(result["batchItemFailures"]) == 3
    assert hub.journal() == []
    # not tried, so not made to wait: the next invocation can take them at once
    again = sqs.receive_message(QueueUrl=pipeline.queues.events_url, MaxNumberOfMessages=10).get("Messages", [])
    assert len(again) == 3


def test_remaining_time_caps_each_call(pipeline, hub) -> None:
    """A slow UserHub cannot hold the invocation past its end: the call's timeout shrinks to the time left."""
    sqs = pipeline.sqs
    hub.add_fault(Fault(kind="latency", latency_ms=3000))
    send(sqs, pipeline.queues.events_url, message_body("slow"))
    event = pipeline.events_batch(1)
    context = LambdaContext("deliver", 2.5)
    import time

    started = time.monotonic()
    result = deliverer_with(sqs).handle(event, context.get_remaining_time_in_millis)
    assert len(result["batchItemFailures"]) == 1
    assert time.monotonic() - started < 2.5


def test_key_rotation_401_fetches_once_and_recovers(pipeline, hub) -> None:
    """The key lives in SSM; UserHub starts rejecting it; one refetch per batch picks up the new one."""
    sqs = pipeline.sqs
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/test/admin-key", Value=ADMIN_KEY, Type="SecureString")
    with patched_environ({"USERHUB_ADMIN_KEY": None, "USERHUB_ADMIN_KEY_PARAMETER": "/test/admin-key"}):
        from chalicelib.settings import reset_settings

        reset_settings()
        deliverer = deliverer_with(sqs)
        send(sqs, pipeline.queues.events_url, message_body("before"))
        assert deliverer.handle(pipeline.events_batch(1), lambda: 60_000) == {"batchItemFailures": []}
        new_key = "userhub_admin_rotated_9876543210"
        ssm.put_parameter(Name="/test/admin-key", Value=new_key, Type="SecureString", Overwrite=True)
        hub.set_admin_keys([new_key])
        send(sqs, pipeline.queues.events_url, *(message_body(f"after{i}") for i in range(5)))
        result = deliverer.handle(pipeline.events_batch(5), lambda: 60_000)
    assert result == {"batchItemFailures": []}
    assert deliverer.keys.fetches == 2  # the first load, then exactly one refetch for five 401s
    assert {e.external_id for e in hub.events()} == {"before", *(f"after{i}" for i in range(5))}
    assert all(e.headers["authorization"] == f"Bearer {new_key}" for e in hub.events()[1:])


def test_persistent_401_retries_later(pipeline, hub) -> None:
    sqs = pipeline.sqs
    hub.set_admin_keys(["some_other_key_entirely"])
    send(sqs, pipeline.queues.events_url, message_body("locked-out"))
    deliverer = deliverer_with(sqs)
    result = deliverer.handle(pipeline.events_batch(1), lambda: 60_000)
    assert len(result["batchItemFailures"]) == 1
    assert pipeline.dead_letters() == []
    # one call: the refetched key is the same one, and calling again with it cannot help
    assert len(hub.journal()) == 1
    assert deliverer.keys.fetches == 2  # the first load and one refetch


def test_dlq_send_failure_keeps_the_message(pipeline, hub) -> None:
    """If the DLQ refuses the message, it stays in the events queue (reported as failed), never dropped."""
    sqs = pipeline.sqs
    hub.add_fault(Fault(status=404))
    send(sqs, pipeline.queues.events_url, message_body("nowhere"))
    event = pipeline.events_batch(1)

    def refuse(params, **_):
        params["QueueUrl"] += "-gone"  # moto answers QueueDoesNotExist: a real failure of the send

    sqs.meta.events.register("provide-client-params.sqs.SendMessageBatch", refuse)
    result = deliverer_with(sqs).handle(event, lambda: 60_000)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert depth(pipeline.queues.events_url) == 1


def test_handler_via_chalice_test_client(pipeline, hub) -> None:
    """Chalice's own test client invokes `deliver` with its generated SQS event (synthetic ids and handles)."""
    from chalice.test import Client

    with Client(app.app, stage_name="test-no-such-stage") as client:
        event = client.events.generate_sqs_event([message_body("via-chalice"), "poison!"], queue_name="test-events")
        event["Records"][1]["messageId"] = "m2"
        response = client.lambda_.invoke("deliver", event)
    assert response.payload == {"batchItemFailures": []}
    assert [e.external_id for e in hub.events()] == ["via-chalice"]
    assert attrs(pipeline.dead_letters()[0])["failure_kind"] == "poison"


def test_connection_comes_from_message_or_settings(pipeline, hub) -> None:
    sqs = pipeline.sqs
    send(
        sqs,
        pipeline.queues.events_url,
        message_body("a", connection_id=None),
        message_body("b", connection_id="conn_other"),
    )
    deliverer_with(sqs).handle(pipeline.events_batch(2), lambda: 60_000)
    assert {(e.external_id, e.connection_id) for e in hub.events()} == {("a", CONNECTION_ID), ("b", "conn_other")}


@pytest.mark.parametrize("count", [1, 2, 5, 12, 13])
def test_retry_policy_shape(count: int) -> None:
    policy = RetryPolicy(base=30, cap=43_200, jitter=0.25)
    rng = random.Random(count)
    delay = policy.delay(count, rng=rng)
    expected = min(30 * 2 ** (count - 1), 43_200)
    assert expected <= delay <= min(expected * 1.25 + 1, 43_200)


def test_retry_policy_limits() -> None:
    policy = RetryPolicy()
    assert policy.delay(100) == 43_200  # SQS maximum
    assert policy.delay(1, retry_after=600) >= 600
    assert policy.delay(1, retry_after=10**9) == 43_200
    assert policy.minimum_horizon(13) >= 24 * 3600  # the defaults retry for at least a day
    assert policy.minimum_horizon(12) < 24 * 3600  # and 13 is the least that does


def test_missing_dlq_keeps_the_message(pipeline, hub) -> None:
    sqs = pipeline.sqs
    hub.add_fault(Fault(status=400))
    send(sqs, pipeline.queues.events_url, message_body("orphan"))
    event = pipeline.events_batch(1)
    sqs.delete_queue(QueueUrl=pipeline.queues.dlq_url)
    result = deliverer_with(sqs).handle(event, lambda: 60_000)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_a_changed_environment_gets_fresh_settings_and_clients(pipeline, hub) -> None:
    """A process that drives the handler with another UserHub (as a test harness does) is not stuck on the first."""
    from userhub_sync.local.fake_userhub import FakeUserHub

    sqs = pipeline.sqs
    send(sqs, pipeline.queues.events_url, message_body("first"))
    assert app.deliver(pipeline.events_batch(1), None) == {"batchItemFailures": []}
    with FakeUserHub(admin_keys=[ADMIN_KEY]) as other, patched_environ({"USERHUB_API_URL": other.url}):
        send(sqs, pipeline.queues.events_url, message_body("second"))
        assert app.deliver(pipeline.events_batch(1), None) == {"batchItemFailures": []}
        assert [e.external_id for e in other.events()] == ["second"]
    assert [e.external_id for e in hub.events()] == ["first"]


class RecordingSQS:
    """The real moto client, with every SQS call it is asked for written down."""

    def __init__(self, sqs) -> None:
        self.sqs = sqs
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        self.calls.append(name)
        return getattr(self.sqs, name)


def test_a_batch_that_all_succeeds_makes_no_sqs_call(pipeline, hub) -> None:
    """The queue's redrive and retention are read only for a record that may have to wait."""
    send(pipeline.sqs, pipeline.queues.events_url, *(message_body(f"ok-{i}") for i in range(5)))
    event = pipeline.events_batch(5)
    recording = RecordingSQS(pipeline.sqs)
    deliverer = deliverer_with(recording)

    result = deliverer.handle(event, LambdaContext("deliver", 60).get_remaining_time_in_millis)

    assert result == {"batchItemFailures": []}
    assert sorted(e.external_id for e in hub.events()) == [f"ok-{i}" for i in range(5)]
    assert recording.calls == []

    send(pipeline.sqs, pipeline.queues.events_url, message_body("flaky"))
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    event = pipeline.events_batch(1)
    result = deliverer.handle(event, LambdaContext("deliver", 60).get_remaining_time_in_millis)

    assert len(result["batchItemFailures"]) == 1
    assert "get_queue_attributes" in recording.calls  # a retry still respects the redrive policy and retention
