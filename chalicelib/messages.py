"""The queue message: versioned JSON that every producer writes and `deliver` reads.

A body that does not parse, or carries an unknown version, is poison: retrying cannot fix it, so `parse_message`
raises `PoisonMessage` with a reason for the dead-letter queue. post_auth writes the same shape with the standard
library only (see `post_auth.message_body`); a test checks the two agree.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

VERSION = 1


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
    id: Annotated[str, Field(min_length=1, max_length=128)] = Field(default_factory=lambda: uuid.uuid4().hex)
    type: EventType
    user_pool_id: Annotated[str, Field(min_length=1, max_length=55)]
    username: Annotated[str, Field(min_length=1, max_length=2048)]
    connection_id: Annotated[str, Field(pattern=r"^conn_[A-Za-z0-9_-]+$")] | None = None
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
