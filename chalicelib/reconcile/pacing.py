"""ListUsers under Cognito's rate limit: a token bucket in front of every HTTP attempt, retries included.

ListUsers shares the 30 requests/s of the UserList category of Cognito's request rate quotas with every other caller
in the account and Region (https://docs.aws.amazon.com/cognito/latest/developerguide/quotas.html), and throttled
requests count too. So the bucket sits in botocore's `before-send` hook, where it also paces botocore's own retries,
and the client uses botocore's adaptive retry mode, which lowers its send rate when throttled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.token_bucket import TokenBucket

if TYPE_CHECKING:
    from types_boto3_cognito_idp import CognitoIdentityProviderClient
    from types_boto3_cognito_idp.type_defs import UserTypeTypeDef

PAGE_SIZE = 60  # ListUsers' maximum: AWS rejects 61 (moto accepts it, so nothing in tests would catch a mistake)
LIST_USERS_MAX_ATTEMPTS = 10  # botocore attempts per page; adaptive backoff caps each wait at 20 s
COGNITO_EVENTS = "cognito-identity-provider"  # botocore's hyphenated service id, used in event names
THROTTLE_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded"})
_BEFORE_SEND = f"before-send.{COGNITO_EVENTS}.ListUsers"
_NEEDS_RETRY = f"needs-retry.{COGNITO_EVENTS}.ListUsers"
BAD_TOKEN_CODES = frozenset(
    {"InvalidToken", "ExpiredTokenException", "InvalidPaginationTokenException", "InvalidNextTokenException"}
)


class UserPager:
    """ListUsers pages for one invocation under a token bucket, counting its attempts and throttles.

    Use it as a context manager: it hooks the client's botocore events on entry and unhooks them on exit, so a warm
    container's cached client never carries an earlier invocation's hooks or counts. While hooked, every ListUsers
    attempt the client sends waits for a token (Cognito's quota counts them all, whoever sends them); only the
    attempts made for `page()` are counted. Hooks are registered in the middle of botocore's order: after the
    adaptive retry mode's own limiter, so the bucket sets the spacing of the requests as sent.
    """

    def __init__(
        self, client: CognitoIdentityProviderClient, rate: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.client = client
        self.bucket = TokenBucket(rate, sleep=sleep)
        self.requests = 0
        self.throttles = 0
        self._events = getattr(getattr(client, "meta", None), "events", None)
        self._paging = False

    def __enter__(self) -> UserPager:
        if self._events is not None:
            self._events.register(_BEFORE_SEND, self._before_send)
            self._events.register(_NEEDS_RETRY, self._needs_retry)
        return self

    def __exit__(self, *_: object) -> None:
        if self._events is not None:
            self._events.unregister(_BEFORE_SEND, self._before_send)
            self._events.unregister(_NEEDS_RETRY, self._needs_retry)

    def _before_send(self, **_: Any) -> None:
        self.bucket.acquire()
        if self._paging:
            self.requests += 1

    def _needs_retry(self, response: Any = None, **_: Any) -> None:
        if self._paging and response is not None and response[1].get("Error", {}).get("Code") in THROTTLE_CODES:
            self.throttles += 1

    def page(self, pool_id: str, token: str | None) -> tuple[list[UserTypeTypeDef], str | None]:
        if self._events is None:  # not a botocore client (a benchmark's in-process fake): pace the call itself
            self.bucket.acquire()
            self.requests += 1
        params: dict[str, Any] = {"UserPoolId": pool_id, "Limit": PAGE_SIZE}
        if token:
            params["PaginationToken"] = token
        self._paging = True
        try:
            response = self.client.list_users(**params)
        finally:
            self._paging = False
        return response.get("Users") or [], response.get("PaginationToken") or None


def is_bad_token(error: ClientError) -> bool:
    """Cognito refused the page token (expired, or its user is gone): the scan must restart from page one."""
    details = error.response.get("Error", {})
    code, message = details.get("Code", ""), str(details.get("Message", "")).lower()
    return code in BAD_TOKEN_CODES or (code == "InvalidParameterException" and "token" in message)


def make_cognito_client() -> CognitoIdentityProviderClient:
    """The Cognito client reconcile uses: adaptive retries (client-side rate adapts to throttling), bounded waits."""
    return boto3.client(
        "cognito-idp",
        config=Config(
            retries={"mode": "adaptive", "max_attempts": LIST_USERS_MAX_ATTEMPTS}, connect_timeout=5, read_timeout=30
        ),
    )
