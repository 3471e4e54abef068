"""The dead-letter contract: why a message is in the DLQ, as SQS message attributes.

`deliver` writes it and `userhub-sync dlq` reads it, both through `DeadLetterInfo`, so the attribute names and
their meaning live here only. Every value is made of characters SQS accepts (an error text from UserHub may hold
anything, a lone surrogate included), and an entry never exceeds SQS's payload limit: next to a body close to the
limit only the essential attributes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

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


def _count(value: object) -> object:
    """A count read back as text; unreadable text is taken as absent: a reader's filter, not a reason to fail."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return value


def _moment(value: object) -> object:
    return parse_time(value) if isinstance(value, str) else value


Count = Annotated[int | None, BeforeValidator(_count), PlainSerializer(str, when_used="unless-none")]
Moment = Annotated[datetime | None, BeforeValidator(_moment), PlainSerializer(utc_iso, when_used="unless-none")]


class DeadLetterInfo(BaseModel):
    """One field per attribute: the alias is the attribute's name, both when deliver writes it and when the
    `dlq` commands read it back, so the two directions cannot drift apart."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    kind: FailureKind = Field(alias=Attribute.KIND)
    reason: str = Field("", alias=Attribute.REASON)
    attempts: Count = Field(None, alias=Attribute.ATTEMPTS)
    status: Count = Field(None, alias=Attribute.STATUS)
    code: str | None = Field(None, alias=Attribute.CODE)
    detail: str | None = Field(None, alias=Attribute.DETAIL)
    first_seen: Moment = Field(None, alias=Attribute.FIRST_SEEN)
    failed_at: Moment = Field(None, alias=Attribute.FAILED_AT)
    source_message_id: str | None = Field(None, alias=Attribute.SOURCE_MESSAGE_ID)
    username: str | None = Field(None, alias=Attribute.USERNAME)

    def to_message_attributes(self, *, essential_only: bool = False) -> dict[str, dict[str, str]]:
        values: dict[str, str] = self.model_dump(mode="json", exclude_none=True)
        limits = {Attribute.REASON: SHORT_REASON_CHARS if essential_only else TEXT_CHARS, Attribute.USERNAME: 256}
        attributes: dict[str, dict[str, str]] = {}
        for name, value in values.items():
            if value and (not essential_only or name in ESSENTIAL):
                # redact before clipping, so that no half of a secret survives the cut
                text = allowed_text(redact(value))[: limits.get(Attribute(name), TEXT_CHARS)]
                attributes[str(name)] = {"DataType": "String", "StringValue": text}
        return attributes

    @classmethod
    def from_message_attributes(cls, attributes: Mapping[str, str]) -> DeadLetterInfo | None:
        """What deliver wrote, or None when the message carries no failure (SQS's redrive moved it)."""
        try:  # by the attribute names only: a message attribute called `kind` or `status` is not deliver's
            return cls.model_validate(attributes, by_name=False)
        except ValidationError as error:  # every field but the kind reads any text
            if all(item["loc"] == (Attribute.KIND.value,) for item in error.errors()):
                return None  # no failure kind deliver writes
            raise


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
