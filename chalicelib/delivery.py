"""Turn a Lambda SQS batch into outcomes: delivered, retry later, or dead-lettered with the reason.

Like Powertools' batch processor, every record gets an outcome and only the retryable ones are reported back
(`batchItemFailures`), so one bad message never holds up the rest. Unlike it, each retry gets its own backoff
through `ChangeMessageVisibility`, computed from the receive count (SQS counts attempts for us), so a message can
keep trying for a day without a scheduler or a database.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from chalicelib.messages import PoisonMessage, SyncMessage, parse_message
from chalicelib.observability import Metrics, get_logger, redact
from chalicelib.secrets import AdminKeyProvider, SecretUnavailable
from chalicelib.settings import SQS_MAX_VISIBILITY_SECONDS, Settings, get_settings
from chalicelib.userhub import PermanentError, TransientError, Unauthorized, UserHubClient, UserHubError

log = get_logger("deliver")
CALL_SAFETY_SECONDS = 0.5  # left between a call's own timeout and the end of the invocation


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with proportional jitter, stated in three numbers (stamina-style).

    Attempt n waits base * 2**(n-1) seconds, times 1..(1+jitter), never less than Retry-After, never more than
    `cap` (SQS allows 12 h). With the defaults (30 s, 12 h, 13 receives) a message keeps retrying for at least
    sum(30 * 2**k for k in 0..10) + 43200 s = 29 h before it is dead-lettered.
    """

    base: float = 30
    cap: float = SQS_MAX_VISIBILITY_SECONDS
    jitter: float = 0.25

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> int:
        exponent = min(max(attempt, 1) - 1, 40)
        wait = self.base * (2**exponent) * (1 + (rng or random).uniform(0, self.jitter))
        if retry_after is not None:
            wait = max(wait, retry_after)
        return int(min(max(wait, 0), self.cap, SQS_MAX_VISIBILITY_SECONDS) + 0.999)

    def minimum_horizon(self, max_receive_count: int) -> float:
        """Seconds a message is retried, at the least, before attempt `max_receive_count` dead-letters it."""
        return sum(min(self.base * 2 ** (n - 1), self.cap) for n in range(1, max_receive_count))

    def longest_horizon(self, max_receive_count: int) -> float:
        """Seconds from the first receive to attempt `max_receive_count` when every wait is at its largest (jitter
        at its maximum, capped, rounded up as `delay` does, no Retry-After): what the queue's retention must hold."""
        waits = (self.base * 2 ** min(n - 1, 40) * (1 + self.jitter) for n in range(1, max_receive_count))
        return float(sum(int(min(wait, self.cap, SQS_MAX_VISIBILITY_SECONDS) + 0.999) for wait in waits))


