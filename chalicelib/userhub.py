"""A small async client for the one UserHub call we make: report a user event.

Not the userhub-sdk: the SDK cannot set timeouts or a user agent, ignores Retry-After and sleeps for seconds on 429.
The wire format is the SDK's: the same path encoding (`quote_path`), headers and a JSON body (which the connection
guide's snippet never sent: it passed `data:` where the SDK expects `body:`).

Every way a call can go wrong ends as one of these exceptions, so the caller decides with one `except` per outcome
and nothing else escapes:

    UserHubError
    ├── TransientError        retry later: 429, 5xx, 408, a 3xx (a proxy or a wrong USERHUB_API_URL), connection and
    │   │                     protocol errors, an answer that cannot be decoded; has retry_after
    │   ├── CallTimeout       no complete answer in time (a sign of load, like 429 and 503)
    │   └── ConfigurationError   the request cannot be built from our configuration (an Admin key holding a
    │                         character HTTP headers cannot carry): retry later, and say so loudly
    ├── Unauthorized          401: fetch the key again, then retry later
    └── PermanentError        any other 4xx: retrying cannot help

Each call is bounded in wall-clock time (`timeout_seconds`): httpx's own timeouts apply per phase and per read, so a
server that drips its answer a byte at a time would otherwise hold a call for as long as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import time
import urllib.request
from datetime import UTC
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from chalicelib.messages import EventType
from chalicelib.sqs_limits import allowed_text

USER_AGENT = "userhub-sync/0.1 (+https://github.com/userhub-sync; Amazon Cognito)"
API_VERSION = "2025-05-01"
# userhub_sdk/_internal/util.py quote_path: '@' and ':' stay, '/ ? # % space |' and non-ASCII are escaped.
SDK_SAFE_CHARS = "-._~!$&'()*+,;=:@'"
# httpcore 1.0.9's pool does O(connections × idle connections) work on every request and response
# (encode/httpcore#1035); past ~16 connections one pool costs more CPU than the calls. Pools of at most this size
# keep that cost flat (docs/PERFORMANCE.md, delivery at concurrency 64).
POOL_SHARD_CONNECTIONS = 8
MIN_CALL_SECONDS = 0.05
_HEADERS = [
    (b"user-agent", USER_AGENT.encode()),
    (b"userhub-api-version", API_VERSION.encode()),
    (b"content-type", b"application/json"),
]
_UNBOUNDED = contextlib.nullcontext()
_BODIES = {event_type: json.dumps({"type": event_type.value}).encode() for event_type in EventType}


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
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, reason=reason)
        self.retry_after = retry_after


class CallTimeout(TransientError):
    pass


class ConfigurationError(TransientError):
    pass


class Unauthorized(UserHubError):
    pass


class PermanentError(UserHubError):
    pass


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
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
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _error_details(response: httpx.Response, secret: str) -> tuple[str | None, str | None, str]:
    """UserHub's `code`, `reason` and a short message from an error answer (JSON, text from a proxy, or nothing).

    `secret` (the key we sent) is cut out first: an error page that echoes the Authorization header must not put
    the key into an exception, and it must go before truncation could leave half of it behind. What remains is
    reduced to characters SQS accepts, since it may end up in the dead-letter queue's attributes.
    """

    def clean(value: object, limit: int) -> str:
        text = str(value).replace(secret, "***") if secret else str(value)
        return allowed_text(" ".join(text.split()))[:limit]

    try:
        content = response.content
    except httpx.ResponseNotRead:
        content = b""
    if "json" in response.headers.get("content-type", "") and content:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            code, reason, message = data.get("code"), data.get("reason"), data.get("message") or ""
            return (clean(code, 64) if code else None, clean(reason, 128) if reason else None, clean(message, 200))
    return (None, None, clean(content.decode("utf-8", "replace"), 120))


class UserHubClient:
    """Pooled httpx transports for the life of the process (warm invocations reuse their connections).

    `max_connections` is split over pools of at most POOL_SHARD_CONNECTIONS connections; each call goes to the
    pool with the fewest calls in flight, so no pool queues while another has a free connection.

    Requests go straight to the transports, not through `httpx.AsyncClient`: one POST shape with a fixed set of
    headers needs none of the client's per-request work (cookie jar, auth and redirect flows, URL merging), which
    costs about as much CPU as the HTTP exchange itself at high concurrency (docs/PERFORMANCE.md). What the client
    did that matters here is kept: the proxy from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY unless NO_PROXY names the host,
    httpx's timeouts per phase, and no redirect is followed.
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
        self._timeout_extension = self.timeout.as_dict()
        shards = 1 if transport is not None else max(1, math.ceil(max_connections / POOL_SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard, keepalive_expiry=30)
        proxy = environment_proxy(self.base_url)
        self._transports: list[httpx.AsyncBaseTransport] = (
            [transport]
            if transport is not None
            else [httpx.AsyncHTTPTransport(limits=limits, proxy=proxy) for _ in range(shards)]
        )
        self._in_flight = [0] * shards

    async def report_event(
        self,
        username: str,
        connection_id: str,
        event_type: EventType,
        key: SecretStr,
        *,
        timeout_seconds: float | None = None,
    ) -> None:
        """POST `{"type": ...}` to `:event`; return on 2xx, raise a `UserHubError` subclass otherwise.

        With `timeout_seconds`, the whole call (connection, request, answer) ends within that many seconds.
        """
        timeout = self._timeout_extension
        if timeout_seconds is not None:
            timeout_seconds = max(timeout_seconds, MIN_CALL_SECONDS)
            timeout = {phase: min(limit or timeout_seconds, timeout_seconds) for phase, limit in timeout.items()}
            timeout["pool"] = timeout_seconds
        try:
            authorization = f"Bearer {key.get_secret_value()}".encode("ascii")
            request = httpx.Request(
                "POST",
                self.base_url + event_path(username, connection_id),
                content=_BODIES[event_type],
                headers=[*_HEADERS, (b"authorization", authorization)],
                extensions={"timeout": timeout},
            )
        except UnicodeEncodeError as error:  # the message holds only the offending character and its position
            raise ConfigurationError(
                f"the Admin key cannot be sent in an HTTP header: character {error.object[error.start]!a} at "
                f"position {error.start - len('Bearer ')} (a pasted invisible or non-ASCII character?)"
            ) from None
        except httpx.InvalidURL as error:
            raise TransientError(f"cannot build the request URL: {error}") from None
        shard = min(range(len(self._transports)), key=self._in_flight.__getitem__)
        self._in_flight[shard] += 1
        try:
            # without timeout_seconds the caller bounds the call (deliver: one timer for a whole batch)
            async with asyncio.timeout(timeout_seconds) if timeout_seconds is not None else _UNBOUNDED:
                response = await self._transports[shard].handle_async_request(request)
                try:
                    await response.aread()
                except httpx.DecodingError:
                    pass  # the status is what matters; an undecodable error body just has no details
                finally:
                    await response.aclose()
        except TimeoutError:
            raise CallTimeout(f"no complete answer within {timeout_seconds:.2f} s") from None
        except httpx.TimeoutException as error:
            raise CallTimeout(f"timeout: {type(error).__name__}") from None
        except httpx.HTTPError as error:  # connection, protocol, proxy errors: nothing reached UserHub for sure
            raise TransientError(f"connection error: {type(error).__name__}") from None
        finally:
            self._in_flight[shard] -= 1
        self._raise_for_status(response, key.get_secret_value())

    @staticmethod
    def _raise_for_status(response: httpx.Response, secret: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        code, reason, message = _error_details(response, secret)
        summary = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 401:
            raise Unauthorized(summary, status=status, code=code, reason=reason)
        if 300 <= status < 400:
            location = allowed_text(response.headers.get("location", ""))[:200]
            raise TransientError(
                f"HTTP {status} redirect to {location or '(no Location)'}: UserHub does not redirect its API; "
                "check USERHUB_API_URL (scheme, host) and any proxy in front of it",
                status=status,
            )
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
        for transport in self._transports:
            await transport.aclose()


def environment_proxy(base_url: str) -> str | None:
    """The proxy httpx's client would take from the environment for `base_url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
    upper or lower case; none when NO_PROXY names the host)."""
    url = httpx.URL(base_url)
    if url.host and urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(url.scheme) or proxies.get("all")
