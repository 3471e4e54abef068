"""The dead-letter queue, for operators: list with the failure reasons, replay, purge.

SQS cannot browse a queue, only receive from it. So every command here receives in batches of 10 with a short
visibility timeout, keeps what it received invisible until it is done (so the same message is not seen twice in one
run), and at the end makes everything it did not delete visible again. Replay deletes a message from the DLQ only
after SendMessageBatch has reported that very entry Successful: a failed or unconfirmed send leaves the message in
the DLQ, to be replayed again; a message that reappears after being sent (its delete failed) is deleted, not sent
twice.

A message another receiver holds (a `dlq list` running elsewhere, a console "poll for messages") cannot be received
until its visibility timeout ends, so a scan cannot see it. Replay compares what it saw with what SQS counted
(visible + not visible) before it started and reports the difference instead of exiting 0 as if it had replayed
everything; `list` hides what it receives only while it builds the list and makes it visible again at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.dead_letter import DeadLetterInfo, FailureKind
from chalicelib.sqs_limits import batches_within, chunks
from userhub_sync.ops.util import OpsError, client, error_code, iso, now, parse_time


# ----------------------------------------------------------------------------------------------- messages
@dataclass
class DlqMessage:
    message_id: str
    receipt_handle: str
    body: str
    failure: DeadLetterInfo | None  # what deliver recorded; None when SQS's redrive moved the message
    system: dict[str, str]  # SQS attributes (SentTimestamp, ApproximateReceiveCount, ...)
    parsed: Any = None  # a chalicelib.messages.SyncMessage, or None for poison
    poison_reason: str | None = None

    @classmethod
    def from_sqs(cls, raw: dict[str, Any]) -> DlqMessage:
        from chalicelib.messages import PoisonMessage, parse_message

        attributes = {
            k: v.get("StringValue", "")
            for k, v in (raw.get("MessageAttributes") or {}).items()
            if v.get("DataType", "").startswith(("String", "Number"))
        }
        message = cls(
            raw["MessageId"],
            raw["ReceiptHandle"],
            raw.get("Body") or "",
            DeadLetterInfo.from_message_attributes(attributes),
            dict(raw.get("Attributes") or {}),
        )
        try:
            message.parsed = parse_message(message.body)
        except PoisonMessage as poison:
            message.poison_reason = poison.reason
        return message

    @property
    def kind(self) -> FailureKind:
        """Why it is here: deliver's verdict, or redriven by SQS itself (poison if the body cannot be read)."""
        if self.failure is not None:
            return self.failure.kind
        return FailureKind.POISON if self.parsed is None else FailureKind.REDRIVEN

    @property
    def status(self) -> int | None:
        return self.failure.status if self.failure else None

    @property
    def code(self) -> str | None:
        return self.failure.code if self.failure else None

    @property
    def reason(self) -> str | None:
        return (self.failure.reason if self.failure else None) or self.poison_reason

    @property
    def attempts(self) -> int | None:
        return self.failure.attempts if self.failure else None

    @property
    def username(self) -> str | None:
        recorded = self.failure.username if self.failure else None
        return recorded or (self.parsed.username if self.parsed is not None else None)

    @property
    def first_seen(self) -> datetime | None:
        """When the event first entered the events queue (SQS keeps the original time on redrive)."""
        recorded = self.failure.first_seen if self.failure else None
        return recorded or parse_time(self.system.get("SentTimestamp"))

    @property
    def failed_at(self) -> datetime | None:
        return self.failure.failed_at if self.failure else None

    def age(self, at: datetime | None = None) -> float | None:
        seen = self.first_seen
        return ((at or now()) - seen).total_seconds() if seen else None

    def to_dict(self, show_body: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "user": self.username,
            "kind": self.kind.value,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "attempts": self.attempts,
            "first_seen": iso(self.first_seen),
            "failed_at": iso(self.failed_at),
            "age_seconds": round(self.age() or 0, 1) if self.first_seen else None,
            "source_message_id": self.failure.source_message_id if self.failure else None,
        }
        if self.parsed is not None:
            data["message"] = {
                "id": self.parsed.id,
                "type": self.parsed.type.value,
                "source": self.parsed.source.value,
                "event_time": iso(self.parsed.event_time),
            }
        if show_body:
            data["body"] = self.body
        return data


