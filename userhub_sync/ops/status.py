"""`status --stage S`: is the stage healthy? Queue depths, the oldest message's age, the last reconcile, the wiring.

SQS has no API for the age of the oldest message; CloudWatch's `ApproximateAgeOfOldestMessage` has it, a minute or
so late. When CloudWatch has no datapoint (a new queue, moto, no permission) the age is unknown unless the operator
asks for a peek, which receives up to 10 messages with VisibilityTimeout=0: that is a real receive, so it adds one
to each peeked message's receive count (and on the events queue, one step closer to the DLQ). Hence opt-in.

Healthy means: both queues exist, the DLQ is empty, deliver's whole retry schedule plus RETENTION_MARGIN_SECONDS
fits in the events queue's retention, deliver's mapping is found the way `wire` finds it, is `Enabled`, has
ReportBatchItemFailures and the fleet bound DELIVER_MAX_CONCURRENCY as its MaximumConcurrency, the trigger and
permission are in place, no backlog waits with nothing consuming it, no alarm of the stage is in ALARM, and capture
is live where it is expected (ops/trail.py).
A backlog is stalled when messages are visible and the mapping is absent or not Enabled, or when the mapping is
Enabled, nothing is in flight and the visible count grew between two samples `sample_seconds` apart (Lambda
keeps receiving while it consumes, so an idle mapping in front of a growing queue is not consuming).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from chalicelib.timefmt import parse_time
from userhub_sync.ops.alarms import AlarmState, alarm_states
from userhub_sync.ops.aws import aws_errors, caller_identity, client, error_code, queue_url_or_none
from userhub_sync.ops.durations import format_duration
from userhub_sync.ops.errors import OpsError
from userhub_sync.ops.queues import EVENTS_RETENTION_SECONDS, QueueDepths, queue_depths
from userhub_sync.ops.schedule import RetentionFit, delivery_schedule, retention_fit
from userhub_sync.ops.stage import StageContext
from userhub_sync.ops.trail import CaptureStatus, capture_status
from userhub_sync.ops.wire import (
    RESPONSE_TYPE,
    TRIGGERS,
    Functions,
    describe_pool,
    events_queue_arn,
    find_mapping,
    has_cognito_permission,
    locate_functions,
)

if TYPE_CHECKING:
    from types_boto3_lambda import LambdaClient
    from types_boto3_sqs import SQSClient

ENABLED = "Enabled"


class ReconcileHealth(StrEnum):
    OK = "ok"  # the last run completed, or stopped (the next one carries on)
    FAILING = "failing"  # the last run failed
    NEVER = "never"  # no run recorded yet
    UNKNOWN = "unknown"  # the stage names no bucket
    ERROR = "error"  # the bucket could not be read


def _with(data: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """`data` plus the optional keys that have a value (the JSON leaves out what a check does not know)."""
    return {**data, **{key: value for key, value in optional.items() if value is not None}}


@dataclass
class QueueStatus:
    name: str
    exists: bool
    url: str | None = None
    depths: QueueDepths = field(default_factory=lambda: QueueDepths(0, 0, 0))
    oldest_age_seconds: float | None = None
    oldest_age_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        if not self.exists:
            return {"name": self.name, "exists": False}
        return {
            "name": self.name,
            "exists": True,
            "url": self.url,
            **asdict(self.depths),
            "oldest_age_seconds": self.oldest_age_seconds,
            "oldest_age_source": self.oldest_age_source,
        }


@dataclass
class LastReconcile:
    """The last reconcile run, as chalicelib.reconcile stored it in the bucket (see `last_reconcile`)."""

    status: ReconcileHealth
    summary: dict[str, Any] | None = None
    interrupted: bool = False  # the last run failed or stopped: `last_complete` says since when
    last_complete: dict[str, Any] | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status}
        if self.summary is not None:
            data["summary"] = self.summary
        if self.interrupted:
            data["last_complete"] = self.last_complete
        return _with(data, detail=self.detail)


@dataclass
class Check:
    """One thing `wire` sets, checked: `ok`, or why not."""

    ok: bool
    detail: str | None = None

    def facts(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return _with({"ok": self.ok, **self.facts()}, detail=self.detail)

    def describe(self) -> str:
        return self.detail or ", ".join(f"{key}={value}" for key, value in self.facts().items())


@dataclass
class MappingCheck(Check):
    state: str = "absent"
    uuid: str | None = None  # None: no mapping found
    function_response_types: list[str] = field(default_factory=list)
    last_processing_result: str | None = None
    maximum_concurrency: int | None = None  # the fleet bound in force (None: unbounded)
    expected_maximum_concurrency: int | None = None  # the stage's DELIVER_MAX_CONCURRENCY

    def facts(self) -> dict[str, Any]:
        if self.uuid is None:
            return {"state": self.state}
        facts = {
            "uuid": self.uuid,
            "state": self.state,
            "function_response_types": self.function_response_types,
            "maximum_concurrency": self.maximum_concurrency,
            "expected_maximum_concurrency": self.expected_maximum_concurrency,
        }
        return _with(facts, last_processing_result=self.last_processing_result)


@dataclass
class TriggerCheck(Check):
    pool: str | None = None  # None: the pool could not be read
    post_authentication: str | None = None

    def facts(self) -> dict[str, Any]:
        return {} if self.pool is None else {"pool": self.pool, "post_authentication": self.post_authentication}


@dataclass
class PermissionCheck(Check):
    source_arn: str | None = None

    def facts(self) -> dict[str, Any]:
        return {} if self.source_arn is None else {"source_arn": self.source_arn}


@dataclass(frozen=True)
class Wiring:
    """The three things `wire` sets and the mapping's state; `deployed` is False before `chalice deploy`."""

    deployed: bool
    detail: str | None = None
    source: str | None = None
    event_source_mapping: MappingCheck | None = None
    trigger: TriggerCheck | None = None
    permission: PermissionCheck | None = None

    def checks(self) -> dict[str, Check]:
        found: dict[str, Check | None] = {
            "event_source_mapping": self.event_source_mapping,
            "trigger": self.trigger,
            "permission": self.permission,
        }
        return {name: check for name, check in found.items() if check is not None}

    @property
    def ok(self) -> bool:
        return self.deployed and all(check.ok for check in self.checks().values())

    @property
    def mapping_state(self) -> str:
        return self.event_source_mapping.state if self.event_source_mapping else "absent (not deployed)"

    def to_dict(self) -> dict[str, Any]:
        if not self.deployed:
            return {"ok": False, "deployed": False, "detail": self.detail}
        checks = {name: check.to_dict() for name, check in self.checks().items()}
        return {"ok": self.ok, "deployed": True, "source": self.source, **checks}


