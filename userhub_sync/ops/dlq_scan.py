"""What a dead-letter message says, which ones a command acts on, and receiving a queue's messages once each.

SQS cannot browse a queue, only receive from it. So a scan receives in batches of 10 with a visibility timeout,
keeps what it received invisible until it is done (so one run never sees the same message twice as new), and at
the end makes everything it did not delete visible again (`release`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.dead_letter import DeadLetterInfo, FailureKind
from chalicelib.sqs_limits import chunks
from chalicelib.timefmt import parse_time, utc_iso
from userhub_sync.ops.aws import aws_errors, error_code
from userhub_sync.ops.errors import OpsError

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
    )

    from chalicelib.messages import CaptureMessage, SyncMessage


@dataclass
class DlqMessage:
    message_id: str
    receipt_handle: str
    body: str
    failure: DeadLetterInfo | None  # what deliver recorded; None when SQS's redrive moved the message
    system: dict[str, str]  # SQS attributes (SentTimestamp, ApproximateReceiveCount, ...)
    parsed: SyncMessage | CaptureMessage | None = None  # None: poison
    poison_reason: str | None = None

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> DlqMessage:
        from chalicelib.messages import PoisonMessage, parse_message

        attributes = {
            k: v.get("StringValue", "")
            for k, v in (raw.get("MessageAttributes") or {}).items()
            if v.get("DataType", "").startswith(("String", "Number"))
        }
        message = cls(
            raw["MessageId"],
            raw["ReceiptHandle"],
            raw.get("Body") or "",
            DeadLetterInfo.from_message_attributes(attributes),
            dict(raw.get("Attributes") or {}),
        )
        try:
            message.parsed = parse_message(message.body)
        except PoisonMessage as poison:
            message.poison_reason = poison.reason
        return message

    @property
    def kind(self) -> FailureKind:
        """Why it is here: deliver's verdict, or redriven by SQS itself (poison if the body cannot be read)."""
        if self.failure is not None:
            return self.failure.kind
        return FailureKind.POISON if self.parsed is None else FailureKind.REDRIVEN

    @property
    def status(self) -> int | None:
        return self.failure.status if self.failure else None

    @property
    def code(self) -> str | None:
        return self.failure.code if self.failure else None

    @property
    def reason(self) -> str | None:
        return (self.failure.reason if self.failure else None) or self.poison_reason

    @property
    def attempts(self) -> int | None:
        return self.failure.attempts if self.failure else None

    @property
    def username(self) -> str | None:
        recorded = self.failure.username if self.failure else None
        return recorded or getattr(self.parsed, "username", None)  # a captured change names no username yet

    @property
    def first_seen(self) -> datetime | None:
        """When the event first entered the events queue (SQS keeps the original time on redrive)."""
        recorded = self.failure.first_seen if self.failure else None
        return recorded or parse_time(self.system.get("SentTimestamp"))

    @property
    def failed_at(self) -> datetime | None:
        return self.failure.failed_at if self.failure else None

    def age(self, at: datetime | None = None) -> float | None:
        seen = self.first_seen
        return ((at or datetime.now(UTC)) - seen).total_seconds() if seen else None

    def to_dict(self, show_body: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "user": self.username,
            "kind": self.kind.value,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "attempts": self.attempts,
            "first_seen": _iso(self.first_seen),
            "failed_at": _iso(self.failed_at),
            "age_seconds": round(self.age() or 0, 1) if self.first_seen else None,
            "source_message_id": self.failure.source_message_id if self.failure else None,
        }
        if self.parsed is not None:
            data["message"] = {
                "id": self.parsed.id,
                "type": self.parsed.type.value,
                "source": self.parsed.source.value,
                "event_time": _iso(self.parsed.event_time),
            }
        if show_body:
            data["body"] = self.body
        return data


def parse_kind(text: str) -> FailureKind:
    if text not in set(FailureKind):
        raise OpsError(f"--kind must be one of {', '.join(FailureKind)}, not {text!r}")
    return FailureKind(text)


