"""Nightly reconcile: tell UserHub about every user that is new, changed or gone since the last complete run.

Anchors and what this does beyond them:

- AWS's Cognito user-profiles export reference architecture counts calls by hand, stops a minute before the Lambda
  timeout and continues with the pagination token, and sweeps what the last export did not see. Here a token bucket
  paces every ListUsers attempt (retries included), botocore's adaptive mode backs off on throttling, a checkpoint
  in S3 lets a run continue in a new invocation, and the sweep compares 64-bit fingerprints, so a run enqueues only
  new, changed and deleted users instead of rewriting everything.
- cognito-backup-restore sleeps between pages; a token bucket gives the same protection with an exact rate.

Restart safety rests on one rule: the snapshot of a run (and every checkpoint) is written only after every message
it implies was accepted by SQS. A crash anywhere therefore leaves the previous snapshot, or the previous checkpoint,
in place and the next attempt finds the same work again: nothing is lost, at worst something is sent twice.

A damaged committed snapshot (not gzip, cut short, an entry that does not parse, a wrong format marker or entry
count) never wedges reconcile: it is read to the end before any of it is trusted, and if it is damaged the run treats
the baseline as missing (every listed user is sent, no deletion is inferred from it) and replaces it at commit.
Every run that fails is recorded in `reconcile/last-run.json`; `reconcile/last-complete.json` keeps the last
complete one, so `userhub-sync status` can say both.

One run may span many invocations. Its state is one S3 object, the run record (`reconcile/<pool>/run.json`): lease,
pagination token, counters, and keys of the partial snapshot. Every write of it is conditional on the ETag last
read (S3 If-Match / If-None-Match), so two invocations can never both believe they own the run. See
docs/RECONCILE.md for the whole protocol and the measurements.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.messages import EventType, Source, SyncMessage
from chalicelib.observability import Metrics, get_logger, redact
from chalicelib.settings import Settings, environment_key, get_settings
from chalicelib.snapshot import (
    FingerprintTable,
    SnapshotDamaged,
    SnapshotWriter,
    Verdict,
    fingerprint,
    read_entries,
    user_key,
)

log = get_logger("reconcile")

PAGE_SIZE = 60  # ListUsers' maximum: AWS rejects 61 (moto accepts it, so nothing in tests would catch a mistake)
LIST_USERS_MAX_ATTEMPTS = 10  # botocore attempts per page; adaptive backoff caps each wait at 20 s
SQS_BATCH = 10
HANDOFF_GRACE_SECONDS = 300  # lease kept for the continuation to start; after that anyone may adopt the run
LAMBDA_LEASE_SLACK_SECONDS = 30
LOCAL_LEASE_SECONDS = 900  # a local run has no deadline: it holds the lease in 15-minute slices, checkpointing
LOCAL_RENEW_SECONDS = 300  # ... renewed (with a checkpoint) when less than this is left
PREFIX = "reconcile"
LAST_RUN_KEY = f"{PREFIX}/last-run.json"  # the last run that ended: complete, stopped or failed
LAST_COMPLETE_KEY = f"{PREFIX}/last-complete.json"  # the last complete run
SNAPSHOT_FORMAT = "userhub-sync-snapshot-v1"
COGNITO_EVENTS = "cognito-identity-provider"  # botocore's hyphenated service id, used in event names
THROTTLE_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded"})
BAD_TOKEN_CODES = frozenset(
    {"InvalidToken", "ExpiredTokenException", "InvalidPaginationTokenException", "InvalidNextTokenException"}
)
CATEGORIES = ("new", "changed", "deleted", "unchanged")


class ReconcileError(Exception):
    """The run cannot go on; the message says why and what the next run will do."""


class LeaseConflict(ReconcileError):
    """A conditional write of the run record lost: another invocation owns the run now."""


class TooManyRestarts(ReconcileError):
    """Page tokens kept being rejected; the run is discarded so the next one starts clean."""


class EnqueueError(ReconcileError):
    """SQS kept refusing some messages; the snapshot is not committed, so the next run sends them again."""


class CheckpointUnreadable(ReconcileError):
    """An object the run record points at is damaged or gone; the run is discarded and the next one starts afresh."""


# --------------------------------------------------------------------------------------------------- models


class Counters(BaseModel):
    """What a run did, summed over its invocations (persisted in the checkpoint)."""

    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    duplicates: int = 0
    enqueued: int = 0
    pages: int = 0
    requests: int = 0  # ListUsers HTTP attempts, retries included
    throttles: int = 0
    restarts: int = 0
    invocations: int = 0
    seconds: float = 0.0


class RunRecord(BaseModel):
    """The run's lease and checkpoint: enough for any invocation to carry on where the last one stopped."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    run_id: str
    pool_id: str
    full: bool = False
    started_at: float
    baseline_etag: str | None = None  # the committed snapshot this run compares with (None: first run)
    baseline_damaged: str | None = None  # why that snapshot is not used (the run treats it as missing)
    invocation: int = 1  # the invocation that wrote this record
    chain: int = 1  # invocations since the run was started or adopted; capped by reconcile_max_invocations
    lease_until: float = 0.0
    holder: str = ""
    phase: Literal["scan", "deletions"] = "scan"
    token: str | None = None
    partial_key: str | None = None  # entries of the current pass, all already enqueued where needed
    extra_key: str | None = None  # entries folded into the baseline when a rejected token restarted the scan
    deletions_done: int = 0
    counters: Counters = Field(default_factory=Counters)