@dataclass(frozen=True)
class Backlog:
    """Is anything consuming the messages that wait? (See the module docstring for the rule.)"""

    ok: bool
    visible: int
    in_flight: int
    mapping_state: str
    sampled_visible: int | None  # the second sample, when one was taken
    sample_seconds: float
    detail: str


@dataclass
class StatusReport:
    stage: str
    events_queue: QueueStatus
    dead_letter_queue: QueueStatus
    last_reconcile: LastReconcile
    wiring: Wiring
    retention: RetentionFit | None
    backlog: Backlog | None
    alarms: list[AlarmState] = field(default_factory=list)
    alarms_error: str | None = None  # the alarms could not be read (no permission): not counted as firing
    capture: CaptureStatus | None = None

    @property
    def firing(self) -> list[AlarmState]:
        return [alarm for alarm in self.alarms if alarm.firing]

    @property
    def healthy(self) -> bool:
        return bool(
            self.events_queue.exists
            and self.dead_letter_queue.exists
            and self.dead_letter_queue.depths.total == 0
            and self.wiring.ok
            and self.retention is not None
            and self.retention.ok
            and (self.backlog is None or self.backlog.ok)
            and self.last_reconcile.status != ReconcileHealth.FAILING
            and not self.firing
            and (self.capture is None or self.capture.ok)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "events_queue": self.events_queue.to_dict(),
            "dead_letter_queue": self.dead_letter_queue.to_dict(),
            "last_reconcile": self.last_reconcile.to_dict(),
            "wiring": self.wiring.to_dict(),
            "retention": self.retention.to_dict() if self.retention else None,
            "backlog": asdict(self.backlog) if self.backlog else None,
            "alarms": _with(
                {"states": {a.name: {"state": a.state, "reason": a.reason} for a in self.alarms}},
                error=self.alarms_error,
            ),
            "capture": self.capture.to_dict() if self.capture else None,
            "healthy": self.healthy,
        }


