"""Third stage, pure: what to do with each record, given how its call went and what its queue allows.

    Delivered, Dropped (a captured change for another pool, or nobody) → Delete
    Poison, Rejected                   → DeadLetter (poison / permanent), at once
    Transient, NotStarted              → Delay (the retry schedule; for a record never tried, only as long as the
                                         container is told to hold back, usually 0)
        ... on the last receive the queue's redrive policy allows
        ... or when the next attempt would start after the queue's retention ends (minus a margin)
                                       → DeadLetter (exhausted), with the reason

The last two rules are why nothing leaves the events queue unseen: SQS's own redrive would move the message
without a reason, and its retention would delete it without a trace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chalicelib.dead_letter import DeadLetterInfo, FailureKind
from chalicelib.delivery.calls import CallResult, Delivered, NotStarted, Rejected, Transient
from chalicelib.delivery.policy import RetryPolicy
from chalicelib.delivery.records import Poison, Record
from chalicelib.delivery.resolve import Dropped
from chalicelib.messages import SyncMessage
from chalicelib.sqs_limits import MAX_VISIBILITY_SECONDS
from chalicelib.timefmt import utc_iso


@dataclass(frozen=True)
class QueueFacts:
    """What the source queue allows, read once per container. None: unknown (no permission, a synthetic event)."""

    max_receive_count: int
    retention_seconds: int | None


@dataclass(frozen=True)
class Delete:
    pass


@dataclass(frozen=True)
class Delay:
    seconds: int
    why: str  # for the log line


@dataclass(frozen=True)
class DeadLetter:
    info: DeadLetterInfo


Action = Delete | Delay | DeadLetter
DELETE = Delete()


@dataclass(frozen=True)
class Limits:
    policy: RetryPolicy
    retention_margin: float  # time a visible message may wait before a poller receives it


def plan(
    record: Record,
    outcome: Poison | Dropped | CallResult,
    message: SyncMessage | None,
    queue: QueueFacts,
    limits: Limits,
    *,
    now: float,
    rng: random.Random,
) -> Action:
    def dead(kind: FailureKind, reason: str, answer: Rejected | Transient | None = None) -> DeadLetter:
        """`answer` is how the last call ended (UserHub's answer, or a timeout or connection error with no status),
        kept beside the reason for the operator who reads the DLQ."""
        return DeadLetter(
            DeadLetterInfo(
                kind=kind,
                reason=reason,
                attempts=record.receive_count,
                first_seen=record.first_seen,
                failed_at=datetime.fromtimestamp(now, UTC),
                source_message_id=record.message_id or None,
                username=message.username if message else None,
                status=answer.status if answer else None,
                code=answer.code if answer else None,
                detail=answer.detail if answer else None,
            )
        )

    if isinstance(outcome, Delivered | Dropped):
        return DELETE
    if isinstance(outcome, Poison):
        return dead(FailureKind.POISON, outcome.reason)
    if isinstance(outcome, Rejected):
        return dead(FailureKind.PERMANENT, outcome.reason or outcome.detail, outcome)
    if isinstance(outcome, NotStarted):
        answer = None
        seconds = min(math.ceil(outcome.wait), MAX_VISIBILITY_SECONDS)
        why = "not started: the invocation ran low on time"
        if seconds:
            why = f"not started: this container holds back {seconds} s (Retry-After or DELIVERY_RATE_LIMIT)"
    else:
        why = outcome.detail
        seconds = limits.policy.delay(record.receive_count, outcome.retry_after, rng)
        answer = outcome
    if record.receive_count >= queue.max_receive_count:
        if isinstance(outcome, NotStarted):
            reason = (
                f"never attempted on its last allowed receive ({record.receive_count}): the invocation ran out of time"
            )
        else:
            reason = f"retries exhausted after {record.receive_count} attempts: {outcome.detail}"
        return dead(FailureKind.EXHAUSTED, reason, answer)
    if queue.retention_seconds is not None and record.sent_at is not None:
        last_start = record.sent_at + queue.retention_seconds - limits.retention_margin
        if now + seconds > last_start:
            expires = record.sent_at + queue.retention_seconds
            reason = (
                f"its next attempt ({utc_iso(now + seconds)}) would start after the events queue's retention of "
                f"{timedelta(seconds=queue.retention_seconds)} ends ({utc_iso(expires)}, less a "
                f"{int(limits.retention_margin)} s margin), where SQS would delete it unseen; last error: {why}"
            )
            return dead(FailureKind.EXHAUSTED, reason, answer)
    return Delay(seconds, why)
