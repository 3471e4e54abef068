"""Recover the sign-ins post_auth could not enqueue, from the recovery records it wrote to its own log.

When both of its SendMessage attempts fail, post_auth prints one JSON line marked `"recovery": "userhub-sync/v1"`
with the complete v1 message and the user's `sub`. Lambda ships that line to the function's log group
(`/aws/lambda/<app>-<stage>-post_auth`, and `-post_confirmation`) through the Lambda service, whatever happened to
post_auth's own connection to SQS. This module finds those lines with `logs:FilterLogEvents`, turns each back into a
message and enqueues it. The nightly reconcile runs it at the start of each new run; `userhub-sync recover-signins`
runs it on demand.

Invariants:

- The watermark (`reconcile/signin-recovery/watermark.json` in SNAPSHOT_BUCKET) moves only past a time slice whose
  records SQS has all accepted, or that were skipped with a log line (invalid, unknown `sub`, rejected by SQS). A
  crash re-reads a slice, never skips one. Re-reading sends duplicates, which are harmless: a SIGNIN only makes
  UserHub re-pull the user.
- It never moves past now − `INGESTION_LAG_MS`, so a record CloudWatch Logs ingests late is still found.
- A run given `since` later than the watermark recovers that window and leaves the watermark where it was.
- A bad record is counted and logged, never fatal. A record without a username (usernames hashed in logs) is
  resolved from its `sub` with Cognito `ListUsers(Filter='sub = "…"')`.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.messages import PoisonMessage, SyncMessage, parse_message
from chalicelib.observability import Metrics, get_logger, log_user, redact
from chalicelib.post_auth import RECOVERY_MARKER
from chalicelib.reconcile.store import LOST_RACE, error_code, get_if_present, write_condition
from chalicelib.sqs_limits import chunks

if TYPE_CHECKING:
    from types_boto3_cognito_idp import CognitoIdentityProviderClient
    from types_boto3_logs import CloudWatchLogsClient
    from types_boto3_logs.type_defs import FilteredLogEventTypeDef
    from types_boto3_s3 import S3Client
    from types_boto3_sqs import SQSClient

    from chalicelib.settings import Settings

log = get_logger("signin_recovery")

FILTER_PATTERN = f'"{RECOVERY_MARKER}"'  # a quoted term: CloudWatch Logs and moto both match it as a phrase
WATERMARK_KEY = "reconcile/signin-recovery/watermark.json"  # reconcile's prefix: its role may already write there
TRIGGER_FUNCTIONS = ("post_auth", "post_confirmation")
SLICE_MS = 6 * 3_600_000  # the watermark advances six hours at a time: 4 FilterLogEvents calls a group a night
INGESTION_LAG_MS = 600_000  # CloudWatch Logs may make an event searchable after its timestamp; 10 min of slack
FIRST_RUN_LOOKBACK_MS = 2 * 86_400_000  # no watermark yet: look back two days
SEND_ATTEMPTS = 5
_LOG_GROUP_RE = re.compile(r"^[.\-_/#A-Za-z0-9]{1,512}$")


class RecoveryError(Exception):
    """The run cannot go on (SQS kept failing, a setting is wrong); the watermark stays where the work stopped."""


class InvalidRecord(ValueError):
    """A recovery record that cannot become a message; the text says why."""


class RecoveryRecord(BaseModel):
    """One line post_auth wrote (see `post_auth.recovery_record`)."""

    model_config = ConfigDict(extra="ignore")

    recovery: Literal["userhub-sync/v1"]
    message: dict[str, Any]
    sub: str | None = Field(default=None, pattern=r"^[\w-]{1,128}$")
    reason: str | None = None


def parse_record(text: str) -> RecoveryRecord | None:
    """The recovery record in one log event, None if the event is not one (the filter is a phrase match).

    Accepts the line as post_auth wrote it, after a text prefix (timestamp, request id, level), or wrapped once by
    Lambda's JSON log format (`{"message": "<line>"}`). Raises InvalidRecord for a marked line that is broken.
    """
    data = _json_object(text)
    if data is None:
        if RECOVERY_MARKER in text and '"recovery"' in text:
            raise InvalidRecord("marked line is not a JSON object (cut off at the log event size limit?)")
        return None
    if "recovery" not in data:
        inner = data.get("message")
        if isinstance(inner, str) and inner is not text:
            return parse_record(inner)
        if isinstance(inner, dict) and "recovery" in inner:
            data = inner
        else:
            return None
    try:
        return RecoveryRecord.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(str(part) for part in item["loc"]) or "record"
        raise InvalidRecord(f"{where}: {item['msg']}") from None


def _json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        data = json.loads(text[start:])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class SubResolver:
    """Usernames for `sub`s, one ListUsers call per distinct (pool, sub); None if no such user (deleted since)."""

    def __init__(self, cognito: Callable[[], CognitoIdentityProviderClient]) -> None:
        self._cognito = cognito
        self._client: CognitoIdentityProviderClient | None = None
        self._cache: dict[tuple[str, str], str | None] = {}

    def username(self, pool_id: str, sub: str) -> str | None:
        key = (pool_id, sub)
        if key not in self._cache:
            self._client = self._client or self._cognito()
            try:
                users = self._client.list_users(UserPoolId=pool_id, Filter=f'sub = "{sub}"', Limit=1).get("Users")
            except ClientError as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise  # Cognito trouble: fail the run, the watermark stays, the next run tries again
                users = []
            self._cache[key] = users[0]["Username"] if users else None
        return self._cache[key]


def to_message(record: RecoveryRecord, resolver: SubResolver) -> SyncMessage | None:
    """The message to enqueue again; None if the record names a user by `sub` that Cognito no longer has."""
    data = dict(record.message)
    if not data.get("username"):
        pool = data.get("user_pool_id")
        if not record.sub or not isinstance(pool, str) or not pool:
            raise InvalidRecord("message has no username, and no sub and pool to find it by")
        name = resolver.username(pool, record.sub)
        if name is None:
            return None
        data["username"] = name
    try:
        message = parse_message(json.dumps(data))
        message.to_body().encode("utf-8")  # SQS takes UTF-8 only: a lone surrogate would fail the whole batch
    except PoisonMessage as error:
        raise InvalidRecord(error.reason) from None
    except (UnicodeError, ValueError) as error:
        raise InvalidRecord(f"cannot be sent: {type(error).__name__}") from None
    if not isinstance(message, SyncMessage):  # post_auth writes sign-ins only
        raise InvalidRecord("not a sign-in message")
    return message


class WatermarkStore:
    """The time (epoch ms) up to which every recovery record has been enqueued, in S3; writes are conditional."""

    def __init__(self, s3: S3Client, bucket: str, key: str = WATERMARK_KEY) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key

    def read(self) -> tuple[int | None, str | None]:
        obj = get_if_present(self.s3, self.bucket, self.key)
        if obj is None:
            return None, None
        try:
            value = json.loads(obj["Body"].read())["recovered_until_ms"]
            return (int(value) if isinstance(value, int) else None), obj["ETag"]
        except (ValueError, KeyError, TypeError):
            log.warning("sign-in recovery watermark unreadable: starting over it", extra={"key": self.key})
            return None, obj["ETag"]

    def advance(self, until_ms: int, etag: str | None) -> int:
        """Move the watermark to `until_ms` unless a concurrent run already moved it further; returns it."""
        for _ in range(3):
            body = json.dumps({"recovered_until_ms": until_ms, "updated_at_ms": int(time.time() * 1000)})
            try:
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=body.encode(),
                    ContentType="application/json",
                    **write_condition(etag),
                )
                return until_ms
            except ClientError as error:
                if error_code(error) not in LOST_RACE:
                    raise
            current, etag = self.read()
            if current is not None and current >= until_ms:
                return current
        raise RecoveryError("the sign-in recovery watermark kept changing under this run")


class BatchSender:
    """Messages to the events queue, ten per SendMessageBatch; failed entries retried, sender faults given up."""

    def __init__(
        self, sqs: SQSClient, queue_url: Callable[[], str], sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.sqs = sqs
        self._queue_url = queue_url
        self._url: str | None = None
        self.sleep = sleep
        self.sent = 0
        self.rejected: list[tuple[SyncMessage, str]] = []  # SQS said the message itself is wrong

    def send(self, messages: list[SyncMessage]) -> None:
        for batch in chunks(messages):
            self._batch(batch)

    def _batch(self, messages: list[SyncMessage]) -> None:
        self._url = self._url or self._queue_url()
        pending = {str(i): m for i, m in enumerate(messages)}
        for attempt in range(SEND_ATTEMPTS):
            if attempt:
                self.sleep(min(0.2 * 2 ** (attempt - 1), 5.0) * random.uniform(1, 1.25))
            response = self.sqs.send_message_batch(
                QueueUrl=self._url, Entries=[{"Id": i, "MessageBody": m.to_body()} for i, m in pending.items()]
            )
            for ok in response.get("Successful") or []:
                if pending.pop(ok["Id"], None) is not None:
                    self.sent += 1
            for failed in response.get("Failed") or []:
                if failed.get("SenderFault") and failed.get("Id") in pending:
                    self.rejected.append((pending.pop(failed["Id"]), str(failed.get("Code"))))
            if not pending:
                return
        raise RecoveryError(f"SQS kept failing {len(pending)} message(s) after {SEND_ATTEMPTS} attempts")


@dataclass
class RecoveryReport:
    """What one run found and did; `summary()` is what the logs, the CLI's --json and reconcile's summary show."""

    log_groups: list[str]
    start_ms: int
    end_ms: int
    dry_run: bool
    watermark_before_ms: int | None = None
    watermark_after_ms: int | None = None
    matched: int = 0  # log events the filter returned
    records: int = 0  # of which valid recovery records (broken ones count as invalid)
    enqueued: int = 0
    invalid: int = 0
    unresolved: int = 0  # named by a sub that Cognito no longer knows
    rejected: int = 0  # SQS refused the message itself (SenderFault)
    missing_groups: list[str] = field(default_factory=list)  # not created yet: the function never logged
    complete: bool = True  # False: stopped for time; the next run carries on from the watermark
    planned: list[SyncMessage] = field(default_factory=list)  # dry run: what would be enqueued

    @property
    def skipped(self) -> int:
        return self.invalid + self.unresolved + self.rejected

    def summary(self) -> dict[str, Any]:
        """Every field but the planned messages, which a dry run reports as their count (`would_enqueue`)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "planned"}
        return {**shown, "would_enqueue": len(self.planned) if self.dry_run else None}