def oldest_from_cloudwatch(name: str) -> tuple[float, str] | None:
    """The latest `ApproximateAgeOfOldestMessage` maximum of the last 15 minutes, if CloudWatch has one."""
    try:
        end = datetime.now(UTC)
        points = (
            client("cloudwatch", max_attempts=2)
            .get_metric_statistics(
                Namespace="AWS/SQS",
                MetricName="ApproximateAgeOfOldestMessage",
                Dimensions=[{"Name": "QueueName", "Value": name}],
                StartTime=end - timedelta(minutes=15),
                EndTime=end,
                Period=60,
                Statistics=["Maximum"],
            )
            .get("Datapoints")
            or []
        )
    except aws_errors():  # no permission or no CloudWatch here: the age is simply unknown
        return None
    if not points:
        return None
    latest = max(points, key=lambda p: p["Timestamp"])
    return float(latest["Maximum"]), f"cloudwatch at {latest['Timestamp']:%H:%M} UTC"


def oldest_from_peek(sqs: SQSClient, url: str) -> tuple[float, str] | None:
    """Receive ≤ 10 messages with VisibilityTimeout=0 and take the oldest SentTimestamp (a lower bound)."""
    messages = (
        sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            WaitTimeSeconds=0,
            AttributeNames=["SentTimestamp"],
        ).get("Messages")
        or []
    )
    stamps = [int(m["Attributes"]["SentTimestamp"]) for m in messages if "SentTimestamp" in m.get("Attributes", {})]
    if not stamps:
        return None
    age = datetime.now(UTC).timestamp() - min(stamps) / 1000
    return max(age, 0.0), f"peek of {len(stamps)} message(s), a lower bound"


def queue_status(sqs: SQSClient, name: str, peek: bool) -> QueueStatus:
    url = queue_url_or_none(sqs, name)
    if url is None:
        return QueueStatus(name, exists=False)
    status = QueueStatus(name, exists=True, url=url, depths=queue_depths(sqs, url))
    age = oldest_from_cloudwatch(name)
    if age is None and peek and status.depths.visible:
        age = oldest_from_peek(sqs, url)
    if age:
        status.oldest_age_seconds, status.oldest_age_source = round(age[0], 1), age[1]
    elif status.depths.total == 0:
        status.oldest_age_source = "queue empty"
    else:
        status.oldest_age_source = "unknown: no CloudWatch datapoint" + ("" if peek else " (use --peek)")
    return status


