"""The fourth stage of deliver, on moto's SQS over HTTP: which queue a record is settled on, what that queue allows
(maxReceiveCount, retention), and what is confirmed when SQS takes or refuses part of a request."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from chalicelib.dead_letter import DeadLetterInfo, FailureKind
from chalicelib.delivery.plan import DELETE, DeadLetter, Delay, QueueFacts
from chalicelib.delivery.records import Record
from chalicelib.delivery.settle import QueueDirectory, Settled, apply, delete_settled
from chalicelib.settings import get_settings
from tests.support import attrs, capture_visibility, depth, message_body, receive_all, send
from userhub_sync.local.moto import MOTO_ACCOUNT

EVENTS_ARN = f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:test-events"


class Calls:
    """Counts the SQS API calls a client makes (they still go to moto)."""

    def __init__(self, sqs: Any) -> None:
        self.names: list[str] = []
        sqs.meta.events.register("before-call.sqs.*", self._seen)

    def _seen(self, model: Any, **_: object) -> None:
        self.names.append(model.name)

    def count(self, name: str) -> int:
        return self.names.count(name)


def received(aws, count: int, url: str | None = None) -> list[Record]:
    """`count` messages sent to the events queue and received, as Records with real receipt handles."""
    url = url or aws.queues.events_url
    send(aws.sqs, url, *(message_body(f"user-{n}") for n in range(count)))
    messages = receive_all(aws.sqs, url, rounds=count)
    assert len(messages) == count
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return [Record(m["MessageId"], m["ReceiptHandle"], m["Body"], 1, None, arn) for m in messages]


def dead(record: Record) -> DeadLetter:
    return DeadLetter(
        DeadLetterInfo(kind=FailureKind.PERMANENT, reason="rejected", source_message_id=record.message_id)
    )


# ------------------------------------------------------------------------- which queue, and what it allows


def test_the_source_queue_is_found_from_the_records_arn_once(aws) -> None:
    other = aws.sqs.create_queue(QueueName="other-events")["QueueUrl"]
    calls = Calls(aws.sqs)
    queues = QueueDirectory(aws.sqs, get_settings())
    arn = f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:other-events"
    assert queues.source_url(arn) == queues.source_url(arn) == other
    assert calls.count("GetQueueUrl") == 1


@pytest.mark.parametrize("arn", [None, "", "not-an-arn", "arn:aws:sns:us-east-1:1:topic", "arn:aws:sqs:us-east-1"])
def test_without_a_usable_arn_the_configured_events_queue_is_meant(aws, arn: str | None) -> None:
    assert QueueDirectory(aws.sqs, get_settings()).source_url(arn) == aws.queues.events_url


def test_an_unknown_queue_falls_back_to_the_events_queue_and_is_looked_up_once(aws) -> None:
    calls = Calls(aws.sqs)
    queues = QueueDirectory(aws.sqs, get_settings())
    gone = f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:deleted-queue"
    assert queues.source_url(gone) == queues.source_url(gone) == aws.queues.events_url
    assert calls.count("GetQueueUrl") == 2  # the unknown queue once, the events queue once


def test_the_dlq_is_the_configured_one(aws) -> None:
    assert QueueDirectory(aws.sqs, get_settings()).dlq_url() == aws.queues.dlq_url


def test_the_queue_facts_are_its_redrive_count_and_retention_read_once(aws) -> None:
    aws.sqs.set_queue_attributes(QueueUrl=aws.queues.events_url, Attributes={"MessageRetentionPeriod": "7200"})
    calls = Calls(aws.sqs)
    queues = QueueDirectory(aws.sqs, get_settings())
    assert queues.facts(EVENTS_ARN) == queues.facts(None) == QueueFacts(4, 7200)
    assert calls.count("GetQueueAttributes") == 1


def test_a_queue_without_a_redrive_policy_has_max_receive_count_from_the_settings(aws) -> None:
    url = aws.sqs.create_queue(QueueName="plain-events", Attributes={"MessageRetentionPeriod": "600"})["QueueUrl"]
    facts = QueueDirectory(aws.sqs, get_settings()).facts(f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:plain-events")
    assert facts == QueueFacts(get_settings().max_receive_count, 600) and url


def test_with_no_queue_at_all_the_facts_are_the_settings_and_no_retention(aws) -> None:
    aws.sqs.delete_queue(QueueUrl=aws.queues.events_url)
    assert QueueDirectory(aws.sqs, get_settings()).facts(None) == QueueFacts(get_settings().max_receive_count, None)


# ------------------------------------------------------------------------- carrying the actions out


def test_each_delay_sets_its_own_visibility_in_requests_of_ten(aws) -> None:
    records = received(aws, 12)
    seen = capture_visibility(aws.sqs)
    calls = Calls(aws.sqs)
    planned = [(record, Delay(100 + n, "503")) for n, record in enumerate(records)]
    settled = apply(planned, aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert [s.confirmed for s in settled] == [True] * 12 and all(s.comes_back for s in settled)
    assert calls.count("ChangeMessageVisibilityBatch") == 2
    by_handle = {entry["ReceiptHandle"]: entry["VisibilityTimeout"] for entry in seen}
    assert by_handle == {record.receipt_handle: 100 + n for n, record in enumerate(records)}


def test_a_delay_sqs_refuses_is_unconfirmed_and_the_others_stand(aws) -> None:
    [good, bad] = received(aws, 2)
    stale = Record(bad.message_id, "not-a-receipt-handle", bad.body, 1, None, bad.source_arn)
    settled = apply([(good, Delay(60, "x")), (stale, Delay(60, "x"))], aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert [s.confirmed for s in settled] == [True, False]
    assert all(s.comes_back for s in settled)  # unconfirmed, it comes back after the queue's own timeout


def test_a_dead_letter_is_sent_with_its_reason_then_deleted_from_the_events_queue(aws) -> None:
    [record] = received(aws, 1)
    [settled] = apply([(record, dead(record))], aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert settled.confirmed and not settled.comes_back
    [moved] = receive_all(aws.sqs, aws.queues.dlq_url)
    assert moved["Body"] == record.body and attrs(moved)["failure_reason"] == "rejected"
    assert depth(aws.queues.events_url) == 0


def test_more_than_ten_dead_letters_are_all_sent(aws) -> None:
    records = received(aws, 13)
    settled = apply([(r, dead(r)) for r in records], aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert all(s.confirmed for s in settled)
    moved = receive_all(aws.sqs, aws.queues.dlq_url, rounds=5)
    assert sorted(m["Body"] for m in moved) == sorted(r.body for r in records)


def test_without_a_dlq_a_dead_letter_stays_in_the_events_queue(aws) -> None:
    [record] = received(aws, 1)
    aws.sqs.delete_queue(QueueUrl=aws.queues.dlq_url)
    [settled] = apply([(record, dead(record))], aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert not settled.confirmed and settled.comes_back
    assert depth(aws.queues.events_url) == 1


def test_a_delivered_record_needs_nothing_from_sqs(aws) -> None:
    [record] = received(aws, 1)
    calls = Calls(aws.sqs)
    [settled] = apply([(record, DELETE)], aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    assert settled == Settled(record, DELETE, True) and not settled.comes_back
    assert calls.names == []  # Lambda deletes what is not reported as a failure


def test_delete_settled_deletes_only_the_delivered_records(aws) -> None:
    delivered = received(aws, 11)
    [retry] = received(aws, 1)
    settled = [Settled(r, DELETE, True) for r in delivered] + [Settled(retry, Delay(0, "x"), True)]
    delete_settled(settled, aws.sqs, QueueDirectory(aws.sqs, get_settings()))
    aws.sqs.change_message_visibility(
        QueueUrl=aws.queues.events_url, ReceiptHandle=retry.receipt_handle, VisibilityTimeout=0
    )
    [left] = receive_all(aws.sqs, aws.queues.events_url)
    assert json.loads(left["Body"]) == json.loads(retry.body) and depth(aws.queues.events_url) == 1


def test_records_of_two_queues_are_each_settled_on_their_own(aws) -> None:
    other = aws.sqs.create_queue(QueueName="other-events")["QueueUrl"]
    [mine], [theirs] = received(aws, 1), received(aws, 1, other)
    seen = capture_visibility(aws.sqs)
    calls = Calls(aws.sqs)
    settled = apply(
        [(mine, Delay(77, "x")), (theirs, Delay(88, "x"))], aws.sqs, QueueDirectory(aws.sqs, get_settings())
    )
    assert all(s.confirmed for s in settled) and calls.count("ChangeMessageVisibilityBatch") == 2
    assert sorted(e["VisibilityTimeout"] for e in seen) == [77, 88]


def test_a_failing_sqs_confirms_nothing_and_raises_nothing(aws) -> None:
    [record] = received(aws, 1)
    queues = QueueDirectory(aws.sqs, get_settings())
    queues.source_url(record.source_arn), queues.dlq_url()  # known before SQS starts failing

    def refuse(**_: object) -> None:  # moto does not fail on demand: the refusal is simulated here
        raise boto3.exceptions.Boto3Error("SQS is unavailable")

    aws.sqs.meta.events.register("before-call.sqs.*", refuse)
    settled = apply([(record, Delay(5, "x")), (record, dead(record))], aws.sqs, queues)
    assert [s.confirmed for s in settled] == [False, False]
    delete_settled([Settled(record, DELETE, True)], aws.sqs, queues)  # logs, never raises