@dataclass
class RecoveryClients:
    """What recovery talks to. `cognito` is a factory: most runs never need it."""

    logs: CloudWatchLogsClient
    sqs: SQSClient
    s3: S3Client
    cognito: Callable[[], CognitoIdentityProviderClient]
    queue_url: Callable[[], str]


def recover_signins(
    clients: RecoveryClients,
    *,
    bucket: str,
    log_groups: list[str],
    since_ms: int | None = None,
    dry_run: bool = False,
    now_ms: int | None = None,
    out_of_time: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> RecoveryReport:
    """Enqueue again every recovery record of `log_groups` since `since_ms` (default: the watermark)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    store = WatermarkStore(clients.s3, bucket)
    watermark, etag = store.read()
    start = since_ms if since_ms is not None else watermark if watermark is not None else now - FIRST_RUN_LOOKBACK_MS
    report = RecoveryReport(log_groups, start, now, dry_run, watermark_before_ms=watermark)
    advance = not dry_run and (watermark is None or start <= watermark)
    resolver = SubResolver(clients.cognito)
    sender = BatchSender(clients.sqs, clients.queue_url, sleep)
    metrics = Metrics("signin_recovery")
    covered: int | None = None  # every record before this time is enqueued (or skipped with a log line)
    try:
        for slice_start in range(start, now, SLICE_MS):
            if out_of_time():
                report.complete = False
                break
            slice_end = min(slice_start + SLICE_MS, now)
            found: list[SyncMessage] = []
            for group in log_groups:
                if group in report.missing_groups:
                    continue
                for event in _events(clients.logs, group, slice_start, slice_end, report):
                    message = _recover(event, group, resolver, report)
                    if message is not None:
                        found.append(message)
            if dry_run:
                report.planned += found
            else:
                sender.send(found)
                report.enqueued = sender.sent
                for message, code in sender.rejected[report.rejected :]:
                    log.error(
                        "SQS rejected a recovered sign-in: skipped",
                        extra={"user": log_user(message.username), "pool": message.user_pool_id, "code": code},
                    )
                report.rejected = len(sender.rejected)
            covered = slice_end
    finally:
        if advance and covered is not None and len(report.missing_groups) < len(log_groups):
            target = min(covered, now - INGESTION_LAG_MS)
            if watermark is None or target > watermark:
                try:
                    report.watermark_after_ms = store.advance(target, etag)
                except Exception as error:  # the next run re-reads from the old watermark: duplicates, no loss
                    log.error("could not advance the sign-in recovery watermark", extra={"error": str(error)})
        report.watermark_after_ms = report.watermark_after_ms or watermark
        for name in ("matched", "records", "enqueued", "invalid", "unresolved", "rejected"):
            if getattr(report, name):
                metrics.count(f"signin_recovery_{name}", getattr(report, name))
        metrics.flush()
    log.info("sign-in recovery summary", extra=report.summary())
    return report


def _events(
    logs: CloudWatchLogsClient, group: str, start_ms: int, end_ms: int, report: RecoveryReport
) -> Iterator[FilteredLogEventTypeDef]:
    """The log events of `group` in [start_ms, end_ms) that the marker phrase matches, page by page."""
    kwargs: dict[str, Any] = {
        "logGroupName": group,
        "startTime": start_ms,
        "endTime": end_ms - 1,  # endTime is inclusive
        "filterPattern": FILTER_PATTERN,
    }
    while True:
        try:
            page = logs.filter_log_events(**kwargs)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            if group not in report.missing_groups:
                report.missing_groups.append(group)
            return
        events = page.get("events") or []
        report.matched += len(events)
        yield from events
        token = page.get("nextToken")
        if not token or token == kwargs.get("nextToken"):
            return
        kwargs["nextToken"] = token


def _recover(
    event: FilteredLogEventTypeDef, group: str, resolver: SubResolver, report: RecoveryReport
) -> SyncMessage | None:
    where = {"log_group": group, "log_stream": event.get("logStreamName"), "event_id": event.get("eventId")}
    try:
        record = parse_record(str(event.get("message") or ""))
        if record is None:
            return None
        report.records += 1
        message = to_message(record, resolver)
    except InvalidRecord as error:
        report.invalid += 1
        log.warning("recovery record invalid: skipped", extra={**where, "reason": redact(str(error))[:300]})
        return None
    if message is None:
        report.unresolved += 1
        log.warning("recovery record names a sub Cognito does not know (user deleted?): skipped", extra=where)
    return message


def trigger_log_groups(configured: str | None, function_name: str | None) -> list[str] | None:
    """post_auth's and post_confirmation's log groups: SIGNIN_RECOVERY_LOG_GROUPS, else derived from a function of
    the same app and stage (`<app>-<stage>-reconcile` → `/aws/lambda/<app>-<stage>-post_auth`), else None."""
    if configured:
        groups = [g.strip() for g in configured.split(",") if g.strip()]
        bad = [g for g in groups if not _LOG_GROUP_RE.match(g)]
        if bad or not groups:
            raise RecoveryError(f"SIGNIN_RECOVERY_LOG_GROUPS: not a list of log group names: {configured[:200]!r}")
        return groups
    name = function_name or ""
    for suffix in ("-reconcile_continue", "-reconcile"):
        if name.endswith(suffix):
            prefix = name[: -len(suffix)]
            return [f"/aws/lambda/{prefix}-{function}" for function in TRIGGER_FUNCTIONS]
    return None


def recover_at_run_start(settings: Settings, context: Any, clients: Callable[[], RecoveryClients]) -> int | None:
    """The nightly reconcile's hook: recover, log, and return the count enqueued (None if it did not run or failed).

    `clients()` gives reconcile's own clients. Never raises: a failed recovery leaves the watermark where it was,
    and the next run (or `recover-signins`) tries again.
    """
    try:
        groups = trigger_log_groups(settings.signin_recovery_log_groups, getattr(context, "function_name", None))
        if groups is None:
            log.info("sign-in recovery skipped: no function name to derive post_auth's log group from")
            return None
        in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))  # elsewhere the context's clock means nothing
        remaining = getattr(context, "get_remaining_time_in_millis", None) if in_lambda else None
        stop_below_ms = remaining() / 2 if callable(remaining) else 0.0  # leave half the invocation to the scan
        report = recover_signins(
            clients(),
            bucket=settings.require("SNAPSHOT_BUCKET"),
            log_groups=groups,
            out_of_time=(lambda: remaining() < stop_below_ms) if callable(remaining) else (lambda: False),
        )
        return report.enqueued
    except Exception as error:
        metrics = Metrics("signin_recovery")
        metrics.count("signin_recovery_failed")
        metrics.flush()
        log.error(
            "sign-in recovery failed; the next run tries again from the same watermark",
            extra={"error": redact(f"{type(error).__name__}: {error}")[:500]},
        )
        return None
