"""The shapes of the identifiers every producer and consumer agrees on. Standard library only (post_auth uses it).

Cognito's own limits are from its API reference (UserPoolId: `[\\w-]+_[0-9a-zA-Z]+`, at most 55 characters; Username:
1 to 128 characters); UserHub's connection ids look like `conn_26yEiYymqy6ZmG`.
"""

from __future__ import annotations

import re

CONNECTION_ID_PATTERN = r"^conn_[A-Za-z0-9_-]{1,64}$"
USER_POOL_ID_PATTERN = r"^[\w-]+_[0-9a-zA-Z]+$"
USER_POOL_ID_MAX_CHARS = 55
USERNAME_MAX_CHARS = 128
MESSAGE_ID_MAX_CHARS = 128
# A Cognito `sub` is UUID-shaped; anything bounded without quotes or backslashes is safe in `Filter='sub = "…"'`.
SUB_PATTERN = r"^[\w-]{1,128}$"

_CONNECTION_ID = re.compile(CONNECTION_ID_PATTERN)


def is_connection_id(value: object) -> bool:
    return isinstance(value, str) and _CONNECTION_ID.match(value) is not None
