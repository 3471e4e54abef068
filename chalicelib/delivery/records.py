"""First stage: a Lambda SQS record, read defensively, then parsed into a message or recognised as poison."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.messages import CaptureMessage, PoisonMessage, SyncMessage, parse_message


@dataclass(frozen=True)
class Record:
    """The fields of a Lambda SQS record that delivery needs; any shape of input gives a Record, never an error."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float | None  # SentTimestamp, in epoch seconds
    source_arn: str | None

    @classmethod
    def from_lambda(cls, raw: Any) -> Record:
        raw = raw if isinstance(raw, dict) else {}
        attributes = raw.get("attributes") if isinstance(raw.get("attributes"), dict) else {}
        return cls(
            message_id=str(raw.get("messageId") or ""),
            receipt_handle=str(raw.get("receiptHandle") or ""),
            body=raw["body"] if isinstance(raw.get("body"), str) else "",
            receive_count=max(_int(attributes.get("ApproximateReceiveCount")) or 1, 1),
            sent_at=_epoch_seconds(attributes.get("SentTimestamp")),
            source_arn=raw["eventSourceARN"] if isinstance(raw.get("eventSourceARN"), str) else None,
        )

    @property
    def first_seen(self) -> datetime | None:
        return datetime.fromtimestamp(self.sent_at, UTC) if self.sent_at is not None else None


@dataclass(frozen=True)
class Poison:
    """A body that can never be delivered as it is."""

    reason: str


def parse(record: Record) -> SyncMessage | CaptureMessage | Poison:
    try:
        return parse_message(record.body)
    except PoisonMessage as poison:
        return Poison(poison.reason)


def _epoch_seconds(milliseconds: object) -> float | None:
    ms = _int(milliseconds)
    return ms / 1000 if ms is not None and 0 < ms < 10**14 else None  # a time datetime can represent


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
