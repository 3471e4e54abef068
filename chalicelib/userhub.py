"""A small async client for the one UserHub call we make: report a user event.

Not the userhub-sdk: it cannot set timeouts or a user agent, ignores Retry-After and sleeps for seconds on 429
(reference/userhub-api.md §7-§8). The wire format is the SDK's: same path encoding (`quote_path`), headers and a
JSON body, which the guide's snippet never sent (`data:` instead of `body:`).

Failures are exceptions in a small hierarchy, so the caller decides with one `except` per outcome:

    UserHubError
    ├── TransientError        retry later (429, 5xx, 408, timeouts, connection errors); has retry_after
    ├── Unauthorized          401: fetch the key again once, then retry later
    └── PermanentError        any other 4xx: retrying cannot help
"""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from chalicelib.messages import EventType
from chalicelib.settings import SQS_MAX_VISIBILITY_SECONDS

USER_AGENT = "userhub-sync/0.1 (+https://github.com/userhub-sync; Amazon Cognito)"
API_VERSION = "2025-05-01"
# userhub_sdk/_internal/util.py quote_path: '@' and ':' stay, '/ ? # % space |' and non-ASCII are escaped.
SDK_SAFE_CHARS = "-._~!$&'()*+,;=:@'"
# httpcore 1.0.9's pool does O(connections × idle connections) work on every request and response
# (encode/httpcore#1035); past ~16 connections one pool costs more CPU than the calls. Pools of at most this size
# keep that cost flat (docs/PERFORMANCE.md, delivery at concurrency 64).
POOL_SHARD_CONNECTIONS = 8


def quote_path(value: str) -> str:
    """Percent-encode a path segment exactly as the official SDK does."""
    return quote(value, safe=SDK_SAFE_CHARS)


def event_path(username: str, connection_id: str) -> str:
    return f"/admin/v1/users/{quote_path(f'{username}@{connection_id}')}:event"


class UserHubError(Exception):
    """Base of every failure of a UserHub call. `status` is None when no HTTP answer arrived."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.reason = reason


class TransientError(UserHubError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Unauthorized(UserHubError):
    pass


class PermanentError(UserHubError):
    pass


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), clamped to [0, 12 h]."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), float(SQS_MAX_VISIBILITY_SECONDS))


def _error_details(response: httpx.Response, secret: str = "") -> tuple[str | None, str | None, str]:
    """UserHub's `code`, `reason` and a short message from an error body (JSON, or text from a proxy).

    `secret` (the key we sent) is cut out first: an error page that echoes the Authorization header must not put
    the key into an exception, and it must go before truncation could leave half of it behind.
    """

    def clean(value: object) -> str:
        text = str(value)
        return text.replace(secret, "***") if secret else text

    content_type = response.headers.get("content-type", "")
    if "json" in content_type:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            code, reason = data.get("code"), data.get("reason")
            message = data.get("message") or ""
            return (clean(code)[:64] if code else None, clean(reason)[:128] if reason else None, clean(message)[:200])
    text = clean(response.text.strip().replace("\n", " "))
    return (None, None, text[:120])


class UserHubClient:
    """Pooled `httpx.AsyncClient`s for the life of the process (warm invocations reuse their connections).

    `max_connections` is split over clients of at most POOL_SHARD_CONNECTIONS connections; each call goes to the
    client with the fewest calls in flight, so no client queues while another has a free connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout + read_timeout)
        shards = 1 if transport is not None else max(1, math.ceil(max_connections / POOL_SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / shards)
        self._clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                limits=httpx.Limits(
                    max_connections=per_shard, max_keepalive_connections=per_shard, keepalive_expiry=30
                ),
                headers={"user-agent": USER_AGENT, "userhub-api-version": API_VERSION},
                transport=transport,
                follow_redirects=False,
            )
            for _ in range(shards)
        ]
        self._in_flight = [0] * shards

    async def report_event(
        self,
        username: str,
        connection_id: str,
        event_type: EventType,
        key: SecretStr,
        *,
        deadline_seconds: float | None = None,
    ) -> None:
        """POST `{"type": ...}` to `:event`; return on 2xx, raise a `UserHubError` subclass otherwise."""
        timeout = self.timeout
        if deadline_seconds is not None:
            cap = max(deadline_seconds, 0.05)
            timeout = httpx.Timeout(
                min(self.timeout.read or cap, cap),
                connect=min(self.timeout.connect or cap, cap),
                pool=cap,
                write=min(self.timeout.write or cap, cap),
            )
        shard = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[shard] += 1
        try:
            response = await self._clients[shard].post(
                event_path(username, connection_id),
                json={"type": event_type.value},
                headers={"authorization": f"Bearer {key.get_secret_value()}"},
                timeout=timeout,
            )
        except httpx.TimeoutException as error:
            raise TransientError(f"timeout: {type(error).__name__}") from None
        except httpx.TransportError as error:
            raise TransientError(f"connection error: {type(error).__name__}") from None
        finally:
            self._in_flight[shard] -= 1
        status = response.status_code
        if 200 <= status < 300:
            return
        code, reason, message = _error_details(response, key.get_secret_value())
        summary = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 401:
            raise Unauthorized(summary, status=status, code=code, reason=reason)
        if status in (408, 429) or status >= 500:
            raise TransientError(
                summary,
                status=status,
                code=code,
                reason=reason,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        raise PermanentError(summary, status=status, code=code, reason=reason)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
