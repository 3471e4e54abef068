"""The queue message: versioned JSON that every producer writes and `deliver` reads.

A body that does not parse, or carries an unknown version, is poison: retrying cannot fix it, so `parse_message`
raises `PoisonMessage` with a reason for the dead-letter queue. Every field is bounded (Cognito's own limits for the
pool and the username), so no body can make a request UserHub or SQS would refuse. post_auth writes the same shape
with the standard library only (`post_auth.message_body`); a test checks the two agree.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from chalicelib.identifiers import (
    CONNECTION_ID_PATTERN,
    MESSAGE_ID_MAX_CHARS,
    SUB_PATTERN,
    USER_POOL_ID_MAX_CHARS,
    USER_POOL_ID_PATTERN,
    USERNAME_MAX_CHARS,
)

VERSION: Literal[1] = 1


class EventType(StrEnum):
    SIGNIN = "SIGNIN"
    SIGNUP = "SIGNUP"
    CHANGED = "CHANGED"


class Source(StrEnum):
    POST_AUTH = "post_auth"
    POST_CONFIRMATION = "post_confirmation"
    RECONCILE = "reconcile"
    REPLAY = "replay"
    CAPTURE = "capture"


class PoisonMessage(ValueError):
    """The body can never be delivered as it is; `reason` says why, for the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncMessage(BaseModel):
    """One thing UserHub must hear about a user. Unknown extra fields are ignored within a version."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)

    v: Literal[1] = VERSION
    id: Annotated[str, Field(min_length=1, max_length=MESSAGE_ID_MAX_CHARS)] = Field(
        default_factory=lambda: uuid.uuid4().hex
    )
    type: EventType
    user_pool_id: Annotated[str, Field(max_length=USER_POOL_ID_MAX_CHARS, pattern=USER_POOL_ID_PATTERN)]
    username: Annotated[str, Field(min_length=1, max_length=USERNAME_MAX_CHARS)]
    connection_id: Annotated[str, Field(pattern=CONNECTION_ID_PATTERN)] | None = None
    event_time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    source: Source

    @property
    def dedup_key(self) -> tuple[str, str | None, str]:
        """Messages with the same key in one batch need only one call to UserHub."""
        return (self.username, self.connection_id, self.type.value)

    def to_body(self) -> str:
        return self.model_dump_json()


class CaptureMessage(BaseModel):
    """A change CloudTrail saw, naming the user only as CloudTrail does: a `sub`, and perhaps a username that may be
    an alias. `deliver` resolves it to the canonical username first (`delivery.resolve`), then it is a SyncMessage.
    Nothing from the event but who changed is kept: UserHub re-reads the user (CHANGED), so order does not matter."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)

    v: Literal[1] = VERSION
    id: Annotated[str, Field(min_length=1, max_length=MESSAGE_ID_MAX_CHARS)] = Field(
        default_factory=lambda: uuid.uuid4().hex
    )
    type: Literal[EventType.CHANGED] = EventType.CHANGED
    source: Literal[Source.CAPTURE] = Source.CAPTURE
    user_pool_id: Annotated[str, Field(max_length=USER_POOL_ID_MAX_CHARS, pattern=USER_POOL_ID_PATTERN)] | None = None
    connection_id: Annotated[str, Field(pattern=CONNECTION_ID_PATTERN)] | None = None
    event_time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    event_id: Annotated[str, Field(min_length=1, max_length=128)]  # CloudTrail's eventID: repeats share it
    event_name: Annotated[str, Field(pattern=r"^[A-Za-z]{1,64}$")]
    sub: Annotated[str, Field(pattern=SUB_PATTERN)] | None = None  # safe inside a ListUsers filter
    username_hint: Annotated[str, Field(min_length=1, max_length=USERNAME_MAX_CHARS)] | None = None

    @model_validator(mode="after")
    def _names_someone(self) -> CaptureMessage:
        if not self.sub and not self.username_hint:
            raise ValueError("a captured change needs a sub or a username hint")
        return self

    def to_body(self) -> str:
        return self.model_dump_json()

    def resolved(self, username: str, user_pool_id: str) -> SyncMessage:
        """The message deliver sends once it knows the user's canonical username."""
        return SyncMessage(
            id=self.id,
            type=self.type,
            user_pool_id=user_pool_id,
            username=username,
            connection_id=self.connection_id,
            event_time=self.event_time,
            source=Source.CAPTURE,
        )


def parse_message(body: str | bytes | None) -> SyncMessage | CaptureMessage:
    """Parse a queue body, or raise `PoisonMessage` with a short reason (never the whole body)."""
    if body is None or body == "" or body == b"":
        raise PoisonMessage("empty body")
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PoisonMessage(f"body is not JSON: {type(error).__name__}") from None
    if not isinstance(data, dict):
        raise PoisonMessage(f"body is JSON {type(data).__name__}, not an object")
    version = data.get("v")
    if version != VERSION or isinstance(version, bool):
        raise PoisonMessage(f"unsupported message version {json.dumps(version)[:20]} (this code reads v{VERSION})")
    try:
        if data.get("source") == Source.CAPTURE:
            return CaptureMessage.model_validate(data)
        return SyncMessage.model_validate(data)
    except ValidationError as error:
        problems = ", ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()[:5]
        )
        raise PoisonMessage(f"invalid v{VERSION} message: {problems}"[:500]) from None