@dataclass
class Filters:
    """Which DLQ messages a command acts on; every given criterion must match."""

    reason: str | None = None  # substring of the reason, case-insensitive
    status: int | None = None
    user: str | None = None
    kind: str | None = None
    older_than: float | None = None  # seconds since first seen
    newer_than: float | None = None

    def __post_init__(self) -> None:
        if self.kind and self.kind not in set(FailureKind):
            raise OpsError(f"--kind must be one of {', '.join(FailureKind)}, not {self.kind!r}")

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.reason, self.status, self.user, self.kind, self.older_than, self.newer_than)
        )

    def matches(self, message: DlqMessage, at: datetime | None = None) -> bool:
        if self.reason is not None and self.reason.lower() not in (message.reason or "").lower():
            return False
        if self.status is not None and message.status != self.status:
            return False
        if self.user is not None and message.username != self.user:
            return False
        if self.kind is not None and message.kind != self.kind:
            return False
        age = message.age(at)
        if self.older_than is not None and (age is None or age < self.older_than):
            return False
        return not (self.newer_than is not None and (age is None or age > self.newer_than))


# ----------------------------------------------------------------------------------------------- scanning
class Scanner:
    """Receives a queue's messages once each, holding them invisible until `release`."""

    def __init__(
        self, sqs: Any, url: str, *, visibility: int = 30, wait: int = 1, max_scan: int = 100_000, stale_rounds: int = 3
    ) -> None:
        self.sqs, self.url, self.visibility, self.wait = sqs, url, visibility, wait
        self.max_scan, self.stale_rounds = max_scan, stale_rounds
        self.held: dict[str, str] = {}  # message id -> latest receipt handle, not yet deleted
        self.seen: set[str] = set()
        self.reappeared: list[DlqMessage] = []  # seen before, offered again (visibility lapsed)

    def batches(self) -> Iterator[list[DlqMessage]]:
        """New messages, ten at a time, until the queue offers nothing new."""
        stale = 0
        while len(self.seen) < self.max_scan:
            raw = (
                self.sqs.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=self.visibility,
                    WaitTimeSeconds=self.wait,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages")
                or []
            )
            if not raw:
                return
            fresh: list[DlqMessage] = []
            for item in raw:
                message = DlqMessage.from_sqs(item)
                self.held[message.message_id] = message.receipt_handle
                if message.message_id in self.seen:
                    self.reappeared.append(message)
                else:
                    self.seen.add(message.message_id)
                    fresh.append(message)
            if fresh:
                stale = 0
                yield fresh
            else:
                stale += 1
                if stale >= self.stale_rounds:
                    return

    def delete(self, messages: list[DlqMessage]) -> tuple[list[DlqMessage], list[tuple[DlqMessage, str]]]:
        """Delete with the latest receipt handles; returns (deleted, [(message, error code)])."""
        deleted: list[DlqMessage] = []
        failed: list[tuple[DlqMessage, str]] = []
        for chunk in chunks(messages):
            entries = [
                {"Id": str(i), "ReceiptHandle": self.held.get(m.message_id, m.receipt_handle)}
                for i, m in enumerate(chunk)
            ]
            try:
                response = self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
                ok = {int(e["Id"]) for e in response.get("Successful") or []}
                codes = {int(e["Id"]): e.get("Code", "Failed") for e in response.get("Failed") or []}
            except Exception as error:
                ok, codes = set(), {i: error_code(error) for i in range(len(chunk))}
            for i, message in enumerate(chunk):
                if i in ok:
                    deleted.append(message)
                    self.held.pop(message.message_id, None)
                else:
                    failed.append((message, codes.get(i, "NotConfirmed")))
        return deleted, failed

    def release(self) -> int:
        """Make every held message visible again at once (best effort; otherwise it reappears in `visibility` s)."""
        items = list(self.held.items())
        released = 0
        for chunk in chunks(items):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0} for i, (_, handle) in enumerate(chunk)
            ]
            try:
                response = self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
                released += len(response.get("Successful") or [])
            except Exception:  # they become visible when the timeout lapses anyway
                continue
        self.held.clear()
        return released


# ----------------------------------------------------------------------------------------------- list
@dataclass
class Listing:
    scanned: int
    messages: list[DlqMessage]
    not_released: int = 0  # held messages the final ChangeMessageVisibility(0) did not confirm


def list_messages(
    sqs: Any, url: str, filters: Filters, *, limit: int | None = None, visibility: int = 30, wait: int = 1
) -> Listing:
    scanner = Scanner(sqs, url, visibility=visibility, wait=wait)
    found: list[DlqMessage] = []
    at = now()
    try:
        for batch in scanner.batches():
            found.extend(m for m in batch if filters.matches(m, at))
            if limit is not None and len(found) >= limit:
                found = found[:limit]
                break
    finally:
        held = len(scanner.held)
        released = scanner.release()
    return Listing(len(scanner.seen), found, not_released=held - released)