@dataclass
class Filters:
    """Which DLQ messages a command acts on; every given criterion must match."""

    reason: str | None = None  # substring of the reason, case-insensitive
    status: int | None = None
    user: str | None = None
    kind: FailureKind | None = None
    older_than: float | None = None  # seconds since first seen
    newer_than: float | None = None

    def __post_init__(self) -> None:
        if self.kind is not None:
            self.kind = parse_kind(self.kind)

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.reason, self.status, self.user, self.kind, self.older_than, self.newer_than)
        )

    def matches(self, message: DlqMessage, at: datetime | None = None) -> bool:
        if self.reason is not None and self.reason.lower() not in (message.reason or "").lower():
            return False
        if self.status is not None and message.status != self.status:
            return False
        if self.user is not None and message.username != self.user:
            return False
        if self.kind is not None and message.kind != self.kind:
            return False
        age = message.age(at)
        if self.older_than is not None and (age is None or age < self.older_than):
            return False
        return not (self.newer_than is not None and (age is None or age > self.newer_than))


class Scanner:
    """Receives a queue's messages once each, holding them invisible until `release`."""

    def __init__(
        self,
        sqs: SQSClient,
        url: str,
        *,
        visibility: int = 30,
        wait: int = 1,
        max_scan: int = 100_000,
        stale_rounds: int = 3,
    ) -> None:
        self.sqs, self.url, self.visibility, self.wait = sqs, url, visibility, wait
        self.max_scan, self.stale_rounds = max_scan, stale_rounds
        self.held: dict[str, str] = {}  # message id -> latest receipt handle, not yet deleted
        self.seen: set[str] = set()
        self.reappeared: list[DlqMessage] = []  # seen before, offered again (visibility lapsed)

    def batches(self) -> Iterator[list[DlqMessage]]:
        """New messages, ten at a time, until the queue offers nothing new."""
        stale = 0
        while len(self.seen) < self.max_scan:
            raw = (
                self.sqs.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=self.visibility,
                    WaitTimeSeconds=self.wait,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages")
                or []
            )
            if not raw:
                return
            fresh: list[DlqMessage] = []
            for item in raw:
                message = DlqMessage.from_sqs(item)
                self.held[message.message_id] = message.receipt_handle
                if message.message_id in self.seen:
                    self.reappeared.append(message)
                else:
                    self.seen.add(message.message_id)
                    fresh.append(message)
            if fresh:
                stale = 0
                yield fresh
            else:
                stale += 1
                if stale >= self.stale_rounds:
                    return

    def delete(self, messages: list[DlqMessage]) -> tuple[list[DlqMessage], list[tuple[DlqMessage, str]]]:
        """Delete with the latest receipt handles; returns (deleted, [(message, error code)])."""
        deleted: list[DlqMessage] = []
        failed: list[tuple[DlqMessage, str]] = []
        for chunk in chunks(messages):
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": self.held.get(m.message_id, m.receipt_handle)}
                for i, m in enumerate(chunk)
            ]
            try:
                response = self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
                ok = {int(e["Id"]) for e in response.get("Successful") or []}
                codes = {int(e["Id"]): e.get("Code", "Failed") for e in response.get("Failed") or []}
            except aws_errors() as error:
                ok, codes = set(), {i: error_code(error) for i in range(len(chunk))}
            for i, message in enumerate(chunk):
                if i in ok:
                    deleted.append(message)
                    self.held.pop(message.message_id, None)
                else:
                    failed.append((message, codes.get(i, "NotConfirmed")))
        return deleted, failed

    def release(self) -> int:
        """Make every held message visible again at once (best effort; otherwise it reappears in `visibility` s)."""
        items = list(self.held.items())
        released = 0
        for chunk in chunks(items):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0} for i, (_, handle) in enumerate(chunk)
            ]
            try:
                response = self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
                released += len(response.get("Successful") or [])
            except aws_errors():  # they become visible when the timeout lapses anyway
                continue
        self.held.clear()
        return released


def _iso(moment: datetime | None) -> str | None:
    return utc_iso(moment) if moment else None
