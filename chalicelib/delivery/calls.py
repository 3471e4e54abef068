"""Second stage: call UserHub for every message of a batch, concurrently and within the invocation's time.

Each message ends with exactly one `CallResult`, whatever goes wrong while handling it: an exception this module does
not know is a `Transient` result for that message alone, never a failure of the batch. Messages with the same
(user, connection, type) in one batch make one call and share its result. How many calls are in flight, and when the
next may start, is `flow.FlowControl`'s decision. No call starts when too little time is left (`NotStarted`), and
every call that starts ends before the invocation's deadline: one timer for the batch cuts off, at that deadline,
every call still running (`CUT_OFF`, a timeout), so no call pays for a timer of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chalicelib.delivery.flow import FlowControl, Signal, Slot
from chalicelib.messages import SyncMessage
from chalicelib.observability import Metrics, get_logger
from chalicelib.secrets import AdminKeyProvider, KeyMisconfigured, SecretUnavailable
from chalicelib.userhub import (
    CallTimeout,
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
    """Worth trying again later. `configuration` marks our own misconfiguration, which an operator must fix;
    `congestion` a sign that UserHub is loaded (429, 503, a timeout)."""

    detail: str
    status: int | None = None
    code: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    configuration: bool = False
    congestion: bool = False


@dataclass(frozen=True)
class Rejected:
    """UserHub refused the event for good (a 4xx other than 401, 408 and 429)."""

    detail: str
    status: int
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class NotStarted:
    """The invocation ran low on time before this message's turn; `wait` is how long this container must still hold
    back (UserHub's Retry-After, or the rate limit), so the message is offered again only after that."""

    wait: float = 0.0


CallResult = Delivered | Transient | Rejected | NotStarted
DELIVERED = Delivered()
NOT_STARTED = NotStarted()
CUT_OFF = Transient("no complete answer before the time kept for settling the batch", congestion=True)
RATE_LIMITED_RESENDS = 3  # a 429 means "not now", not "not this": send again after the pause, within the invocation
PAUSE_CAP_SECONDS = 300.0  # one odd Retry-After must not silence a container for hours (each message still waits)


@dataclass(frozen=True)
class Deadline:
    """The invocation's end on the monotonic clock, and the time kept back at the end for settling the batch."""

    end: float
    start_margin: float  # no call starts with less than this left
    settle_reserve: float  # every call ends at least this long before `end`

    def start_time_left(self) -> float:
        """Seconds during which a call may still start."""
        return self.end - self.start_margin - time.monotonic()

    def call_seconds(self) -> float:
        return self.end - self.settle_reserve - time.monotonic()


class BatchCaller:
    """Calls UserHub for a batch; one per warm container, so the HTTP pools and the key live across invocations."""

    def __init__(
        self,
        client: UserHubClient,
        keys: AdminKeyProvider,
        *,
        flow: FlowControl,
        default_connection: str,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self.keys = keys
        self.flow = flow
        self.default_connection = default_connection
        self.metrics = metrics

    async def call_all(self, messages: Sequence[SyncMessage], deadline: Deadline) -> list[CallResult]:
        """One result per message, in order."""
        groups: dict[tuple[str, str | None, str], list[int]] = {}
        for index, message in enumerate(messages):
            groups.setdefault(message.dedup_key, []).append(index)
        if len(groups) < len(messages):
            self.metrics.count("duplicates_merged", len(messages) - len(groups))

        cut_off = False  # set once the batch's calls are cancelled at the deadline
        call_seconds: list[float] = []  # each call's duration, into the metrics once the batch is done

        async def run(leader: SyncMessage) -> CallResult:
            result: CallResult = NOT_STARTED
            try:
                for attempt in range(1 + RATE_LIMITED_RESENDS):
                    slot = await self.flow.acquire(deadline.start_time_left)
                    if not isinstance(slot, Slot):
                        return result if attempt else NotStarted(wait=slot)
                    started = time.monotonic()
                    try:
                        result = await self.call_one(leader)
                    except asyncio.CancelledError:
                        result = CUT_OFF
                        raise
                    finally:
                        call_seconds.append(time.monotonic() - started)
                        self.flow.release(slot, *_signal(result))
                    if not (self.flow.adaptive and _rate_limited(result)):
                        break
                    self.metrics.count("rate_limited_resent")
                return result
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not cut_off or task is None:
                    raise
                task.uncancel()  # our own deadline, not a cancellation from outside: the result stands
                return result

        # one timer for the whole batch, not one per call: at the deadline every call still running is cut off
        calls = [asyncio.ensure_future(run(messages[indexes[0]])) for indexes in groups.values()]
        try:
            if calls:
                _, running = await asyncio.wait(calls, timeout=max(deadline.call_seconds(), 0.0))
                if running:
                    cut_off = True
                    for call in running:
                        call.cancel()
                    await asyncio.wait(running)
        finally:
            for call in calls:  # cancelled from outside: the calls go with it, none is left running
                call.cancel()
        self.metrics.count("userhub_calls", len(call_seconds))  # with userhub_429: the alarm's 429 share
        self.metrics.timing("userhub_call_ms", *(seconds * 1000 for seconds in call_seconds))
        by_index: dict[int, CallResult] = {}
        for indexes, call in zip(groups.values(), calls, strict=True):
            result = NOT_STARTED if call.cancelled() else call.result()  # cancelled before it ever ran
            for index in indexes:
                by_index[index] = result
        return [by_index[index] for index in range(len(messages))]

    async def call_one(self, message: SyncMessage) -> CallResult:
        try:
            await self._report(message)
            return DELIVERED
        except PermanentError as error:
            return Rejected(str(error), error.status or 0, error.code, error.reason)
        except ConfigurationError as error:
            return Transient(str(error), configuration=True)
        except TransientError as error:
            congestion = isinstance(error, CallTimeout) or error.status in (429, 503)
            if error.status == 429:
                self.metrics.count("userhub_429")
            return Transient(str(error), error.status, error.code, error.reason, error.retry_after, False, congestion)
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

    async def _report(self, message: SyncMessage) -> None:
        connection = message.connection_id or self.default_connection
        key = self.keys.get()
        try:
            await self.client.report_event(message.username, connection, message.type, key)
        except Unauthorized:
            self.metrics.count("unauthorized")
            fresh = self.keys.refresh(key)
            if fresh.get_secret_value() == key.get_secret_value():
                raise  # the same key again: calling with it cannot help
            self.metrics.count("key_refreshed")
            await self.client.report_event(message.username, connection, message.type, fresh)


def _signal(result: CallResult) -> tuple[Signal, float | None]:
    """What a result tells the flow control, and how long UserHub asked this container to hold back."""
    if isinstance(result, Delivered):
        return Signal.SUCCESS, None
    if isinstance(result, Transient) and result.congestion:
        pause = min(result.retry_after, PAUSE_CAP_SECONDS) if result.retry_after else None
        return (Signal.RATE_LIMITED if _rate_limited(result) else Signal.CONGESTION), pause
    return Signal.NEUTRAL, None


def _rate_limited(result: CallResult) -> bool:
    return isinstance(result, Transient) and result.status == 429
