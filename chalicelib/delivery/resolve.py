"""Stage between parse and call, for captured changes: which user does a CloudTrail record mean?

CloudTrail names the user by `sub`, and hides the username or gives whatever the caller typed (an alias, say). So:

    another pool's change                        → Dropped(other_pool), counted
    a username hint   → AdminGetUser             → its canonical Username (a hint may be an alias)
    a sub, in a pool that signs in by e-mail or phone
                      → the sub is the username (no call, and it works for deleted users too)
    a sub             → ListUsers(Filter='sub = "…"'), paced: the 30/s quota is the account's, shared with reconcile
    not in Cognito (deleted) → the sub→username map the nightly reconcile keeps (`sub_index`)
    still nothing     → Dropped(unresolved), counted: the nightly run catches up
    Cognito throttles or fails → Transient: the message waits and comes back, like a failed UserHub call

Attribute values in the event are never used: UserHub gets CHANGED and re-reads the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.aws_clients import error_code
from chalicelib.delivery.calls import NotStarted, Transient
from chalicelib.messages import CaptureMessage, SyncMessage
from chalicelib.sub_index import SubIndex
from chalicelib.token_bucket import TokenBucket

NOT_FOUND = frozenset({"UserNotFoundException"})
THROTTLED = frozenset({"TooManyRequestsException", "ThrottlingException", "LimitExceededException"})
MISCONFIGURED = frozenset({"AccessDeniedException", "NotAuthorizedException", "ResourceNotFoundException"})


class DropReason(StrEnum):
    OTHER_POOL = "other_pool"  # a change in a pool this stage does not serve
    UNRESOLVED = "unresolved"  # nobody in Cognito or in reconcile's map: left to the nightly run


@dataclass(frozen=True)
class Dropped:
    reason: DropReason


Resolution = SyncMessage | Dropped | Transient | NotStarted


@dataclass
class Resolver:
    """One per container: the pool's sign-in style and the paced ListUsers live across batches."""

    cognito: Callable[[], Any]
    pool_id: str | None
    subs: SubIndex
    list_users: TokenBucket
    _username_is_sub: bool | None = field(default=None, init=False)  # learnt from the pool on first need

    def resolve_all(self, messages: list[CaptureMessage], time_left: Callable[[], float]) -> list[Resolution]:
        """One resolution per message; repeats of one change (or one user) in a batch cost one lookup."""
        seen: dict[tuple[str | None, str | None, str | None], Resolution] = {}
        out: list[Resolution] = []
        for message in messages:
            key = (message.user_pool_id, message.sub, message.username_hint)
            if key not in seen:
                seen[key] = self.resolve(message, time_left)
            found = seen[key]
            out.append(
                message.resolved(found.username, found.user_pool_id) if isinstance(found, SyncMessage) else found
            )
        return out

    def resolve(self, message: CaptureMessage, time_left: Callable[[], float]) -> Resolution:
        pool = self.pool_id
        if pool is None:
            return Transient("USER_POOL_ID: required to resolve captured changes but not set", configuration=True)
        if message.user_pool_id is not None and message.user_pool_id != pool:
            return Dropped(DropReason.OTHER_POOL)
        try:
            username = self._find(message, pool, time_left)
        except _OutOfTime:
            return NotStarted()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            detail = f"Cognito {error.operation_name}: {code}"
            return Transient(detail, configuration=code in MISCONFIGURED, congestion=code in THROTTLED)
        except BotoCoreError as error:
            return Transient(f"Cognito: {type(error).__name__}")
        if username is None:
            return Dropped(DropReason.UNRESOLVED)
        return message.resolved(username, pool)

    def _find(self, message: CaptureMessage, pool: str, time_left: Callable[[], float]) -> str | None:
        if message.username_hint:
            try:
                return str(self.cognito().admin_get_user(UserPoolId=pool, Username=message.username_hint)["Username"])
            except ClientError as error:
                if error_code(error) not in NOT_FOUND:
                    raise
        if not message.sub:
            return None
        if self._signs_in_by_sub(pool):
            return message.sub
        if not self.list_users.try_acquire(timeout=max(time_left(), 0.0)):
            raise _OutOfTime
        users = self.cognito().list_users(UserPoolId=pool, Filter=f'sub = "{message.sub}"', Limit=1)["Users"]
        if users:
            return str(users[0]["Username"])
        return self.subs.username(pool, message.sub)  # deleted since: reconcile's map still knows whose sub it was

    def _signs_in_by_sub(self, pool: str) -> bool:
        """Pools whose sign-in is e-mail or phone (UsernameAttributes) use the sub as the username."""
        if self._username_is_sub is None:
            described = self.cognito().describe_user_pool(UserPoolId=pool)["UserPool"]
            self._username_is_sub = bool(described.get("UsernameAttributes"))
        return self._username_is_sub


class _OutOfTime(Exception):
    """No ListUsers token before the invocation must stop starting work."""
