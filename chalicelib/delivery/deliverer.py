"""`deliver`: one SQS batch through one-way stages, then the answer Lambda needs.

    Record ──parse──▶ SyncMessage | CaptureMessage | Poison
           ──resolve (captured changes only)──▶ SyncMessage | Dropped | Transient
           ──call──▶ CallResult ──plan──▶ Action ──apply──▶ Settled ──▶ response

Every record gets exactly one action and one line of accounting, whatever fails on the way; only the records that
must come back (retries, unconfirmed dead letters) are reported as `batchItemFailures`. When Lambda would ignore
that report (`mapping`), the settled records are deleted here and the invocation fails instead.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from chalicelib.aws_clients import aws_client
from chalicelib.delivery.calls import BatchCaller, CallResult, Deadline, NotStarted, Transient
from chalicelib.delivery.flow import FlowControl
from chalicelib.delivery.mapping import MappingProbe
from chalicelib.delivery.plan import Action, DeadLetter, Delay, Delete, Limits, QueueFacts, plan
from chalicelib.delivery.policy import RetryPolicy
from chalicelib.delivery.records import Poison, Record, parse
from chalicelib.delivery.resolve import Dropped, Resolver
from chalicelib.delivery.settle import QueueDirectory, Settled, apply, delete_settled
from chalicelib.messages import CaptureMessage, SyncMessage
from chalicelib.observability import Metrics, get_logger, log_user
from chalicelib.secrets import AdminKeyProvider
from chalicelib.settings import Settings
from chalicelib.sub_index import SubIndex
from chalicelib.token_bucket import TokenBucket
from chalicelib.userhub import UserHubClient

log = get_logger("deliver")
Parsed = SyncMessage | CaptureMessage | Poison
Ready = SyncMessage | Poison | Dropped | Transient | NotStarted  # after resolution
Outcome = Poison | Dropped | CallResult
SETTLE_RESERVE_SECONDS = 1.0  # every UserHub call ends at least this long before the invocation does


class Disposition(StrEnum):
    """What became of a record, for metrics and the batch's log line."""

    DELIVERED = "delivered"
    RETRY = "retry"
    NOT_STARTED = "not_started"
    DEAD_LETTER = "dead_letter"
    DROPPED = "dropped"  # a captured change for another pool, or nobody: the nightly run covers it


class RetriesPending(Exception):
    """Raised instead of a partial batch response that Lambda would ignore; the settled records are deleted."""