class Continuation(BaseModel):
    run_id: str = Field(min_length=1, max_length=100)
    checkpoint: str = Field(pattern=rf"^{PREFIX}/")
    invocation: int = Field(ge=2)


class ReconcileRequest(BaseModel):
    """What an invocation was asked to do. A scheduled event carries none of these keys: a normal run."""

    model_config = ConfigDict(extra="ignore")

    continuation: Continuation | None = None
    full: bool = False
    dry_run: bool = False


EVENTBRIDGE_SOURCE = "aws.events"  # `source` of every EventBridge scheduled event (also SAM's generated one)


def parse_request(event: Any) -> ReconcileRequest:
    """The request in a scheduled event, a hand-made payload (`{}`, `{"dry_run": true}`...) or a continuation.

    EventBridge's envelope keys are ignored. A hand-made payload (no `source: aws.events`) may hold only the
    request's keys: a typo such as `dry-run` must not silently become a real run.
    """
    if event is None:
        return ReconcileRequest()
    if not isinstance(event, dict):
        raise ReconcileError(f"malformed reconcile event: expected a JSON object, got {type(event).__name__}")
    if event.get("source") != EVENTBRIDGE_SOURCE:
        unknown = sorted(str(key) for key in event if key not in ReconcileRequest.model_fields)
        if unknown:
            raise ReconcileError(
                f"malformed reconcile event: unknown key(s) {', '.join(unknown)}; a payload takes "
                "dry_run and full (booleans), or is an EventBridge scheduled event"
            )
    try:
        return ReconcileRequest.model_validate(event)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ReconcileError(f"malformed reconcile event: {where}: {first['msg']}") from None


# --------------------------------------------------------------------------------------------------- rate


class TokenBucket:
    """At most `rate` acquisitions a second, bursts of at most `burst`: in any window of t seconds, ≤ burst + rate·t."""

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst ≥ 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return waited
                delay = (1 - self._tokens) / self.rate
                self._sleep(delay)
                waited += delay


