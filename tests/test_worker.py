"""The local event source mapping: Lambda's record shape and its partial-batch rules."""

from __future__ import annotations

import pytest

from userhub_sync.local.event_source import LambdaContext, LocalEventSource, failed_ids


def test_records_look_like_lambdas(aws) -> None:
    aws.sqs.send_message(
        QueueUrl=aws.queues.events_url,
        MessageBody="hello",
        MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}},
    )
    seen: list[dict] = []

    def handler(event, context):
        seen.append(event)
        assert 0 < context.get_remaining_time_in_millis() <= 60_000
        return {"batchItemFailures": []}

    LocalEventSource(aws.sqs, aws.queues.events_url, handler, wait_seconds=0).poll_once()
    [record] = seen[0]["Records"]
    assert set(record) >= {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:test-events"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert "SentTimestamp" in record["attributes"]
    assert record["messageAttributes"]["k"]["stringValue"] == "v"


def test_failures_stay_successes_are_deleted(aws) -> None:
    for body in ("keep", "done"):
        aws.sqs.send_message(QueueUrl=aws.queues.events_url, MessageBody=body)
    aws.sqs.set_queue_attributes(QueueUrl=aws.queues.events_url, Attributes={"VisibilityTimeout": "0"})

    def handler(event, context):
        return {
            "batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "keep"]
        }

    source = LocalEventSource(aws.sqs, aws.queues.events_url, handler, wait_seconds=0)
    result = source.poll_once()
    assert (result.received, result.deleted, result.failed) == (2, 1, 1)
    again = aws.sqs.receive_message(QueueUrl=aws.queues.events_url, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in again] == ["keep"]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "a"}]}, {"a"}),
        ({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, None),  # unknown id: whole batch fails
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, None),
        ({"batchItemFailures": "a"}, None),
        ("oops", None),
    ],
)
def test_lambda_partial_batch_response_rules(response: object, expected: set[str] | None) -> None:
    assert failed_ids(response, {"a", "b"}) == expected


def test_invalid_response_fails_the_whole_batch(aws) -> None:
    aws.sqs.send_message(QueueUrl=aws.queues.events_url, MessageBody="x")
    source = LocalEventSource(
        aws.sqs, aws.queues.events_url, lambda e, c: {"batchItemFailures": [{"x": 1}]}, wait_seconds=0
    )
    result = source.poll_once()
    assert (result.deleted, result.failed) == (0, 1)
    assert result.error.startswith("invalid batch response")


def test_context_counts_down() -> None:
    context = LambdaContext("deliver", 2.0)
    assert 1_900 <= context.get_remaining_time_in_millis() <= 2_000
    assert context.invoked_function_arn.endswith(":function:deliver")
