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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from chalicelib.sqs_limits import batches_within
from chalicelib.timefmt import utc_iso
from chalicelib.token_bucket import TokenBucket
from userhub_sync.ops.aws import aws_errors, client, error_code
from userhub_sync.ops.dlq_scan import DlqMessage, Filters, Scanner
from userhub_sync.ops.errors import OpsError

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.literals import QueueAttributeNameType
    from types_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef


@dataclass
class Listing:
    scanned: int
    messages: list[DlqMessage]
    not_released: int = 0  # held messages the final ChangeMessageVisibility(0) did not confirm


def list_messages(
    sqs: SQSClient, url: str, filters: Filters, *, limit: int | None = None, visibility: int = 30, wait: int = 1
) -> Listing:
    scanner = Scanner(sqs, url, visibility=visibility, wait=wait)
    found: list[DlqMessage] = []
    at = datetime.now(UTC)
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


@dataclass(frozen=True)
class ReplayFailure:
    """A message whose send SQS did not confirm: it stays in the DLQ."""

    message_id: str
    error: str


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
    failures: list[ReplayFailure] = field(default_factory=list)
    replayed_ids: list[str] = field(default_factory=list)
    counted_at_start: int = 0  # SQS's ApproximateNumberOfMessages + ...NotVisible before the scan
    in_flight_at_start: int = 0  # ...NotVisible before the scan: held by another receiver, invisible to this one
    unseen: int = 0  # counted at the start but never received by the scan: not replayed, still in the DLQ
    visibility_timeout: int = 0  # the DLQ's default, after which held messages are visible again

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "replayed_ids"}
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


def queue_counts(sqs: SQSClient, url: str) -> tuple[int, int, int]:
    """(visible, not visible, the queue's VisibilityTimeout), as SQS approximates them."""
    names: list[QueueAttributeNameType] = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "VisibilityTimeout",
    ]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return (int(attrs.get(names[0], "0")), int(attrs.get(names[1], "0")), int(attrs.get(names[2], "30")))


def replay_body(message: DlqMessage) -> str:
    """The body to send again: a v1 message with source "replay" (id, user, type, event_time kept); poison as is, and a
    captured change as is too (deliver resolves its user again)."""
    if message.parsed is None or getattr(message.parsed, "source", None) == "capture":
        return message.body
    data = json.loads(message.body)
    data["source"] = "replay"
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _send_chunks(messages: list[DlqMessage]) -> list[list[DlqMessage]]:
    return batches_within(messages, lambda message: len(replay_body(message).encode()))


def replay(
    sqs: SQSClient,
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
    bucket = bucket or TokenBucket(rate if rate > 0 else None, burst=max(1.0, min(rate, 10.0)))  # 0: no limit
    # held messages must stay invisible while a rate-limited batch is sent
    visibility = visibility or int(max(60, 30 + (20 / rate if rate > 0 else 0)))
    scanner = Scanner(sqs, dlq_url, visibility=visibility, wait=wait)
    sent: set[str] = set()
    undeleted: set[str] = set()
    at = datetime.now(UTC)
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
    sqs: SQSClient,
    scanner: Scanner,
    events_url: str,
    chunk: list[DlqMessage],
    report: ReplayReport,
    sent: set[str],
    undeleted_ids: set[str],
) -> None:
    stamp = utc_iso(datetime.now(UTC))
    entries: list[SendMessageBatchRequestEntryTypeDef] = [
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
    except aws_errors() as error:  # nothing confirmed: everything stays in the DLQ
        ok, failed = set(), {i: error_code(error) for i in range(len(chunk))}
    confirmed = [m for i, m in enumerate(chunk) if i in ok]
    for i, message in enumerate(chunk):
        if i not in ok:
            report.failed += 1
            report.failures.append(ReplayFailure(message.message_id, failed.get(i, "NotConfirmed")))
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


class PurgeMode(StrEnum):
    PURGE_QUEUE = "purge_queue"  # no filter: SQS's PurgeQueue, the count is SQS's approximation
    FILTERED = "filtered"  # only the matching messages, received and deleted one batch at a time


@dataclass
class PurgeReport:
    mode: PurgeMode
    deleted: int = 0
    approximate: bool = False
    scanned: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def purge(
    sqs: SQSClient, url: str, filters: Filters, *, visibility: int = 30, wait: int = 1, approximate_depth: int = 0
) -> PurgeReport:
    """PurgeQueue when no filter is given; otherwise delete the matching messages only."""
    if not filters.active:
        try:
            sqs.purge_queue(QueueUrl=url)
        except aws_errors() as error:
            if error_code(error) in ("AWS.SimpleQueueService.PurgeQueueInProgress", "PurgeQueueInProgress"):
                raise OpsError("a purge of this queue is already in progress (SQS allows one per 60 s)") from None
            raise
        return PurgeReport(PurgeMode.PURGE_QUEUE, deleted=approximate_depth, approximate=True)
    scanner = Scanner(sqs, url, visibility=visibility, wait=wait)
    report = PurgeReport(PurgeMode.FILTERED)
    at = datetime.now(UTC)
    try:
        for batch in scanner.batches():
            deleted, failed = scanner.delete([m for m in batch if filters.matches(m, at)])
            report.deleted += len(deleted)
            report.failed += len(failed)
    finally:
        report.scanned = len(scanner.seen)
        scanner.release()
    return report


def native_move(dlq_arn: str, events_arn: str, rate: float | None) -> str:
    """SQS's own redrive (StartMessageMoveTask): fast, but no filters and no source rewrite."""
    sqs = client("sqs", max_attempts=1)
    kwargs: dict[str, Any] = {"SourceArn": dlq_arn, "DestinationArn": events_arn}
    if rate and rate > 0:
        kwargs["MaxNumberOfMessagesPerSecond"] = int(min(max(rate, 1), 500))
    try:
        return sqs.start_message_move_task(**kwargs)["TaskHandle"]
    except aws_errors() as error:
        raise OpsError(
            f"StartMessageMoveTask failed ({error_code(error)}): this endpoint may not support SQS's native "
            "redrive (moto does not); drop --native to replay client-side"
        ) from None