def last_reconcile(bucket: str | None) -> LastReconcile:
    """The last run that ended (reconcile/last-run.json; `failing` if it failed). If it failed or stopped,
    `last_complete` is the last complete one (reconcile/last-complete.json; None if none) and `detail` says both,
    e.g. "last complete run 1d 02h ago (…); last run failed at …: <error>". A summary that does not parse is an
    `error`, like a bucket AWS does not let us read: both are what the operator must look at, not bugs."""
    if not bucket:
        return LastReconcile(ReconcileHealth.UNKNOWN, detail="SNAPSHOT_BUCKET not set")
    from pydantic import ValidationError

    from chalicelib.reconcile import RunStatus, read_last_complete, read_last_summary

    unfinished = (RunStatus.FAILED, RunStatus.STOPPED)
    try:
        s3 = client("s3")
        summary = read_last_summary(s3, bucket)
        complete = read_last_complete(s3, bucket) if summary and summary.status in unfinished else None
    except (*aws_errors(), ValidationError) as error:  # AWS, or a summary that does not parse: a status
        return LastReconcile(ReconcileHealth.ERROR, detail=f"{error_code(error)}: {error}"[:300])
    if not summary:
        return LastReconcile(ReconcileHealth.NEVER, detail=f"no reconcile/last-run.json in {bucket}")
    if summary.status not in unfinished:
        return LastReconcile(ReconcileHealth.OK, summary.to_dict())
    if complete is None:
        since = "no complete run recorded"
    else:
        finished = parse_time(complete.finished_at)
        age = format_duration((datetime.now(UTC) - finished).total_seconds()) if finished else "?"
        since = f"last complete run {age} ago ({complete.finished_at})"
    last_complete = complete.to_dict() if complete else None
    if summary.status is RunStatus.FAILED:
        reason = summary.error or "no reason recorded"
        detail = f"{since}; last run failed at {summary.finished_at}: {reason}"
        return LastReconcile(ReconcileHealth.FAILING, summary.to_dict(), True, last_complete, detail)
    detail = f"{since}; last run stopped at {summary.finished_at} (the next run carries on)"
    return LastReconcile(ReconcileHealth.OK, summary.to_dict(), True, last_complete, detail)


def mapping_check(mapping: dict[str, Any], expected_bound: int) -> MappingCheck:
    types = mapping.get("FunctionResponseTypes") or []
    bound = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
    state = mapping.get("State") or "unknown"
    problems = []
    if state != ENABLED:
        problems.append(
            f"state is {state}, not {ENABLED}, so Lambda is not polling (aws lambda update-event-source-mapping "
            f"--uuid {mapping.get('UUID')} --enabled)"
        )
    if RESPONSE_TYPE not in types:
        problems.append(f"FunctionResponseTypes lacks {RESPONSE_TYPE} (run `userhub-sync wire`)")
    if bound != expected_bound:
        problems.append(
            f"the fleet bound drifted: MaximumConcurrency is {bound if bound is not None else 'unset (unbounded)'}, "
            f"DELIVER_MAX_CONCURRENCY says {expected_bound} (run `userhub-sync wire`)"
        )
    return MappingCheck(
        ok=not problems,
        detail="; ".join(problems) or None,
        state=state,
        uuid=mapping.get("UUID"),
        function_response_types=types,
        last_processing_result=mapping.get("LastProcessingResult") or None,
        maximum_concurrency=bound,
        expected_maximum_concurrency=expected_bound,
    )


def deliver_mapping_check(ctx: StageContext, lam: LambdaClient, functions: Functions) -> MappingCheck:
    """deliver's mapping, found as wire finds it: Chalice's recorded UUID, else its mapping on this stage's queue."""
    try:
        mapping = find_mapping(lam, functions.arns["deliver"], events_queue_arn(ctx), functions.esm_uuid)
    except OpsError as error:
        return MappingCheck(ok=False, detail=str(error))
    return mapping_check(mapping, ctx.deliver_max_concurrency())


def pool_checks(lam: LambdaClient, pool_id: str | None, post_auth_arn: str) -> tuple[TriggerCheck, PermissionCheck]:
    """The trigger and Cognito's permission to invoke post_auth; what AWS refuses is the detail of both (each
    needs the pool), anything else is a bug and propagates."""
    if not pool_id:
        unset = "USER_POOL_ID not set"
        return TriggerCheck(ok=False, detail=unset), PermissionCheck(ok=False, detail=unset)
    try:
        pool = describe_pool(client("cognito-idp"), pool_id)
        current = (pool.get("LambdaConfig") or {}).get(TRIGGERS["post_auth"])
        allowed = has_cognito_permission(lam, post_auth_arn, pool["Arn"])
    except (*aws_errors(), OpsError) as error:
        detail = f"{error_code(error)}: {error}"[:300]
        return TriggerCheck(ok=False, detail=detail), PermissionCheck(ok=False, detail=detail)
    trigger = TriggerCheck(current == post_auth_arn, pool=pool_id, post_authentication=current)
    return trigger, PermissionCheck(allowed, source_arn=pool["Arn"])