class Kind(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    NOT_STARTED = "not_started"  # the invocation ran low on time; SQS will offer it again


@dataclass
class Record:
    """The fields of a Lambda SQS record that delivery needs."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_timestamp: str | None
    source_arn: str | None

    @classmethod
    def from_lambda(cls, raw: dict[str, Any]) -> Record:
        attributes = raw.get("attributes") or {}
        try:
            receive_count = int(attributes.get("ApproximateReceiveCount", 1))
        except (TypeError, ValueError):
            receive_count = 1
        return cls(
            message_id=str(raw.get("messageId", "")),
            receipt_handle=str(raw.get("receiptHandle", "")),
            body=raw.get("body") if isinstance(raw.get("body"), str) else "",
            receive_count=max(receive_count, 1),
            sent_timestamp=attributes.get("SentTimestamp"),
            source_arn=raw.get("eventSourceARN"),
        )


@dataclass
class Outcome:
    record: Record
    kind: Kind
    message: SyncMessage | None = None
    error: str | None = None
    status: int | None = None
    code: str | None = None
    reason: str | None = None
    failure_kind: str | None = None  # poison / permanent / exhausted, for the DLQ
    retry_after: float | None = None
    visibility: int | None = None

    @property
    def user(self) -> str | None:
        return self.message.username if self.message else None


def _iso(ts_ms: str | None) -> str | None:
    try:
        return datetime.fromtimestamp(int(ts_ms or "") / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError):
        return None


def dlq_attributes(outcome: Outcome) -> dict[str, dict[str, str]]:
    """The failure, as SQS message attributes that `userhub-sync dlq list` filters on (SQS allows 10, none empty)."""
    values = {
        "failure_kind": outcome.failure_kind,
        "failure_status": str(outcome.status) if outcome.status is not None else None,
        "failure_code": outcome.code,
        "failure_reason": redact(outcome.reason or outcome.error or "")[:1000] or None,
        "failure_detail": redact(outcome.error or "")[:1000] or None,
        "attempts": str(outcome.record.receive_count),
        "first_seen": _iso(outcome.record.sent_timestamp),
        "failed_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "source_message_id": outcome.record.message_id or None,
        "username": (outcome.user or "")[:256] or None,
    }
    return {k: {"DataType": "String", "StringValue": v} for k, v in values.items() if v}


class QueueDirectory:
    """Queue URLs and redrive settings, looked up once per cold start."""

    def __init__(self, sqs: Any, settings: Settings) -> None:
        self._sqs = sqs
        self._settings = settings
        self._urls: dict[str, str] = {}
        self._max_receive: dict[str, int] = {}

    def url(self, name: str, account: str | None = None) -> str:
        if name not in self._urls:
            kwargs = {"QueueName": name}
            if account and account.isdigit():
                kwargs["QueueOwnerAWSAccountId"] = account
            self._urls[name] = self._sqs.get_queue_url(**kwargs)["QueueUrl"]
        return self._urls[name]

    def source_url(self, source_arn: str | None) -> str | None:
        """The URL of the queue a record came from; None if even the configured events queue is unknown."""
        parts = (source_arn or "").split(":")
        candidates = [(parts[5], parts[4])] if len(parts) == 6 and parts[2] == "sqs" else []
        candidates.append((self._settings.events_queue_name, None))
        for name, account in candidates:
            try:
                return self.url(name, account)
            except Exception as error:  # a synthetic event, or no permission: fall back, never fail the batch
                log.warning("queue URL unknown", extra={"queue": name, "error": type(error).__name__})
        return None

    def dlq_url(self) -> str:
        return self.url(self._settings.dead_letter_queue_name)

    def max_receive_count(self, source_url: str | None) -> int:
        """The redrive policy's maxReceiveCount: we dead-letter on that attempt ourselves, with the reason."""
        if source_url is None:
            return self._settings.max_receive_count
        if source_url not in self._max_receive:
            count = self._settings.max_receive_count
            try:
                attrs = self._sqs.get_queue_attributes(QueueUrl=source_url, AttributeNames=["RedrivePolicy"])
                policy = json.loads(attrs.get("Attributes", {}).get("RedrivePolicy") or "{}")
                count = int(policy.get("maxReceiveCount") or count)
            except Exception as error:  # the fallback is documented; log and carry on
                log.warning("cannot read redrive policy", extra={"queue_url": source_url, "error": str(error)})
            self._max_receive[source_url] = count
        return self._max_receive[source_url]


class Deliverer:
    """Delivers batches; one instance (and one HTTP pool and event loop) per warm Lambda container."""

    def __init__(
        self,
        settings: Settings,
        *,
        sqs: Any = None,
        keys: AdminKeyProvider | None = None,
        client: UserHubClient | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if sqs is None:
            import boto3

            sqs = boto3.client("sqs")
        self.settings = settings
        self.sqs = sqs
        self.queues = QueueDirectory(sqs, settings)
        self.keys = keys or AdminKeyProvider(settings)
        self.loop = asyncio.new_event_loop()
        self.client = client or UserHubClient(
            settings.userhub_api_url,
            connect_timeout=settings.userhub_connect_timeout,
            read_timeout=settings.userhub_read_timeout,
            max_connections=settings.delivery_concurrency,
        )
        self.policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_jitter)
        self.metrics = metrics or Metrics("deliver")
        self.rng = rng or random.Random()

    # ---------------------------------------------------------------- entry point
    def handle(self, event: dict[str, Any], remaining_ms: Callable[[], int]) -> dict[str, Any]:
        started = time.monotonic()
        records = [Record.from_lambda(raw) for raw in (event.get("Records") or [])]
        outcomes = self.loop.run_until_complete(self._deliver_all(records, remaining_ms))
        self._settle(outcomes)
        failures = [o for o in outcomes if o.kind in (Kind.RETRY, Kind.NOT_STARTED)]
        for outcome in outcomes:
            self.metrics.count(outcome.kind.value)
        log.info(
            "batch done",
            extra={
                "records": len(records),
                **{k.value: sum(1 for o in outcomes if o.kind == k) for k in Kind},
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        self.metrics.flush()
        return {"batchItemFailures": [{"itemIdentifier": o.record.message_id} for o in failures]}

    # ---------------------------------------------------------------- delivery
    async def _deliver_all(self, records: list[Record], remaining_ms: Callable[[], int]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        groups: dict[tuple[str, str | None, str], list[Outcome]] = {}
        for record in records:
            try:
                message = parse_message(record.body)
            except PoisonMessage as poison:
                outcomes.append(Outcome(record, Kind.DEAD_LETTER, failure_kind="poison", reason=poison.reason))
                continue
            outcome = Outcome(record, Kind.NOT_STARTED, message=message)
            outcomes.append(outcome)
            groups.setdefault(message.dedup_key, []).append(outcome)
        if len(groups) < sum(len(g) for g in groups.values()):
            self.metrics.count("duplicates_merged", sum(len(g) for g in groups.values()) - len(groups))
        semaphore = asyncio.Semaphore(self.settings.delivery_concurrency)

        async def run(group: list[Outcome]) -> None:
            async with semaphore:
                seconds_left = remaining_ms() / 1000
                if seconds_left < self.settings.deliver_time_margin_seconds:
                    return  # leave as NOT_STARTED: reported as failures, SQS redelivers them
                await self._deliver_one(group[0], seconds_left - CALL_SAFETY_SECONDS)
            for follower in group[1:]:
                follower.kind, follower.status, follower.code = group[0].kind, group[0].status, group[0].code
                follower.reason, follower.error = group[0].reason, group[0].error
                follower.failure_kind, follower.retry_after = group[0].failure_kind, group[0].retry_after

        await asyncio.gather(*(run(group) for group in groups.values()))
        return outcomes

    async def _deliver_one(self, outcome: Outcome, budget: float) -> None:
        message = outcome.message
        assert message is not None
        connection = message.connection_id or self.settings.userhub_connection_id
        started = time.monotonic()
        try:
            key = self.keys.get()
            try:
                await self.client.report_event(message.username, connection, message.type, key, deadline_seconds=budget)
            except Unauthorized:
                self.metrics.count("key_refreshed")
                fresh = self.keys.refresh(key)
                await self.client.report_event(
                    message.username,
                    connection,
                    message.type,
                    fresh,
                    deadline_seconds=budget - (time.monotonic() - started),
                )
            outcome.kind = Kind.DELIVERED
        except PermanentError as error:
            outcome.kind, outcome.failure_kind = Kind.DEAD_LETTER, "permanent"
            self._copy_error(outcome, error)
        except (TransientError, Unauthorized) as error:
            outcome.kind = Kind.RETRY
            self._copy_error(outcome, error)
            outcome.retry_after = getattr(error, "retry_after", None)
        except SecretUnavailable as error:
            outcome.kind, outcome.error = Kind.RETRY, str(error)
        finally:
            self.metrics.timing("userhub_call_ms", (time.monotonic() - started) * 1000)

    @staticmethod
    def _copy_error(outcome: Outcome, error: UserHubError) -> None:
        outcome.status, outcome.code, outcome.reason, outcome.error = error.status, error.code, error.reason, str(error)

    # ---------------------------------------------------------------- SQS side effects
    def _settle(self, outcomes: list[Outcome]) -> None:
        """Backoff for retries (or dead-letter on the last attempt), then move dead letters to the DLQ."""
        retries = [o for o in outcomes if o.kind == Kind.RETRY]
        for outcome in retries:
            source_url = self.queues.source_url(outcome.record.source_arn)
            if outcome.record.receive_count >= self.queues.max_receive_count(source_url):
                outcome.kind, outcome.failure_kind = Kind.DEAD_LETTER, "exhausted"
                outcome.reason = f"retries exhausted after {outcome.record.receive_count} attempts: {outcome.error}"
            else:
                outcome.visibility = self.policy.delay(outcome.record.receive_count, outcome.retry_after, self.rng)
        for outcome in outcomes:
            if outcome.kind == Kind.NOT_STARTED:  # not tried: offer it to the next invocation at once
                outcome.visibility = 0
        self._change_visibility([o for o in outcomes if o.kind in (Kind.RETRY, Kind.NOT_STARTED)])
        self._dead_letter([o for o in outcomes if o.kind == Kind.DEAD_LETTER])
        for outcome in outcomes:
            if outcome.kind in (Kind.RETRY, Kind.DEAD_LETTER):
                log.warning(
                    f"message {outcome.kind.value}",
                    extra={
                        "message_id": outcome.record.message_id,
                        "user": outcome.user,
                        "attempt": outcome.record.receive_count,
                        "status": outcome.status,
                        "failure": outcome.failure_kind,
                        "error": outcome.reason or outcome.error,
                        "visibility_s": outcome.visibility,
                    },
                )

    def _by_queue(self, outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
        grouped: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            url = self.queues.source_url(outcome.record.source_arn)
            if url is not None:  # unknown queue: nothing to change; Lambda's own retry still applies
                grouped.setdefault(url, []).append(outcome)
        return grouped

    def _change_visibility(self, retries: list[Outcome]) -> None:
        for url, items in self._by_queue(retries).items():
            for chunk in _chunks(items, 10):
                entries = [
                    {"Id": str(i), "ReceiptHandle": o.record.receipt_handle, "VisibilityTimeout": o.visibility}
                    for i, o in enumerate(chunk)
                ]
                try:
                    failed = self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries).get("Failed", [])
                except Exception as error:
                    failed = [{"Id": e["Id"], "Code": type(error).__name__} for e in entries]
                for item in failed:  # the message still comes back after the queue's visibility timeout
                    log.warning(
                        "visibility not changed",
                        extra={"message_id": chunk[int(item["Id"])].record.message_id, "code": item.get("Code")},
                    )

    def _dead_letter(self, dead: list[Outcome]) -> None:
        """Send to the DLQ with the reason; only confirmed sends are reported as done (and deleted)."""
        if not dead:
            return
        try:
            dlq_url = self.queues.dlq_url()
        except Exception as error:  # no DLQ: keep the messages in the events queue rather than lose them
            log.error("dead-letter queue unknown", extra={"error": f"{type(error).__name__}: {error}"})
            for outcome in dead:
                outcome.kind, outcome.visibility = Kind.RETRY, None
            return
        confirmed: list[Outcome] = []
        for chunk in _dead_letter_batches(dead):
            entries = [{"Id": str(i), **entry} for i, (_, entry) in enumerate(chunk)]
            try:
                response = self.sqs.send_message_batch(QueueUrl=dlq_url, Entries=entries)
                ok = {int(item["Id"]) for item in response.get("Successful", [])}
            except Exception as error:
                log.error("dead-letter send failed", extra={"error": str(error)})
                ok = set()
            for i, (outcome, _) in enumerate(chunk):
                if i in ok:
                    confirmed.append(outcome)
                else:  # not in the DLQ yet: keep it in the events queue, it will be dead-lettered next time
                    outcome.kind, outcome.visibility = Kind.RETRY, None
        self.metrics.count("dead_letter_sent", len(confirmed))
        for url, items in self._by_queue(confirmed).items():
            for chunk in _chunks(items, 10):
                entries = [{"Id": str(i), "ReceiptHandle": o.record.receipt_handle} for i, o in enumerate(chunk)]
                try:  # best effort: Lambda deletes it too, since it is not reported as a failure
                    self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                except Exception as error:
                    log.info("delete after dead-letter failed", extra={"error": type(error).__name__})


SQS_PAYLOAD_BYTES = 1_048_576  # SendMessageBatch: one message, and the whole request, bodies + attributes
_ESSENTIAL_ATTRIBUTES = (
    "failure_kind",
    "failure_status",
    "failure_code",
    "failure_reason",
    "attempts",
    "source_message_id",
)


def _payload_bytes(entry: dict[str, Any]) -> int:
    size = len(entry["MessageBody"].encode())
    for name, value in entry["MessageAttributes"].items():
        size += len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
    return size


def _dead_letter_batches(dead: list[Outcome]) -> list[list[tuple[Outcome, dict[str, Any]]]]:
    """DLQ entries in batches SQS accepts: at most 10 and SQS_PAYLOAD_BYTES in all (large poison bodies add up)."""
    batches: list[list[tuple[Outcome, dict[str, Any]]]] = []
    current: list[tuple[Outcome, dict[str, Any]]] = []
    size = 0
    for outcome in dead:
        entry = {"MessageBody": outcome.record.body or "<empty>", "MessageAttributes": dlq_attributes(outcome)}
        if _payload_bytes(entry) > SQS_PAYLOAD_BYTES:  # a body near 1 MiB: keep only the attributes that matter
            attributes = {k: v for k, v in entry["MessageAttributes"].items() if k in _ESSENTIAL_ATTRIBUTES}
            if "failure_reason" in attributes:
                attributes["failure_reason"] = {
                    "DataType": "String",
                    "StringValue": attributes["failure_reason"]["StringValue"][:200],
                }
            entry["MessageAttributes"] = attributes
        length = _payload_bytes(entry)
        if current and (len(current) == 10 or size + length > SQS_PAYLOAD_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append((outcome, entry))
        size += length
    if current:
        batches.append(current)
    return batches


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


_deliverer: Deliverer | None = None


def get_deliverer() -> Deliverer:
    """The warm container's deliverer; rebuilt only if the settings (or AWS endpoint) changed."""
    global _deliverer
    settings = get_settings()
    if _deliverer is None or _deliverer.settings is not settings:
        _deliverer = Deliverer(settings)
    return _deliverer


def reset_deliverer() -> None:
    """Drop the cached deliverer (tests, the CLI switching settings)."""
    global _deliverer
    _deliverer = None


def handle_sqs_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    remaining = getattr(context, "get_remaining_time_in_millis", None) or (lambda: 900_000)
    return get_deliverer().handle(event, remaining)
