"""The dead-letter contract: why a message is in the DLQ, as SQS message attributes.

`deliver` writes it and `userhub-sync dlq` reads it, both through `DeadLetterInfo`, so the attribute names and
their meaning live here only. Every value is made of characters SQS accepts (an error text from UserHub may hold
anything, a lone surrogate included), and an entry never exceeds SQS's payload limit: next to a body close to the
limit only the essential attributes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from chalicelib.observability import redact
from chalicelib.sqs_limits import MESSAGE_ATTRIBUTES, PAYLOAD_BYTES, allowed_text
from chalicelib.timefmt import parse_time, utc_iso

TEXT_CHARS = 1000
SHORT_REASON_CHARS = 200


class FailureKind(StrEnum):
    POISON = "poison"  # the body can never be delivered as it is
    PERMANENT = "permanent"  # UserHub rejected it: a 4xx other than 401, 408 and 429
    EXHAUSTED = "exhausted"  # out of attempts, or its next attempt would fall after the queue's retention
    REDRIVEN = "redriven"  # moved by SQS's redrive policy, not by deliver, so it carries no reason


class Attribute(StrEnum):
    KIND = "failure_kind"
    STATUS = "failure_status"  # UserHub's HTTP status, when it answered
    CODE = "failure_code"  # UserHub's error `code`
    REASON = "failure_reason"  # one line: UserHub's `reason` for a rejection, otherwise this project's reason
    DETAIL = "failure_detail"  # the longer text: UserHub's message, or the error seen
    ATTEMPTS = "attempts"  # receives of the message, this one included
    FIRST_SEEN = "first_seen"  # when it first entered the events queue
    FAILED_AT = "failed_at"
    SOURCE_MESSAGE_ID = "source_message_id"  # its id in the events queue
    USERNAME = "username"


ESSENTIAL = (Attribute.KIND, Attribute.STATUS, Attribute.CODE, Attribute.REASON, Attribute.ATTEMPTS)
assert len(Attribute) <= MESSAGE_ATTRIBUTES


@dataclass(frozen=True)
class DeadLetterInfo:
    kind: FailureKind
    reason: str
    attempts: int | None = None
    status: int | None = None
    code: str | None = None
    detail: str | None = None
    first_seen: datetime | None = None
    failed_at: datetime | None = None
    source_message_id: str | None = None
    username: str | None = None

    def to_message_attributes(self, *, essential_only: bool = False) -> dict[str, dict[str, str]]:
        values = {
            Attribute.KIND: self.kind.value,
            Attribute.STATUS: str(self.status) if self.status is not None else None,
            Attribute.CODE: self.code,
            Attribute.REASON: self.reason,
            Attribute.DETAIL: self.detail,
            Attribute.ATTEMPTS: str(self.attempts) if self.attempts is not None else None,
            Attribute.FIRST_SEEN: utc_iso(self.first_seen) if self.first_seen else None,
            Attribute.FAILED_AT: utc_iso(self.failed_at) if self.failed_at else None,
            Attribute.SOURCE_MESSAGE_ID: self.source_message_id,
            Attribute.USERNAME: self.username,
        }
        limits = {Attribute.REASON: SHORT_REASON_CHARS if essential_only else TEXT_CHARS, Attribute.USERNAME: 256}
        attributes: dict[str, dict[str, str]] = {}
        for name, value in values.items():
            if value and (not essential_only or name in ESSENTIAL):
                # redact before clipping, so that no half of a secret survives the cut
                text = allowed_text(redact(value))[: limits.get(name, TEXT_CHARS)]
                attributes[name.value] = {"DataType": "String", "StringValue": text}
        return attributes

    @classmethod
    def from_message_attributes(cls, attributes: Mapping[str, str]) -> DeadLetterInfo | None:
        """What deliver wrote, or None when the message carries no failure (SQS's redrive moved it)."""
        try:
            kind = FailureKind(attributes.get(Attribute.KIND, ""))
        except ValueError:
            return None
        return cls(
            kind=kind,
            reason=attributes.get(Attribute.REASON, ""),
            attempts=_int(attributes.get(Attribute.ATTEMPTS)),
            status=_int(attributes.get(Attribute.STATUS)),
            code=attributes.get(Attribute.CODE),
            detail=attributes.get(Attribute.DETAIL),
            first_seen=parse_time(attributes.get(Attribute.FIRST_SEEN)),
            failed_at=parse_time(attributes.get(Attribute.FAILED_AT)),
            source_message_id=attributes.get(Attribute.SOURCE_MESSAGE_ID),
            username=attributes.get(Attribute.USERNAME),
        )


def dead_letter_entry(body: str, info: DeadLetterInfo) -> dict[str, object]:
    """A SendMessageBatch entry (without its Id) that SQS accepts, whatever the body's size."""
    body = body or "<empty>"
    attributes = info.to_message_attributes()
    if len(body.encode()) + attributes_bytes(attributes) > PAYLOAD_BYTES:
        attributes = info.to_message_attributes(essential_only=True)
    return {"MessageBody": body, "MessageAttributes": attributes}


def entry_bytes(entry: Mapping[str, object]) -> int:
    """What an entry counts against SQS's payload limit: the body, plus each attribute's name, type and value."""
    body = entry["MessageBody"]
    attributes = entry.get("MessageAttributes") or {}
    assert isinstance(body, str) and isinstance(attributes, dict)
    return len(body.encode()) + attributes_bytes(attributes)


def attributes_bytes(attributes: Mapping[str, Mapping[str, str]]) -> int:
    return sum(
        len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
