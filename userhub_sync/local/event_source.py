"""Play Lambda's SQS event source mapping outside Lambda, with its semantics.

The mapping long-polls, hands the function a batch of records shaped exactly like Lambda's, deletes the records
that succeeded and leaves the failures to come back after their visibility timeout (which `deliver` may have
changed). If the function raises, or returns a response Lambda would reject, the whole batch is left alone, as
Lambda does. The receive count, visibility and redrive are SQS's own, so a message that keeps failing reaches the
DLQ exactly as it would in AWS.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chalicelib.sqs_limits import BATCH_ENTRIES, chunks
from userhub_sync.ops.aws import queue_arn
from userhub_sync.ops.queues import queue_depths

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.type_defs import MessageTypeDef

Handler = Callable[[dict[str, Any], Any], Any]


class LambdaContext:
    """The parts of Lambda's context object that our handlers read."""

    def __init__(
        self, function_name: str, timeout_seconds: float, region: str = "us-east-1", account: str = "123456789012"
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


def lambda_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as Lambda's event source mapping presents it."""
    attributes = {k: v for k, v in (message.get("Attributes") or {}).items()}
    message_attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType", "String"),
        }
        for name, value in (message.get("MessageAttributes") or {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message.get("Body", "").encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class BatchResult:
    received: int = 0
    deleted: int = 0
    failed: int = 0
    error: str | None = None


def failed_ids(response: Any, batch_ids: set[str]) -> set[str] | None:
    """The ids Lambda would retry, or None when it would treat the response as a failure of the whole batch."""
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    items = response.get("batchItemFailures")
    if items is None:
        return set()
    if not isinstance(items, list):
        return None
    ids: set[str] = set()
    for item in items:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in batch_ids:
            return None  # Lambda: an empty or unknown itemIdentifier fails the whole batch
        ids.add(identifier)
    return ids


@dataclass
class LocalEventSource:
    """Long-poll a queue and feed `handler` batches until stopped (or, with `drain`, until the queue is empty)."""

    sqs: SQSClient
    queue_url: str
    handler: Handler
    batch_size: int = 10
    wait_seconds: int = 1
    function_timeout: float = 60.0
    function_name: str = "deliver"
    region: str = "us-east-1"
    queue_arn: str = field(init=False)
    totals: BatchResult = field(init=False, default_factory=BatchResult)
    batches: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.queue_arn = queue_arn(self.sqs, self.queue_url)

    def _receive(self) -> list[MessageTypeDef]:
        messages: list[MessageTypeDef] = []
        while len(messages) < self.batch_size:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(BATCH_ENTRIES, self.batch_size - len(messages)),
                WaitTimeSeconds=self.wait_seconds if not messages else 0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages += got
            if len(got) < BATCH_ENTRIES:
                break
        return messages

    def poll_once(self) -> BatchResult:
        """Receive one batch, invoke, delete what succeeded."""
        messages = self._receive()
        result = BatchResult(received=len(messages))
        if not messages:
            return result
        records = [lambda_record(m, self.queue_arn, self.region) for m in messages]
        context = LambdaContext(self.function_name, self.function_timeout, self.region, self.queue_arn.split(":")[4])
        try:
            response = self.handler({"Records": records}, context)
            failed = failed_ids(response, {r["messageId"] for r in records})
            if failed is None:
                result.error = f"invalid batch response: {str(response)[:200]}"
        except Exception as error:  # broad, as Lambda is: the whole batch comes back after its visibility timeout
            failed, result.error = None, f"{type(error).__name__}: {error}"
        if failed is None:
            failed = {r["messageId"] for r in records}
        done = [m for m in messages if m["MessageId"] not in failed]
        for chunk in chunks(done):
            response = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            result.deleted += len(response.get("Successful", []))
        result.failed = len(failed)
        self._add(result)
        return result

    def _add(self, result: BatchResult) -> None:
        self.batches += 1
        self.totals.received += result.received
        self.totals.deleted += result.deleted
        self.totals.failed += result.failed
        if result.error:
            self.totals.error = result.error

    def backlog(self) -> int:
        """Messages visible, in flight or delayed: zero means nothing is left to deliver."""
        return queue_depths(self.sqs, self.queue_url).total

    def run(
        self,
        *,
        drain: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[BatchResult], None] | None = None,
        idle_checks: int = 2,
    ) -> BatchResult:
        """Poll until `should_stop()`; with `drain`, stop once the backlog is zero `idle_checks` times in a row."""
        idle = 0
        while not should_stop():
            result = self.poll_once()
            if on_batch:
                on_batch(result)
            if result.received == 0 and drain:
                idle = idle + 1 if self.backlog() == 0 else 0
                if idle >= idle_checks:
                    break
            elif result.received:
                idle = 0
        return self.totals