class Deliverer:
    """One per warm container: the HTTP pools, the event loop, the key and the queues' facts live across batches."""

    def __init__(
        self,
        settings: Settings,
        *,
        sqs: Any = None,
        keys: AdminKeyProvider | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        # settling a batch must fit in the time kept back for it: short timeouts, one retry
        self.sqs = sqs or aws_client("sqs", connect_timeout=1, read_timeout=3)
        self.queues = QueueDirectory(self.sqs, settings)
        self.metrics = Metrics("deliver")
        self.caller = BatchCaller(
            UserHubClient(
                settings.userhub_api_url,
                connect_timeout=settings.userhub_connect_timeout,
                read_timeout=settings.userhub_read_timeout,
                max_connections=settings.delivery_concurrency,
            ),
            keys or AdminKeyProvider(settings),
            flow=FlowControl(
                settings.delivery_concurrency,
                adaptive=settings.adaptive_concurrency,
                rate_limit=settings.delivery_rate_limit,
            ),
            default_connection=settings.userhub_connection_id,
            metrics=self.metrics,
        )
        self.limits = Limits(RetryPolicy.from_settings(settings), settings.retention_margin_seconds)
        self._unread_facts = QueueFacts(settings.max_receive_count, None)  # what `plan` gets where it reads none
        self.resolver = Resolver(
            self._cognito_client,
            settings.user_pool_id,
            SubIndex(self._s3_client, settings.snapshot_bucket),
            TokenBucket(settings.capture_list_users_rate),
        )
        self._cognito: Any = None
        self._s3: Any = None
        self._lambda: Any = None
        self.mapping = MappingProbe(self._lambda_client)
        self.loop = asyncio.new_event_loop()
        self.rng = rng or random.Random()
        _freeze_the_cold_start()

    @property
    def keys(self) -> AdminKeyProvider:
        return self.caller.keys

    @property
    def client(self) -> UserHubClient:
        return self.caller.client

    def _cognito_client(self) -> Any:
        if self._cognito is None:
            self._cognito = aws_client("cognito-idp", connect_timeout=1, read_timeout=3)
        return self._cognito

    def _s3_client(self) -> Any:
        if self._s3 is None:
            self._s3 = aws_client("s3", connect_timeout=1, read_timeout=5)
        return self._s3

    def _lambda_client(self) -> Any:
        if self._lambda is None:
            self._lambda = aws_client("lambda", connect_timeout=1, read_timeout=3)
        return self._lambda

    def handle(self, event: Any, remaining_ms: Callable[[], int]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = Deadline(
            end=started + remaining_ms() / 1000,
            start_margin=self.settings.deliver_time_margin_seconds,
            settle_reserve=SETTLE_RESERVE_SECONDS,
        )
        raw = event.get("Records") if isinstance(event, dict) else None
        records = [Record.from_lambda(item) for item in (raw if isinstance(raw, list) else [])]
        parsed = [parse(record) for record in records]
        ready = self._resolve(parsed, deadline)
        outcomes = self._call(ready, deadline)
        now = time.time()
        planned: list[tuple[Record, Action]] = [
            (
                record,
                plan(
                    record,
                    outcome,
                    message if isinstance(message, SyncMessage) else None,
                    self._facts(record, outcome),
                    self.limits,
                    now=now,
                    rng=self.rng,
                ),
            )
            for record, message, outcome in zip(records, ready, outcomes, strict=True)
        ]
        settled = apply(planned, self.sqs, self.queues)
        self._account(settled, outcomes, ready, started)
        return self._respond(settled)

    def _facts(self, record: Record, outcome: Outcome) -> QueueFacts:
        """The queue's redrive and retention, looked up (once per container) only for an outcome that may wait:
        `plan` reads them for nothing else, so a batch that all succeeds makes no SQS call at all."""
        if isinstance(outcome, Transient | NotStarted):
            return self.queues.facts(record.source_arn)
        return self._unread_facts

    def _resolve(self, parsed: list[Parsed], deadline: Deadline) -> list[Ready]:
        captured = [item for item in parsed if isinstance(item, CaptureMessage)]
        resolutions = self.resolver.resolve_all(captured, deadline.start_time_left) if captured else []
        for resolution in resolutions:
            if isinstance(resolution, SyncMessage):
                self.metrics.count("capture_resolved")
            elif isinstance(resolution, Dropped):
                self.metrics.count(f"capture_dropped_{resolution.reason.value}")
        found = iter(resolutions)
        return [next(found) if isinstance(item, CaptureMessage) else item for item in parsed]

    def _call(self, ready: list[Ready], deadline: Deadline) -> list[Outcome]:
        messages = [item for item in ready if isinstance(item, SyncMessage)]
        results = iter(self.loop.run_until_complete(self.caller.call_all(messages, deadline)))
        return [next(results) if isinstance(item, SyncMessage) else item for item in ready]

    def _respond(self, settled: list[Settled]) -> dict[str, Any]:
        back = [s.record.message_id for s in settled if s.comes_back]
        if back and not self.mapping.honours_partial_responses(settled[0].record.source_arn):
            delete_settled(settled, self.sqs, self.queues)
            self.metrics.count("invocation_failed_to_keep_retries")
            self.metrics.flush()
            raise RetriesPending(
                f"{len(back)} of {len(settled)} records must be retried and the SQS mapping does not honour "
                "batchItemFailures (run `userhub-sync wire`); the settled records were deleted"
            )
        self.metrics.flush()
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in back]}

    def _account(
        self,
        settled: list[Settled],
        outcomes: list[Outcome],
        ready: list[Ready],
        started: float,
    ) -> None:
        """Metrics for every record; a log line for every record that did not simply succeed, and one per batch."""
        tally = dict.fromkeys(Disposition, 0)
        configuration: set[str] = set()
        for item, outcome, message in zip(settled, outcomes, ready, strict=True):
            disposition = _disposition(item.action, outcome)
            tally[disposition] += 1
            if isinstance(outcome, Transient) and outcome.configuration:
                configuration.add(outcome.detail)
            if disposition in (Disposition.RETRY, Disposition.DEAD_LETTER):
                self._log_failure(item, message if isinstance(message, SyncMessage) else None)
            if isinstance(item.action, DeadLetter) and not item.confirmed:
                self.metrics.count("dead_letter_unconfirmed")
        for disposition, count in tally.items():
            if count:
                self.metrics.count(disposition.value, count)
        self.metrics.gauge("concurrency_limit", round(self.caller.flow.limit, 2))
        for detail in sorted(configuration):  # loud: this fails every message until an operator fixes it
            self.metrics.count("configuration_error")
            log.error("configuration error: every delivery fails until it is fixed", extra={"error": detail})
        log.info(
            "batch done",
            extra={
                "records": len(settled),
                **{d.value: n for d, n in tally.items()},
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    @staticmethod
    def _log_failure(item: Settled, message: SyncMessage | None) -> None:
        action = item.action
        fields: dict[str, Any] = {
            "message_id": item.record.message_id,
            "user": log_user(message.username) if message else None,
            "attempt": item.record.receive_count,
        }
        if isinstance(action, Delay):
            log.warning("message retry", extra={**fields, "visibility_s": action.seconds, "error": action.why})
        elif isinstance(action, DeadLetter):
            info = action.info
            log.warning(
                "message dead_letter" if item.confirmed else "message dead_letter not confirmed: it stays queued",
                extra={**fields, "failure": info.kind.value, "status": info.status, "error": info.reason},
            )


def _freeze_the_cold_start() -> None:
    """What the cold start imported and built lives as long as the container: `gc.freeze` takes it out of the
    collector's sight, so that the collections a batch's many short-lived objects trigger walk only those, not the
    hundreds of thousands of objects of boto3, pydantic and httpx again and again (measured: about 30 µs of CPU a
    message at 64 calls in flight, docs/PERFORMANCE.md). A full collection first, so that no garbage is kept."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def _disposition(action: Action, outcome: Outcome) -> Disposition:
    if isinstance(outcome, Dropped):
        return Disposition.DROPPED
    if isinstance(action, Delete):
        return Disposition.DELIVERED
    if isinstance(action, DeadLetter):
        return Disposition.DEAD_LETTER
    return Disposition.NOT_STARTED if isinstance(outcome, NotStarted) else Disposition.RETRY
