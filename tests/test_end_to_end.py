"""End to end over real HTTP: post_auth → moto SQS → local event source mapping → deliver → fake UserHub."""

from __future__ import annotations

import json

import app
from chalicelib import delivery, post_auth
from tests.support import deliver_all, signin_event
from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import patched_environ


def test_500_signins_with_20_percent_transient_faults_none_lost(pipeline, hub) -> None:
    hub.add_fault(Fault(status=503, probability=0.12))
    hub.add_fault(Fault(status=429, retry_after="1", probability=0.04))
    hub.add_fault(Fault(kind="drop", probability=0.04))
    users = [f"user-{i}@example.com" for i in range(500)]
    # production's maxReceiveCount (13): with 4 (the fixture's) about one message in 600 would use up its attempts
    pipeline.sqs.set_queue_attributes(
        QueueUrl=pipeline.queues.events_url,
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": pipeline.queues.dlq_arn, "maxReceiveCount": 13})
        },
    )
    failed_before = post_auth.metrics.totals["enqueue_failed"]  # the counter lives as long as the process
    with patched_environ({"RETRY_BASE_SECONDS": "0", "RETRY_JITTER": "0"}):
        for user in users:
            app.post_auth(signin_event(user), None)
        assert post_auth.metrics.totals["enqueue_failed"] == failed_before
        source = deliver_all(pipeline)
        totals = delivery.get_deliverer().metrics.totals  # the container that ran, in its environment
        # a 429 whose Retry-After fits in the invocation is sent again at once; every other fault goes back to SQS
        retries = totals["retry"] + totals["rate_limited_resent"]
    delivered = {e.external_id for e in hub.events()}
    assert delivered == set(users)  # every sign-in reached UserHub: none lost
    faulted = [entry for entry in hub.journal() if entry.fault]
    assert len(faulted) > 50  # the faults really happened (about 20 % of the first attempts)
    assert retries >= len(faulted) * 0.9
    assert source.totals.deleted == 500
    dlq = pipeline.sqs.get_queue_attributes(
        QueueUrl=pipeline.queues.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert dlq["ApproximateNumberOfMessages"] == "0"


def test_a_400_and_a_poison_body_go_to_the_dlq_without_failing_the_batch(pipeline, hub) -> None:
    hub.add_fault(Fault(status=400, reason="REJECTED", match_external_id="bad-user"))
    for user in ("good-1", "bad-user", "good-2"):
        app.post_auth(signin_event(user), None)
    pipeline.sqs.send_message(QueueUrl=pipeline.queues.events_url, MessageBody="<xml/>")
    source = deliver_all(pipeline)
    assert source.batches == 1  # one batch, nothing retried
    assert {e.external_id for e in hub.events()} == {"good-1", "good-2"}
    messages = pipeline.sqs.receive_message(
        QueueUrl=pipeline.queues.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    kinds = sorted((m["MessageAttributes"]["failure_kind"]["StringValue"], m["Body"][:6]) for m in messages)
    assert kinds == [("permanent", '{"v":1'), ("poison", "<xml/>")]
    [permanent] = [m for m in messages if m["Body"].startswith("{")]
    assert json.loads(permanent["Body"])["username"] == "bad-user"
    assert permanent["MessageAttributes"]["failure_reason"]["StringValue"] == "REJECTED"


def test_sqs_redrive_is_the_safety_net_when_deliver_keeps_crashing(pipeline, hub) -> None:
    """If the function itself fails every time, SQS's own redrive moves the message after maxReceiveCount."""
    app.post_auth(signin_event("crash"), None)
    pipeline.sqs.set_queue_attributes(QueueUrl=pipeline.queues.events_url, Attributes={"VisibilityTimeout": "0"})

    def crashing(event, context):
        raise RuntimeError("function crashed")

    source = LocalEventSource(pipeline.sqs, pipeline.queues.events_url, crashing, wait_seconds=0)
    for _ in range(6):
        source.poll_once()
    assert source.totals.error == "RuntimeError: function crashed"
    assert source.totals.deleted == 0
    dlq = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.dlq_url, AttributeNames=["All"])["Messages"]
    assert json.loads(dlq[0]["Body"])["username"] == "crash"
