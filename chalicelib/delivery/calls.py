"""Second stage: call UserHub for every message of a batch, concurrently and within the invocation's time.

Each message ends with exactly one `CallResult`, whatever goes wrong while handling it: an exception this module does
not know is a `Transient` result for that message alone, never a failure of the batch. Messages with the same
(user, connection, type) in one batch make one call and share its result. No call starts when too little time is
left (`NotStarted`), and every call that starts ends before the invocation's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chalicelib.messages import SyncMessage
from chalicelib.observability import Metrics, get_logger
from chalicelib.secrets import AdminKeyProvider, KeyMisconfigured, SecretUnavailable
from chalicelib.userhub import (
    ConfigurationError,
    PermanentError,
    TransientError,
    Unauthorized,
    UserHubClient,
    UserHubError,
)

log = get_logger("deliver")


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Transient:
    """Worth trying again later. `configuration` marks our own misconfiguration, which an operator must fix."""

    detail: str
    status: int | None = None
    code: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    configuration: bool = False


@dataclass(frozen=True)
class Rejected:
    """UserHub refused the event for good (a 4xx other than 401, 408 and 429)."""

    detail: str
    status: int
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class NotStarted:
    """The invocation ran low on time before this message's turn."""


CallResult = Delivered | Transient | Rejected | NotStarted
DELIVERED = Delivered()
NOT_STARTED = NotStarted()


@dataclass(frozen=True)
class Deadline:
    """The invocation's end on the monotonic clock, and the time kept back at the end for settling the batch."""

    end: float
    start_margin: float  # no call starts with less than this left
    settle_reserve: float  # every call ends at least this long before `end`

    def can_start(self) -> bool:
        return self.end - time.monotonic() >= self.start_margin

    def call_seconds(self) -> float:
        return self.end - self.settle_reserve - time.monotonic()


class BatchCaller:
    """Calls UserHub for a batch; one per warm container, so the HTTP pools and the key live across invocations."""

    def __init__(
        self,
        client: UserHubClient,
        keys: AdminKeyProvider,
        *,
        concurrency: int,
        default_connection: str,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self.keys = keys
        self.concurrency = concurrency
        self.default_connection = default_connection
        self.metrics = metrics

    async def call_all(self, messages: Sequence[SyncMessage], deadline: Deadline) -> list[CallResult]:
        """One result per message, in order."""
        groups: dict[tuple[str, str | None, str], list[int]] = {}
        for index, message in enumerate(messages):
            groups.setdefault(message.dedup_key, []).append(index)
        if len(groups) < len(messages):
            self.metrics.count("duplicates_merged", len(messages) - len(groups))
        semaphore = asyncio.Semaphore(self.concurrency)

        async def run(leader: SyncMessage) -> CallResult:
            async with semaphore:
                if not deadline.can_start():
                    return NOT_STARTED
                return await self.call_one(leader, deadline)

        results = await asyncio.gather(*(run(messages[indexes[0]]) for indexes in groups.values()))
        by_index: dict[int, CallResult] = {}
        for indexes, result in zip(groups.values(), results, strict=True):
            for index in indexes:
                by_index[index] = result
        return [by_index[index] for index in range(len(messages))]

    async def call_one(self, message: SyncMessage, deadline: Deadline) -> CallResult:
        started = time.monotonic()
        try:
            await self._report(message, deadline)
            return DELIVERED
        except PermanentError as error:
            return Rejected(str(error), error.status or 0, error.code, error.reason)
        except ConfigurationError as error:
            return Transient(str(error), configuration=True)
        except TransientError as error:
            return Transient(str(error), error.status, error.code, error.reason, error.retry_after)
        except UserHubError as error:  # Unauthorized, when a fresh key did not help
            return Transient(str(error), error.status, error.code, error.reason)
        except KeyMisconfigured as error:
            return Transient(str(error), configuration=True)
        except SecretUnavailable as error:
            return Transient(str(error))
        except Exception as error:  # one message's surprise must not become the batch's failure
            self.metrics.count("unexpected_error")
            log.error("unexpected error delivering a message", exc_info=True, extra={"message_id": message.id})
            return Transient(f"unexpected {type(error).__name__}: {error}"[:500])
        finally:
            self.metrics.timing("userhub_call_ms", (time.monotonic() - started) * 1000)

    async def _report(self, message: SyncMessage, deadline: Deadline) -> None:
        connection = message.connection_id or self.default_connection
        key = self.keys.get()
        try:
            await self.client.report_event(
                message.username, connection, message.type, key, timeout_seconds=deadline.call_seconds()
            )
        except Unauthorized:
            self.metrics.count("unauthorized")
            fresh = self.keys.refresh(key)
            if fresh.get_secret_value() == key.get_secret_value():
                raise  # the same key again: calling with it cannot help
            self.metrics.count("key_refreshed")
            await self.client.report_event(
                message.username, connection, message.type, fresh, timeout_seconds=deadline.call_seconds()
            )