# ----------------------------------------------------------------------------------------------- replay
class TokenBucket:
    """`rate` tokens a second, bursts of up to `burst`; rate ≤ 0 means no limit."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, min(float(rate), 10.0))
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep
        self.updated = clock()

    def _refill(self) -> None:
        moment = self.clock()
        self.tokens = min(self.capacity, self.tokens + (moment - self.updated) * self.rate)
        self.updated = moment

    def take(self, count: int = 1) -> None:
        if self.rate <= 0:
            return
        for _ in range(count):
            self._refill()
            if self.tokens < 1:
                self.sleep((1 - self.tokens) / self.rate)
                self._refill()
            self.tokens -= 1


@dataclass
class ReplayReport:
    dry_run: bool
    scanned: int = 0
    replayed: int = 0  # sent to the events queue and deleted from the DLQ (or would be, in a dry run)
    skipped: int = 0  # not matching the filters, or poison without --include-poison
    skipped_poison: int = 0
    failed: int = 0  # send not confirmed: still in the DLQ
    duplicates_removed: int = 0  # already sent in this run, offered again: deleted, not sent twice
    not_deleted: int = 0  # sent, but the DLQ delete failed: may be offered again later
    failures: list[dict[str, str]] = field(default_factory=list)
    replayed_ids: list[str] = field(default_factory=list)
    counted_at_start: int = 0  # SQS's ApproximateNumberOfMessages + ...NotVisible before the scan
    in_flight_at_start: int = 0  # ...NotVisible before the scan: held by another receiver, invisible to this one
    unseen: int = 0  # counted at the start but never received by the scan: not replayed, still in the DLQ
    visibility_timeout: int = 0  # the DLQ's default, after which held messages are visible again

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "replayed_ids"}
        data["unseen_detail"] = self.unseen_message() if self.unseen else None
        return data

    def unseen_message(self) -> str:
        if self.in_flight_at_start:
            return (
                f"{self.unseen} message(s) were in flight and not replayed (held by another receiver, such as a "
                f"`dlq list`); run again after their visibility timeout ({self.visibility_timeout} s)"
            )
        return (
            f"{self.unseen} message(s) were not seen by the scan (SQS counted {self.counted_at_start}, the scan "
            f"saw {self.scanned}) and were not replayed; run again (with --wait-seconds 1 or more)"
        )


def queue_counts(sqs: Any, url: str) -> tuple[int, int, int]:
    """(visible, not visible, the queue's VisibilityTimeout), as SQS approximates them."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "VisibilityTimeout"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return (int(attrs.get(names[0], 0)), int(attrs.get(names[1], 0)), int(attrs.get(names[2], 30)))


def replay_body(message: DlqMessage) -> str:
    """The body to send again: a v1 message with source "replay" (id, user, type, event_time kept); poison as is."""
    if message.parsed is None:
        return message.body
    data = json.loads(message.body)
    data["source"] = "replay"
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _send_chunks(messages: list[DlqMessage]) -> list[list[DlqMessage]]:
    return batches_within(messages, lambda message: len(replay_body(message).encode()))


def replay(
    sqs: Any,
    dlq_url: str,
    events_url: str,
    filters: Filters,
    *,
    include_poison: bool = False,
    dry_run: bool = False,
    rate: float = 50.0,
    limit: int | None = None,
    visibility: int | None = None,
    wait: int = 1,
    progress: Callable[[int], None] | None = None,
    bucket: TokenBucket | None = None,
) -> ReplayReport:
    """Send selected DLQ messages back to the events queue; delete each only after its send is confirmed."""
    report = ReplayReport(dry_run=dry_run)
    visible, in_flight, report.visibility_timeout = queue_counts(sqs, dlq_url)
    report.counted_at_start, report.in_flight_at_start = visible + in_flight, in_flight
    bucket = bucket or TokenBucket(rate)
    # held messages must stay invisible while a rate-limited batch is sent
    visibility = visibility or int(max(60, 30 + (20 / rate if rate > 0 else 0)))
    scanner = Scanner(sqs, dlq_url, visibility=visibility, wait=wait)
    sent: set[str] = set()
    undeleted: set[str] = set()
    at = now()
    try:
        for batch in scanner.batches():
            chosen: list[DlqMessage] = []
            for message in batch:
                if not filters.matches(message, at):
                    report.skipped += 1
                elif message.parsed is None and not include_poison:
                    report.skipped += 1
                    report.skipped_poison += 1
                elif limit is not None and report.replayed + report.failed + len(chosen) >= limit:
                    report.skipped += 1
                else:
                    chosen.append(message)
            if dry_run:
                report.replayed += len(chosen)
                report.replayed_ids.extend(m.message_id for m in chosen)
            else:
                for chunk in _send_chunks(chosen):
                    bucket.take(len(chunk))
                    _send_and_delete(sqs, scanner, events_url, chunk, report, sent, undeleted)
            if progress:
                progress(len(batch))
            if limit is not None and report.replayed + report.failed >= limit:
                break
        if not dry_run:
            _finish_deletes(scanner, sent, undeleted, report)
    finally:
        report.scanned = len(scanner.seen)
        scanner.release()
    if limit is None or report.replayed + report.failed < limit:  # a scan cut short by --limit is not a miss
        # the total is unchanged by anyone's receives and releases, unlike each count on its own
        report.unseen = max(0, report.counted_at_start - report.scanned)
    return report


def _send_and_delete(
    sqs: Any,
    scanner: Scanner,
    events_url: str,
    chunk: list[DlqMessage],
    report: ReplayReport,
    sent: set[str],
    undeleted_ids: set[str],
) -> None:
    stamp = iso(now()) or ""
    entries = [
        {
            "Id": str(i),
            "MessageBody": replay_body(m),
            "MessageAttributes": {
                "replayed_from": {"DataType": "String", "StringValue": m.message_id},
                "replayed_at": {"DataType": "String", "StringValue": stamp},
            },
        }
        for i, m in enumerate(chunk)
    ]
    try:
        response = sqs.send_message_batch(QueueUrl=events_url, Entries=entries)
        ok = {int(e["Id"]) for e in response.get("Successful") or []}
        failed = {
            int(e["Id"]): f"{e.get('Code', 'Failed')}: {e.get('Message', '')}".strip(": ")
            for e in response.get("Failed") or []
        }
    except Exception as error:  # nothing confirmed: everything stays in the DLQ
        ok, failed = set(), {i: error_code(error) for i in range(len(chunk))}
    confirmed = [m for i, m in enumerate(chunk) if i in ok]
    for i, message in enumerate(chunk):
        if i not in ok:
            report.failed += 1
            report.failures.append({"message_id": message.message_id, "error": failed.get(i, "NotConfirmed")})
    sent.update(m.message_id for m in confirmed)
    report.replayed += len(confirmed)
    report.replayed_ids.extend(m.message_id for m in confirmed)
    _, undeleted = scanner.delete(confirmed)
    undeleted_ids.update(m.message_id for m, _ in undeleted)


def _finish_deletes(scanner: Scanner, sent: set[str], undeleted_ids: set[str], report: ReplayReport) -> None:
    """Sent messages still in the DLQ (delete failed, or offered again): delete them once more, never resend."""
    again = {m.message_id: m for m in scanner.reappeared if m.message_id in sent}
    if again:
        deleted, _ = scanner.delete(list(again.values()))
        report.duplicates_removed += len(deleted)
        undeleted_ids.difference_update(m.message_id for m in deleted)
    retry = [DlqMessage(mid, scanner.held[mid], "", None, {}) for mid in sorted(undeleted_ids) if mid in scanner.held]
    if retry:
        deleted, _ = scanner.delete(retry)
        undeleted_ids.difference_update(m.message_id for m in deleted)
    report.not_deleted = len(undeleted_ids)


# ----------------------------------------------------------------------------------------------- purge
@dataclass
class PurgeReport:
    mode: str  # "purge_queue" or "filtered"
    deleted: int = 0
    approximate: bool = False
    scanned: int = 0
    failed: int = 0


def purge(
    sqs: Any, url: str, filters: Filters, *, visibility: int = 30, wait: int = 1, approximate_depth: int = 0
) -> PurgeReport:
    """PurgeQueue when no filter is given; otherwise delete the matching messages only."""
    if not filters.active:
        try:
            sqs.purge_queue(QueueUrl=url)
        except Exception as error:
            if error_code(error) in ("AWS.SimpleQueueService.PurgeQueueInProgress", "PurgeQueueInProgress"):
                raise OpsError("a purge of this queue is already in progress (SQS allows one per 60 s)") from None
            raise
        return PurgeReport("purge_queue", deleted=approximate_depth, approximate=True)
    scanner = Scanner(sqs, url, visibility=visibility, wait=wait)
    report = PurgeReport("filtered")
    at = now()
    try:
        for batch in scanner.batches():
            deleted, failed = scanner.delete([m for m in batch if filters.matches(m, at)])
            report.deleted += len(deleted)
            report.failed += len(failed)
    finally:
        report.scanned = len(scanner.seen)
        scanner.release()
    return report


# ----------------------------------------------------------------------------------------------- native
def native_move(dlq_arn: str, events_arn: str, rate: float | None) -> str:
    """SQS's own redrive (StartMessageMoveTask): fast, but no filters and no source rewrite."""
    sqs = client("sqs", max_attempts=1)
    kwargs: dict[str, Any] = {"SourceArn": dlq_arn, "DestinationArn": events_arn}
    if rate and rate > 0:
        kwargs["MaxNumberOfMessagesPerSecond"] = int(min(max(rate, 1), 500))
    try:
        return sqs.start_message_move_task(**kwargs)["TaskHandle"]
    except Exception as error:
        raise OpsError(
            f"StartMessageMoveTask failed ({error_code(error)}): this endpoint may not support SQS's native "
            "redrive (moto does not); drop --native to replay client-side"
        ) from None