def wiring_status(ctx: StageContext) -> Wiring:
    """The three things `wire` sets, and the mapping's state, checked without changing anything (the deployed file
    is read once, by locate_functions, which also says where the ARNs came from)."""
    lam = client("lambda")
    try:
        functions = locate_functions(ctx, lam, {}, ["post_auth", "deliver"], offer_arn_options=False)
    except OpsError as error:
        return Wiring(deployed=False, detail=str(error))
    mapping = deliver_mapping_check(ctx, lam, functions)
    trigger, permission = pool_checks(lam, ctx.user_pool_id, functions.arns["post_auth"])
    return Wiring(True, source=functions.source, event_source_mapping=mapping, trigger=trigger, permission=permission)


def retention_status(sqs: SQSClient, events: QueueStatus) -> RetentionFit | None:
    """Does deliver's whole schedule, with the queue's own maxReceiveCount, fit in the queue's retention?"""
    if not events.exists or events.url is None:
        return None
    names: list[Any] = ["MessageRetentionPeriod", "RedrivePolicy"]
    attrs = sqs.get_queue_attributes(QueueUrl=events.url, AttributeNames=names)["Attributes"]
    schedule = delivery_schedule()
    count = schedule.max_receive_count  # deliver's own count, when the queue has no redrive policy
    if attrs.get("RedrivePolicy"):
        count = int(json.loads(attrs["RedrivePolicy"]).get("maxReceiveCount", count))
    return retention_fit(schedule, count, int(attrs.get("MessageRetentionPeriod", EVENTS_RETENTION_SECONDS)))


def backlog_status(
    sqs: SQSClient,
    events: QueueStatus,
    mapping_state: str,
    sample_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Backlog | None:
    if not events.exists or events.url is None:
        return None
    visible, in_flight = events.depths.visible, events.depths.in_flight

    def verdict(ok: bool, detail: str, sampled: int | None = None) -> Backlog:
        return Backlog(ok, visible, in_flight, mapping_state, sampled, sample_seconds, detail)

    if visible == 0:
        return verdict(True, "nothing waiting")
    if mapping_state != ENABLED:
        return verdict(
            False,
            f"{visible} message(s) wait and deliver's mapping is {mapping_state}: nothing consumes them until it is "
            "Enabled (they reach the DLQ only through receives, and expire after the retention)",
        )
    if in_flight or sample_seconds <= 0:
        return verdict(True, f"{visible} waiting, {in_flight} in flight: being consumed")
    sleep(sample_seconds)
    again = queue_depths(sqs, events.url)
    if again.visible > visible and again.in_flight == 0:
        return verdict(
            False,
            f"{visible} → {again.visible} visible in {sample_seconds:g} s with none in flight: the mapping is "
            "Enabled but nothing is receiving (check deliver's throttling, reserved concurrency and errors)",
            again.visible,
        )
    return verdict(
        True,
        f"{visible} → {again.visible} visible, {again.in_flight} in flight after {sample_seconds:g} s",
        again.visible,
    )


def gather(ctx: StageContext, *, peek: bool = False, sample_seconds: float = 0.0) -> StatusReport:
    sqs = client("sqs")
    events = queue_status(sqs, ctx.events_queue, peek)
    dead_letters = queue_status(sqs, ctx.dead_letter_queue, peek)
    reconcile = last_reconcile(ctx.bucket)
    wiring = wiring_status(ctx)
    retention = retention_status(sqs, events)
    backlog = backlog_status(sqs, events, wiring.mapping_state, sample_seconds)
    report = StatusReport(ctx.stage, events, dead_letters, reconcile, wiring, retention, backlog)
    try:
        report.alarms = alarm_states(client("cloudwatch"), f"{ctx.app_name}-{ctx.stage}")
    except aws_errors() as error:
        report.alarms_error = f"{error_code(error)}: {error}"[:300]
    report.capture = capture_status(ctx, caller_identity().region)
    return report
