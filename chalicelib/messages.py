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

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from chalicelib.identifiers import (
    CONNECTION_ID_PATTERN,
    MESSAGE_ID_MAX_CHARS,
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


def parse_message(body: str | bytes | None) -> SyncMessage:
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
        return SyncMessage.model_validate(data)
    except ValidationError as error:
        problems = ", ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()[:5]
        )
        raise PoisonMessage(f"invalid v{VERSION} message: {problems}"[:500]) from None