class UserPager:
    """ListUsers pages under a token bucket, counting attempts and throttles.

    The bucket sits in botocore's `before-send` hook, so botocore's own retries are paced too: Cognito's quota
    counts every request, throttled ones included. One pager per client (hooks are registered once).
    """

    def __init__(self, client: Any, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.bucket = TokenBucket(rate, sleep=sleep)
        self.requests = 0
        self.throttles = 0
        events = getattr(getattr(client, "meta", None), "events", None)
        self._hooked = events is not None
        if events is not None:
            events.register(f"before-send.{COGNITO_EVENTS}.ListUsers", self._before_send)
            events.register(f"needs-retry.{COGNITO_EVENTS}.ListUsers", self._needs_retry)

    @classmethod
    def for_client(cls, client: Any, rate: float, sleep: Callable[[float], None] = time.sleep) -> UserPager:
        pager = getattr(client, "_userhub_sync_pager", None)
        if pager is None:
            pager = cls(client, rate, sleep)
            client._userhub_sync_pager = pager
        pager.bucket.rate = rate
        return pager

    def _before_send(self, **_: Any) -> None:
        self.bucket.acquire()
        self.requests += 1

    def _needs_retry(self, response: Any = None, **_: Any) -> None:
        if response is not None and response[1].get("Error", {}).get("Code") in THROTTLE_CODES:
            self.throttles += 1

    def page(self, pool_id: str, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        if not self._hooked:
            self.bucket.acquire()
            self.requests += 1
        params: dict[str, Any] = {"UserPoolId": pool_id, "Limit": PAGE_SIZE}
        if token:
            params["PaginationToken"] = token
        response = self.client.list_users(**params)
        return response.get("Users") or [], response.get("PaginationToken") or None


def _is_bad_token(error: ClientError) -> bool:
    details = error.response.get("Error", {})
    code, message = details.get("Code", ""), str(details.get("Message", "")).lower()
    return code in BAD_TOKEN_CODES or (code == "InvalidParameterException" and "token" in message)


def make_cognito_client() -> Any:
    """The Cognito client reconcile uses: adaptive retries (client-side rate adapts to throttling), bounded waits."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "cognito-idp",
        config=Config(
            retries={"mode": "adaptive", "max_attempts": LIST_USERS_MAX_ATTEMPTS}, connect_timeout=5, read_timeout=30
        ),
    )


# --------------------------------------------------------------------------------------------------- SQS


class Enqueuer:
    """CHANGED messages to the events queue, ten per SendMessageBatch, failed entries retried with backoff."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        body: Callable[[str], str],
        *,
        attempts: int = 6,
        base_delay: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.body = body
        self.attempts = attempts
        self.base_delay = base_delay
        self.sleep = sleep
        self.sent = 0
        self.retried = 0
        self._buffer: list[str] = []

    def add(self, username: str) -> None:
        self._buffer.append(username)
        if len(self._buffer) >= SQS_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            names, self._buffer = self._buffer[:SQS_BATCH], self._buffer[SQS_BATCH:]
            self._send(names)

    def _send(self, names: list[str]) -> None:
        pending = {str(i): self.body(name) for i, name in enumerate(names)}
        failures: list[dict[str, Any]] = []
        for attempt in range(self.attempts):
            if attempt:
                self.retried += len(pending)
                self.sleep(min(self.base_delay * 2 ** (attempt - 1), 5.0) * random.uniform(1, 1.25))
            response = self.sqs.send_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": i, "MessageBody": b} for i, b in pending.items()]
            )
            for ok in response.get("Successful") or []:
                if pending.pop(ok["Id"], None) is not None:
                    self.sent += 1
            if not pending:
                return
            failures = response.get("Failed") or []
            permanent = [f for f in failures if f.get("SenderFault")]
            if permanent:
                raise EnqueueError(f"SQS rejected {len(permanent)} message(s): {permanent[0].get('Code')}")
        codes = sorted({str(f.get("Code")) for f in failures})
        raise EnqueueError(f"{len(pending)} message(s) still failing after {self.attempts} attempts: {codes}")


# --------------------------------------------------------------------------------------------------- S3


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class SnapshotInfo:
    etag: str
    users: int | None  # None: the metadata is missing or not a number
    format: str | None

    def problem(self) -> str | None:
        """What makes the object unusable as a baseline before a byte of it is read, if anything."""
        if self.format != SNAPSHOT_FORMAT:
            return f"format marker is {self.format!r}, expected {SNAPSHOT_FORMAT!r}"
        if self.users is None:
            return "its users metadata is missing or not a number"
        return None


class StateStore:
    """The run record, snapshots and last summary in SNAPSHOT_BUCKET, under `reconcile/<pool>/`."""

    def __init__(self, s3: Any, bucket: str, pool_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = f"{PREFIX}/{pool_id}"
        self.snapshot_key = f"{self.prefix}/snapshot.gz"
        self.record_key = f"{self.prefix}/run.json"

    def run_key(self, run_id: str, name: str) -> str:
        return f"{self.prefix}/runs/{run_id}/{name}"

    def read_record(self) -> tuple[RunRecord | None, str | None]:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.record_key)
        except ClientError as error:
            if _code(error) in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            return RunRecord.model_validate_json(obj["Body"].read()), obj["ETag"]
        except ValidationError:
            log.warning("run record unreadable: starting a new run over it", extra={"key": self.record_key})
            return None, obj["ETag"]

    def write_record(self, record: RunRecord, etag: str | None) -> str:
        """Conditional on `etag` (or on absence): losing the race raises LeaseConflict."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.record_key,
                ContentType="application/json",
                Body=record.model_dump_json().encode(),
                **condition,
            )
        except ClientError as error:
            if _code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise LeaseConflict(f"run record changed under run {record.run_id}") from None
            raise
        return response["ETag"]

    def delete_record(self) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.record_key)

    def head_snapshot(self) -> SnapshotInfo | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.snapshot_key)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = head.get("Metadata") or {}
        try:
            users: int | None = int(metadata["users"])
        except (KeyError, ValueError):
            users = None
        return SnapshotInfo(head["ETag"], users, metadata.get("format"))

    def stream_snapshot(self, etag: str) -> Iterator[tuple[str, int]]:
        """The committed snapshot, streamed (never held whole); fails if it is no longer the one the run began with."""
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.snapshot_key, IfMatch=etag)
        except ClientError as error:
            if _code(error) in ("PreconditionFailed", "412", "NoSuchKey"):
                raise ReconcileError("the committed snapshot changed during this run") from None
            raise
        yield from read_entries(obj["Body"])

    def put_snapshot(self, data: bytes, users: int, expected_etag: str | None) -> str:
        condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.snapshot_key,
                Body=data,
                ContentType="application/gzip",
                Metadata={"format": SNAPSHOT_FORMAT, "users": str(users)},
                **condition,
            )
        except ClientError as error:
            if _code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise LeaseConflict("the committed snapshot changed during this run") from None
            raise
        return response["ETag"]

    def put_blob(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/gzip")

    def get_blob(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete_run_objects(self, run_id: str) -> None:
        prefix = self.run_key(run_id, "")
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        keys = [{"Key": o["Key"]} for o in listing.get("Contents") or []]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary as the last run, and also as the last complete run if it is one."""
        body = json.dumps(summary).encode()
        if summary.get("status") == "complete":
            self.s3.put_object(Bucket=self.bucket, Key=LAST_COMPLETE_KEY, Body=body, ContentType="application/json")
        self.s3.put_object(Bucket=self.bucket, Key=LAST_RUN_KEY, Body=body, ContentType="application/json")


def _read_summary(s3_client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        obj = s3_client.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _code(error) in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(obj["Body"].read())


def read_last_summary(s3_client: Any, bucket: str) -> dict[str, Any] | None:
    """The summary of the last run that finished (complete, stopped or failed), or None if there was none."""
    return _read_summary(s3_client, bucket, LAST_RUN_KEY)


def read_last_complete(s3_client: Any, bucket: str) -> dict[str, Any] | None:
    """The summary of the last complete run, or None if none completed since this key was introduced."""
    return _read_summary(s3_client, bucket, LAST_COMPLETE_KEY)


# --------------------------------------------------------------------------------------------------- the run


class Deadline:
    """Seconds this invocation has left (Lambda's remaining time, or unlimited), and when to stop for a hand-off.

    The margin is capped at a quarter of the time the invocation started with, so a function whose timeout is not
    well above RECONCILE_TIME_MARGIN_SECONDS still makes progress instead of handing off empty-handed forever.
    """

    def __init__(self, context: Any = None, margin: float = 60.0) -> None:
        getter = getattr(context, "get_remaining_time_in_millis", None)
        self._getter = getter if callable(getter) else None
        self.margin = min(margin, self.remaining() / 4)

    @property
    def finite(self) -> bool:
        return self._getter is not None

    def remaining(self) -> float:
        return self._getter() / 1000 if self._getter else math.inf

    def low(self) -> bool:
        return self.remaining() < self.margin


def continue_function_name(context: Any, settings: Settings) -> str:
    """The function that continues a run: RECONCILE_CONTINUE_FUNCTION, else derived from the running function."""
    if settings.reconcile_continue_function:
        return settings.reconcile_continue_function
    name = str(getattr(context, "function_name", "") or "")
    for suffix in ("-reconcile_continue", "-reconcile"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "-reconcile_continue"
    raise ReconcileError(f"cannot derive the continuation function from {name!r}: set RECONCILE_CONTINUE_FUNCTION")


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client(service: str) -> Any:
    """boto3 clients built once per container (warm invocations reuse them and their connection pools)."""
    with _clients_lock:
        if _clients.get("_environment") != environment_key():  # never in Lambda; see settings.environment_key
            _clients.clear()
            _clients["_environment"] = environment_key()
        if service not in _clients:
            if service == "cognito-idp":
                _clients[service] = make_cognito_client()
            else:
                import boto3

                _clients[service] = boto3.client(service)
        return _clients[service]


def reset_clients() -> None:
    with _clients_lock:
        _clients.clear()


@dataclass
class Deps:
    """Everything reconcile talks to; None means the real (cached) boto3 client. Tests inject fakes here."""

    cognito: Any = None
    sqs: Any = None
    s3: Any = None
    lambda_client: Any = None
    continuer: Callable[[dict[str, Any]], None] | None = None  # starts the next invocation with this payload
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


Progress = Callable[[Counters, str], None]


@dataclass
class RunResult:
    status: str  # complete, continued, stopped, skipped, dry_run, dry_run_incomplete
    summary: dict[str, Any]
    planned: dict[str, list[str]] = field(default_factory=dict)  # dry runs: usernames by category


@dataclass
class _Run:
    """One invocation's working state for a run."""

    record: RunRecord  # live state; persisted only by `_checkpoint`, after a flush
    saved: RunRecord  # as last written to S3
    etag: str | None
    dry_run: bool
    table: FingerprintTable
    writer: SnapshotWriter
    extra: bytearray
    extra_dirty: bool = False
    enqueuer: Enqueuer | None = None
    planned: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    started: float = field(default_factory=time.monotonic)
    at_start: Counters = field(default_factory=Counters)
    requests0: int = 0
    throttles0: int = 0
    checkpoints: int = 0

    @property
    def counters(self) -> Counters:
        return self.record.counters


class Reconciler:
    """One invocation of a run: claim the run, scan, enqueue, then commit, hand off or stop."""

    def __init__(self, settings: Settings, deps: Deps | None = None, progress: Progress | None = None) -> None:
        self.settings = settings
        self.deps = deps or Deps()
        self.progress = progress
        self.pool_id = settings.require("USER_POOL_ID")
        self.store = StateStore(self.deps.s3 or _client("s3"), settings.require("SNAPSHOT_BUCKET"), self.pool_id)
        self.pager = UserPager.for_client(
            self.deps.cognito or _client("cognito-idp"), settings.reconcile_rate_limit, sleep=self.deps.sleep
        )
        self.metrics = Metrics("reconcile")
        self._queue_url: str | None = None
        self._claiming: RunRecord | None = None  # the run `_claim` picked, for the failure summary
        self.extra_summary: dict[str, Any] = {}  # e.g. signins_recovered, from the hook in run_reconcile

    # ------------------------------------------------------------------ entry point
    def invoke(self, request: ReconcileRequest, deadline: Deadline, context: Any = None) -> RunResult:
        try:
            continuer = None
            if deadline.finite and not request.dry_run:
                continuer = self.deps.continuer or self._lambda_continuer(
                    continue_function_name(context, self.settings)
                )
            if request.dry_run:
                run = self._dry_run_state(request)
            else:
                claimed = self._claim(request, deadline, context)
                if isinstance(claimed, RunResult):
                    return claimed
                run = claimed
        except (Exception, KeyboardInterrupt) as error:
            self._failed_before_work(request, error)
            raise
        try:
            return self._work(run, deadline, continuer)
        except LeaseConflict as error:
            log.warning(
                "reconcile run taken over by another invocation",
                extra={"run_id": run.record.run_id, "error": str(error)},
            )
            return self._finish(run, "skipped")
        except (Exception, KeyboardInterrupt) as error:
            self._abandon(run, error)
            raise
        finally:
            self.metrics.flush()

    # ------------------------------------------------------------------ claiming the lease
    def _claim(self, request: ReconcileRequest, deadline: Deadline, context: Any) -> _Run | RunResult:
        now = self.deps.clock()
        record, etag = self.store.read_record()
        baseline = self.store.head_snapshot()
        baseline_etag = baseline.etag if baseline else None
        if record is not None and record.baseline_etag != baseline_etag:
            # a snapshot was committed after this record was written (e.g. a crash between commit and cleanup)
            log.warning("discarding a stale run record", extra={"run_id": record.run_id})
            self._discard_objects(record.run_id)
            record = None
        continuation = request.continuation
        if continuation is not None:
            if continuation.checkpoint != self.store.record_key:
                raise ReconcileError(f"continuation names {continuation.checkpoint}, expected {self.store.record_key}")
            if record is None or record.run_id != continuation.run_id:
                return self._skipped(f"run {continuation.run_id} is finished or was superseded")
            running = record.lease_until > now
            if record.invocation > continuation.invocation or (
                record.invocation == continuation.invocation and running
            ):
                return self._skipped(f"invocation {continuation.invocation} of run {record.run_id} already ran")
            record.invocation = continuation.invocation
            record.chain += 1
            how = "continuing"
        elif record is not None and record.lease_until > now:
            return self._skipped(f"run {record.run_id} is in progress (lease until {_iso(record.lease_until)})")
        elif record is not None and (record.full or not request.full):
            record.invocation += 1
            record.chain = 1
            how = "adopting"  # a run whose chain stopped or crashed: carry on from its last checkpoint
        else:
            if record is not None:
                self._discard_objects(record.run_id)
            record = RunRecord(
                run_id=_new_run_id(now),
                pool_id=self.pool_id,
                full=request.full,
                started_at=now,
                baseline_etag=baseline_etag,
            )
            how = "starting"
        self._claiming = record
        record.counters.invocations += 1
        record.lease_until = self._lease_until(deadline, now)
        record.holder = str(getattr(context, "aws_request_id", "") or f"local:{socket.gethostname()}:{os.getpid()}")
        try:
            etag = self.store.write_record(record, etag)
        except LeaseConflict:
            return self._skipped("another invocation claimed the run first")
        log.info(
            f"reconcile {how}",
            extra={
                "run_id": record.run_id,
                "invocation": record.invocation,
                "phase": record.phase,
                "full": record.full,
            },
        )
        try:
            run = self._load(record, etag, baseline, dry_run=False)
            run.enqueuer = Enqueuer(self._sqs(), self._events_queue_url(), self._message_body, sleep=self.deps.sleep)
        except CheckpointUnreadable:
            # resuming would fail the same way every time: drop the run so the next one starts clean
            try:
                self.store.delete_record()
            except ClientError as error:
                log.warning("could not delete the unusable run record", extra={"error": str(error)})
            self._discard_objects(record.run_id)
            raise
        except BaseException:
            self._release(record, etag)
            raise
        return run

    def _lease_until(self, deadline: Deadline, now: float) -> float:
        if deadline.finite:
            return now + deadline.remaining() + LAMBDA_LEASE_SLACK_SECONDS
        return now + LOCAL_LEASE_SECONDS

    def _dry_run_state(self, request: ReconcileRequest) -> _Run:
        baseline = self.store.head_snapshot()
        now = self.deps.clock()
        record = RunRecord(
            run_id="dry-run-" + _new_run_id(now),
            pool_id=self.pool_id,
            full=request.full,
            started_at=now,
            baseline_etag=baseline.etag if baseline else None,
        )
        record.counters.invocations = 1
        self._claiming = record
        return self._load(record, None, baseline, dry_run=True)

    def _load(self, record: RunRecord, etag: str | None, baseline: SnapshotInfo | None, *, dry_run: bool) -> _Run:
        """Rebuild the in-memory state from the committed snapshot and the run's checkpoint."""
        expected = (baseline.users or 0) if baseline else 0
        table = FingerprintTable(expected + expected // 8 + 64)
        if record.baseline_etag and record.baseline_damaged is None:
            try:
                self._load_baseline(table, record.baseline_etag, baseline)
            except SnapshotDamaged as damage:
                table = FingerprintTable()  # never compare with a half-read baseline
                self._drop_baseline(record, str(damage))
        extra = bytearray()
        writer = SnapshotWriter()
        key = record.extra_key
        try:
            if record.extra_key:
                extra += self.store.get_blob(record.extra_key)
                for name, fp in read_entries(extra):
                    table.load(user_key(name), fp)
            key = record.partial_key
            if record.partial_key:
                partial = self.store.get_blob(record.partial_key)
                seen = 0
                for name, fp in read_entries(partial):
                    table.observe(user_key(name), fp)
                    seen += 1
                writer = SnapshotWriter(partial, seen)
        except (SnapshotDamaged, ClientError) as error:
            if isinstance(error, ClientError) and _code(error) not in ("NoSuchKey", "404"):
                raise
            problem = str(error) if isinstance(error, SnapshotDamaged) else "missing"
            raise CheckpointUnreadable(
                f"checkpoint {key} of run {record.run_id} is unreadable ({problem}): the run is discarded and "
                "the next one starts afresh"
            ) from None
        return _Run(
            record=record,
            saved=record.model_copy(deep=True),
            etag=etag,
            dry_run=dry_run,
            table=table,
            writer=writer,
            extra=extra,
            at_start=record.counters.model_copy(),
            requests0=self.pager.requests,
            throttles0=self.pager.throttles,
        )

    def _load_baseline(self, table: FingerprintTable, etag: str, baseline: SnapshotInfo | None) -> None:
        """The whole committed snapshot into `table`, checked to the last byte: SnapshotDamaged if it is damaged."""
        problem = baseline.problem() if baseline is not None else "it disappeared"
        if problem:
            raise SnapshotDamaged(problem)
        assert baseline is not None
        count = 0
        for name, fp in self.store.stream_snapshot(etag):
            table.load(user_key(name), fp)
            count += 1
        if count != baseline.users:
            raise SnapshotDamaged(f"holds {count} entries, its users metadata says {baseline.users}")

    def _drop_baseline(self, record: RunRecord, problem: str) -> None:
        """Treat the committed snapshot as missing from now on; it is replaced (conditionally on its ETag) at commit.

        Without a baseline every listed user is new, so everyone is sent: safe, and the next run is incremental
        again. No deletion can be inferred from a damaged baseline; if this run had already compared users against
        it (possible only if damage shows after loading), it scans again from page one sending everyone.
        """
        record.baseline_damaged = problem[:300]
        progressed = record.token is not None or record.phase != "scan" or record.partial_key or record.counters.scanned
        log.warning(
            "reconcile snapshot is damaged: treating it as missing (every user is sent) and replacing it at commit",
            extra={
                "key": self.store.snapshot_key,
                "etag": record.baseline_etag,
                "problem": record.baseline_damaged,
                "run_id": record.run_id,
                "rescan": bool(progressed),
            },
        )
        if progressed:
            record.full = True
            record.token = None
            record.phase = "scan"
            record.deletions_done = 0
            record.partial_key = None

    # ------------------------------------------------------------------ scanning
    def _work(self, run: _Run, deadline: Deadline, continuer: Callable[[dict[str, Any]], None] | None) -> RunResult:
        record = run.record
        while record.phase == "scan":
            if deadline.low():
                return self._out_of_time(run, continuer)
            if not run.dry_run and not deadline.finite and record.lease_until - self.deps.clock() < LOCAL_RENEW_SECONDS:
                self._checkpoint(run, lease_until=self.deps.clock() + LOCAL_LEASE_SECONDS)
            try:
                users, token = self.pager.page(self.pool_id, record.token)
            except ClientError as error:
                if record.token is None or not _is_bad_token(error):
                    raise
                self._restart_scan(run, error)
                continue
            record.counters.pages += 1
            self._compare(run, users)
            record.token = token
            if token is None:
                record.phase = "deletions"
            self._report(run, "scan")
        try:
            stopped = self._sweep(run, deadline, continuer)
        except SnapshotDamaged as damage:  # the baseline turned out damaged only now: never trust it
            self._rescan_without_baseline(run, str(damage))
            return self._work(run, deadline, continuer)  # recurses once at most: the baseline is not read again
        if stopped is not None:
            return stopped
        return self._commit(run)

    def _sweep(
        self, run: _Run, deadline: Deadline, continuer: Callable[[dict[str, Any]], None] | None
    ) -> RunResult | None:
        """Mark and sweep: what the baseline knows and this complete scan never listed is gone. None when done."""
        record = run.record
        position = 0
        for name in self._unseen(run):
            if position >= record.deletions_done:
                if position % SQS_BATCH == 0 and deadline.low():
                    record.deletions_done = position
                    return self._out_of_time(run, continuer)
                record.counters.deleted += 1
                self._emit(run, "deleted", name)
            position += 1
        record.deletions_done = position
        self._report(run, "deletions")
        return None

    def _rescan_without_baseline(self, run: _Run, problem: str) -> None:
        """Damage found while sweeping: drop the baseline and scan again from page one, sending everyone.

        Only the entries this run listed itself before a rejected-token restart (`extra`) stay as a baseline,
        so users listed then and gone now are still swept. Deletions already sent were read from the snapshot
        before the damage; each is a CHANGED message, which makes UserHub look the user up again, nothing more.
        """
        self._drop_baseline(run.record, problem)
        run.table = FingerprintTable(len(run.table))
        for name, fp in read_entries(run.extra):
            run.table.load(user_key(name), fp)
        run.writer = SnapshotWriter()

    def _compare(self, run: _Run, users: list[dict[str, Any]]) -> None:
        counters, full = run.counters, run.record.full
        for user in users:
            name = user["Username"]
            fp = fingerprint(user)
            verdict = run.table.observe(user_key(name), fp)
            counters.scanned += 1
            if verdict is Verdict.DUPLICATE:
                counters.duplicates += 1
                continue
            run.writer.add(name, fp)
            setattr(counters, verdict.value, getattr(counters, verdict.value) + 1)
            if verdict is not Verdict.UNCHANGED or full:
                self._emit(run, verdict.value, name)

    def _emit(self, run: _Run, category: str, username: str) -> None:
        if run.dry_run:
            run.planned[category].append(username)
        else:
            assert run.enqueuer is not None
            run.enqueuer.add(username)

    def _restart_scan(self, run: _Run, error: ClientError) -> None:
        """A rejected page token: scan again from the first page, treating what this run saw as the baseline.

        Users already compared (and enqueued if they differed) are folded into the baseline, so the new pass
        enqueues them again only if they changed again. Deletions are still decided only after a complete pass.
        """
        counters = run.counters
        counters.restarts += 1
        log.warning(
            "page token rejected: restarting the scan from the first page",
            extra={
                "run_id": run.record.run_id,
                "restarts": counters.restarts,
                "error": _code(error),
                "scanned": counters.scanned,
            },
        )
        if counters.restarts > self.settings.reconcile_max_restarts:
            raise TooManyRestarts(
                f"page token rejected {counters.restarts} times (RECONCILE_MAX_RESTARTS="
                f"{self.settings.reconcile_max_restarts}); the next run starts afresh"
            )
        run.extra += run.writer.finish()
        run.extra_dirty = True
        run.writer = SnapshotWriter()
        run.table.forget_marks()
        run.record.token = None

    def _unseen(self, run: _Run) -> Iterator[str]:
        """Usernames the baseline holds and the scan did not list, in a fixed order (resumable by position)."""
        sources: list[Iterator[tuple[str, int]]] = []
        if run.record.baseline_etag and run.record.baseline_damaged is None:
            sources.append(self.store.stream_snapshot(run.record.baseline_etag))
        if run.extra:
            sources.append(read_entries(run.extra))
        for entries in sources:
            for name, _fp in entries:
                if run.table.take_unseen(user_key(name)):
                    yield name

    # ------------------------------------------------------------------ persisting
    def _sync_counters(self, run: _Run) -> None:
        counters, start = run.counters, run.at_start
        counters.requests = start.requests + self.pager.requests - run.requests0
        counters.throttles = start.throttles + self.pager.throttles - run.throttles0
        counters.enqueued = start.enqueued + (run.enqueuer.sent if run.enqueuer else 0)
        counters.seconds = round(start.seconds + time.monotonic() - run.started, 3)

    def _checkpoint(self, run: _Run, lease_until: float) -> None:
        """Persist progress: enqueue first, then the partial snapshot, then the record that points at it."""
        assert run.enqueuer is not None
        run.enqueuer.flush()
        record = run.record
        run.checkpoints += 1
        if run.writer.count:
            record.partial_key = self.store.run_key(
                record.run_id, f"partial-{record.invocation:05d}-{run.checkpoints}.gz"
            )
            self.store.put_blob(record.partial_key, run.writer.finish())
        else:
            record.partial_key = None
        if run.extra_dirty:
            record.extra_key = self.store.run_key(record.run_id, f"extra-{record.invocation:05d}-{run.checkpoints}.gz")
            self.store.put_blob(record.extra_key, bytes(run.extra))
            run.extra_dirty = False
        self._sync_counters(run)
        record.lease_until = lease_until
        run.etag = self.store.write_record(record, run.etag)
        run.saved = record.model_copy(deep=True)

    def _out_of_time(self, run: _Run, continuer: Callable[[dict[str, Any]], None] | None) -> RunResult:
        if run.dry_run:
            return self._finish(run, "dry_run_incomplete")
        record, now = run.record, self.deps.clock()
        if record.chain >= self.settings.reconcile_max_invocations or continuer is None:
            self._checkpoint(run, lease_until=now)  # released: the next scheduled run adopts it
            log.error(
                "reconcile stopped at RECONCILE_MAX_INVOCATIONS; the next run carries on from the checkpoint",
                extra={"run_id": record.run_id, "chain": record.chain},
            )
            return self._finish(run, "stopped", store=True)
        self._checkpoint(run, lease_until=now + HANDOFF_GRACE_SECONDS)
        payload = {
            "continuation": Continuation(
                run_id=record.run_id, checkpoint=self.store.record_key, invocation=record.invocation + 1
            ).model_dump()
        }
        continuer(payload)
        return self._finish(run, "continued")

    def _commit(self, run: _Run) -> RunResult:
        if run.dry_run:
            return self._finish(run, "dry_run")
        assert run.enqueuer is not None
        run.enqueuer.flush()
        # Prove we still hold the lease just before replacing the snapshot (itself a conditional write). The record
        # written is the last checkpoint, unchanged: a crash right here must resume from a consistent state.
        run.saved.lease_until = self.deps.clock() + HANDOFF_GRACE_SECONDS
        run.etag = self.store.write_record(run.saved, run.etag)
        self.store.put_snapshot(run.writer.finish(), run.writer.count, run.record.baseline_etag)
        result = self._finish(run, "complete", store=True)
        try:
            self.store.delete_record()
            self._discard_objects(run.record.run_id)
        except ClientError as error:  # harmless: the next run sees a stale record and discards it
            log.warning("could not clean up the run record", extra={"error": str(error)})
        return result

    def _abandon(self, run: _Run, error: BaseException) -> None:
        """After a failure: release the lease but keep the last checkpoint, so a retry or the next run resumes."""
        self._sync_counters(run)
        if not run.dry_run:
            try:
                if isinstance(error, TooManyRestarts):
                    self.store.delete_record()
                    self._discard_objects(run.record.run_id)
                else:
                    self._release(run.saved, run.etag)
            except Exception as cleanup_error:  # the original error matters more
                log.warning("could not clean up after the failed reconcile run", extra={"error": str(cleanup_error)})
        self._record_failure(self._summary(run, "failed"), error, dry_run=run.dry_run)

    def _failed_before_work(self, request: ReconcileRequest, error: BaseException) -> None:
        """A failure while claiming or loading: there is no run state yet, only the record `_claim` picked."""
        record, now = self._claiming, self.deps.clock()
        summary: dict[str, Any] = {
            "run_id": record.run_id if record else None,
            "pool_id": self.pool_id,
            "status": "failed",
            "full": record.full if record else request.full,
            "dry_run": request.dry_run,
            **(record.counters.model_dump() if record else {}),
            "baseline_damaged": record.baseline_damaged if record else None,
            "rate_limit": self.settings.reconcile_rate_limit,
            "started_at": _iso(record.started_at if record else now),
            "finished_at": _iso(now),
        }
        self._record_failure(summary, error, dry_run=request.dry_run)

    def _record_failure(self, summary: dict[str, Any], error: BaseException, *, dry_run: bool) -> None:
        """Log the failure and store it as the last run (`status` shows it); a dry run writes nothing, even now."""
        summary["error"] = redact(f"{type(error).__name__}: {error}")[:500]
        log.error("reconcile run failed", extra=summary)
        if dry_run:
            return
        try:
            self.store.write_summary(summary)
        except Exception as store_error:  # the original error matters more
            log.warning("could not record the failed reconcile run", extra={"error": str(store_error)})

    def _release(self, saved: RunRecord, etag: str | None) -> None:
        """Give the lease up, keeping the checkpoint as it was persisted (best effort: it also expires by itself)."""
        saved.lease_until = self.deps.clock()
        try:
            self.store.write_record(saved, etag)
        except Exception as error:
            log.warning("could not release the reconcile lease", extra={"error": str(error)})

    def _discard_objects(self, run_id: str) -> None:
        try:
            self.store.delete_run_objects(run_id)
        except ClientError as error:
            log.warning("could not delete old checkpoint objects", extra={"run_id": run_id, "error": str(error)})

    # ------------------------------------------------------------------ reporting
    def _summary(self, run: _Run, status: str) -> dict[str, Any]:
        c = run.counters
        return {
            "run_id": run.record.run_id,
            "pool_id": self.pool_id,
            "status": status,
            "full": run.record.full,
            "dry_run": run.dry_run,
            **c.model_dump(),
            "users_per_second": round(c.scanned / c.seconds, 1) if c.seconds else None,
            "requests_per_second": round(c.requests / c.seconds, 2) if c.seconds else None,
            "baseline_damaged": run.record.baseline_damaged,
            "rate_limit": self.settings.reconcile_rate_limit,
            "started_at": _iso(run.record.started_at),
            "finished_at": _iso(self.deps.clock()),
            **self.extra_summary,
        }

    def _finish(self, run: _Run, status: str, *, store: bool = False) -> RunResult:
        self._sync_counters(run)
        summary = self._summary(run, status)
        for name in (
            "scanned",
            "new",
            "changed",
            "unchanged",
            "deleted",
            "enqueued",
            "pages",
            "requests",
            "throttles",
            "restarts",
        ):
            delta = getattr(run.counters, name) - getattr(run.at_start, name)
            if delta:
                self.metrics.count(f"reconcile_{name}", delta)
        final = status in ("complete", "stopped", "dry_run")
        log.info("reconcile run summary" if final else "reconcile invocation done", extra=summary)
        if store:
            self.store.write_summary(summary)
        planned = {k: list(v) for k, v in run.planned.items()}
        if run.dry_run:
            summary["would_enqueue"] = {k: v[:20] for k, v in planned.items()}
        return RunResult(status, summary, planned)

    def _skipped(self, reason: str) -> RunResult:
        log.info("reconcile skipped", extra={"reason": reason, "pool_id": self.pool_id})
        return RunResult("skipped", {"status": "skipped", "reason": reason, "pool_id": self.pool_id})

    def _report(self, run: _Run, phase: str) -> None:
        if self.progress is not None:
            self._sync_counters(run)
            self.progress(run.counters, phase)

    # ------------------------------------------------------------------ collaborators
    def _sqs(self) -> Any:
        return self.deps.sqs or _client("sqs")

    def _events_queue_url(self) -> str:
        if self._queue_url is None:
            self._queue_url = self._sqs().get_queue_url(QueueName=self.settings.events_queue_name)["QueueUrl"]
        return self._queue_url

    def _message_body(self, username: str) -> str:
        return SyncMessage(
            type=EventType.CHANGED,
            user_pool_id=self.pool_id,
            username=username,
            connection_id=self.settings.userhub_connection_id,
            source=Source.RECONCILE,
        ).to_body()

    def _lambda_continuer(self, function_name: str) -> Callable[[dict[str, Any]], None]:
        client = self.deps.lambda_client or _client("lambda")

        def invoke(payload: dict[str, Any]) -> None:
            response = client.invoke(
                FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
            )
            if response.get("StatusCode") != 202:
                raise ReconcileError(f"starting {function_name} returned {response.get('StatusCode')}")
            log.info("reconcile continues in a new invocation", extra={"function": function_name, **payload})

        return invoke


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _new_run_id(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def run_reconcile(
    request: ReconcileRequest,
    *,
    context: Any = None,
    deps: Deps | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """One invocation in Lambda; one whole run anywhere else.

    The context's remaining time is honoured only where a continuation can start: inside Lambda
    (AWS_LAMBDA_FUNCTION_NAME is always set there) or when a test injects a continuer. Elsewhere (the CLI, chalice
    local, a script calling `app.reconcile` with a stand-in context) there is no 15-minute limit and no function to
    continue in, so the run keeps going to the end.
    """
    settings = settings or get_settings()
    deps = deps or Deps()
    reconciler = Reconciler(settings, deps, progress)
    if request.continuation is None and not request.dry_run:  # a new run first re-enqueues sign-ins post_auth lost
        from chalicelib.signin_recovery import recover_at_run_start

        injected = {"sqs": deps.sqs, "s3": deps.s3, "cognito-idp": deps.cognito}
        recovered = recover_at_run_start(settings, context, lambda service: injected.get(service) or _client(service))
        reconciler.extra_summary = {} if recovered is None else {"signins_recovered": recovered}
    in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    deadline = Deadline(context if in_lambda or deps.continuer else None, settings.reconcile_time_margin_seconds)
    return reconciler.invoke(request, deadline, context)


def handle_scheduled_event(event: dict[str, Any], context: Any, *, deps: Deps | None = None) -> dict[str, Any]:
    """The `reconcile` and `reconcile_continue` handlers: returns this invocation's summary of the run."""
    return run_reconcile(parse_request(event), context=context, deps=deps).summary
