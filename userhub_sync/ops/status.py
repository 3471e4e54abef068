"""`status --stage S`: is the stage healthy? Queue depths, the oldest message's age, the last reconcile, the wiring.

SQS has no API for the age of the oldest message; CloudWatch's `ApproximateAgeOfOldestMessage` has it, a minute or
so late. When CloudWatch has no datapoint (a new queue, moto, no permission) the age is unknown unless the operator
asks for a peek, which receives up to 10 messages with VisibilityTimeout=0: that is a real receive, so it adds one
to each peeked message's receive count (and on the events queue, one step closer to the DLQ). Hence opt-in.

Healthy means: both queues exist, the DLQ is empty, deliver's whole retry schedule plus RETENTION_MARGIN_SECONDS
fits in the events queue's retention, deliver's mapping is found the way `wire` finds it, is `Enabled` and has
ReportBatchItemFailures, the trigger and permission are in place, and no backlog waits with nothing consuming it.
A backlog is stalled when messages are visible and the mapping is absent or not Enabled, or when the mapping is
Enabled, nothing is in flight and the visible count grew between two samples `sample_seconds` apart (Lambda
keeps receiving while it consumes, so an idle mapping in front of a growing queue is not consuming).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.timefmt import parse_time
from userhub_sync.ops.aws import client, error_code, queue_url_or_none
from userhub_sync.ops.durations import format_duration
from userhub_sync.ops.errors import OpsError
from userhub_sync.ops.queues import EVENTS_RETENTION_SECONDS, queue_depths
from userhub_sync.ops.schedule import delivery_schedule, retention_fit
from userhub_sync.ops.stage import StageContext, read_deployed
from userhub_sync.ops.wire import (
    RESPONSE_TYPE,
    TRIGGERS,
    events_queue_arn,
    find_mapping,
    has_cognito_permission,
    locate_functions,
)

ENABLED = "Enabled"


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
    except Exception:  # no permission or no CloudWatch here: the age is simply unknown
        return None
    if not points:
        return None
    latest = max(points, key=lambda p: p["Timestamp"])
    return float(latest["Maximum"]), f"cloudwatch at {latest['Timestamp']:%H:%M} UTC"


def oldest_from_peek(sqs: Any, url: str) -> tuple[float, str] | None:
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


def queue_status(sqs: Any, name: str, peek: bool) -> dict[str, Any]:
    url = queue_url_or_none(sqs, name)
    if url is None:
        return {"name": name, "exists": False}
    info: dict[str, Any] = {"name": name, "exists": True, "url": url, **asdict(queue_depths(sqs, url))}
    age = oldest_from_cloudwatch(name)
    if age is None and peek and info["visible"]:
        age = oldest_from_peek(sqs, url)
    info["oldest_age_seconds"] = round(age[0], 1) if age else None
    if age:
        info["oldest_age_source"] = age[1]
    elif info["visible"] == 0 and info["in_flight"] == 0 and info["delayed"] == 0:
        info["oldest_age_source"] = "queue empty"
    else:
        info["oldest_age_source"] = "unknown: no CloudWatch datapoint" + ("" if peek else " (use --peek)")
    return info


def last_reconcile(bucket: str | None) -> dict[str, Any]:
    """The last reconcile run, as chalicelib.reconcile stored it in the bucket; `failing` if that run failed.

    `summary` is the last run that ended (reconcile/last-run.json). If it failed or stopped, `last_complete` is the
    last complete one (reconcile/last-complete.json; None if there is none) and `detail` says both, e.g.
    "last complete run 1d 02h ago (…); last run failed at …: <error>".
    """
    if not bucket:
        return {"status": "unknown", "detail": "SNAPSHOT_BUCKET not set"}
    from chalicelib.reconcile import read_last_complete, read_last_summary

    try:
        s3 = client("s3")
        summary = read_last_summary(s3, bucket)
        ended = (summary or {}).get("status")
        complete = read_last_complete(s3, bucket) if ended in ("failed", "stopped") else None
    except Exception as error:
        return {"status": "error", "detail": f"{error_code(error)}: {error}"[:300]}
    if not summary:
        return {"status": "never", "detail": f"no reconcile/last-run.json in {bucket}"}
    if ended not in ("failed", "stopped"):
        return {"status": "ok", "summary": summary}
    if complete is None:
        since = "no complete run recorded"
    else:
        finished = parse_time(complete.get("finished_at"))
        age = format_duration((datetime.now(UTC) - finished).total_seconds()) if finished else "?"
        since = f"last complete run {age} ago ({complete.get('finished_at')})"
    if ended == "failed":
        reason = summary.get("error") or "no reason recorded"
        detail = f"{since}; last run failed at {summary.get('finished_at')}: {reason}"
        return {"status": "failing", "summary": summary, "last_complete": complete, "detail": detail}
    detail = f"{since}; last run stopped at {summary.get('finished_at')} (the next run carries on)"
    return {"status": "ok", "summary": summary, "last_complete": complete, "detail": detail}


def _mapping_check(mapping: dict[str, Any]) -> dict[str, Any]:
    types = mapping.get("FunctionResponseTypes") or []
    state = mapping.get("State") or "unknown"
    problems = []
    if state != ENABLED:
        problems.append(
            f"state is {state}, not {ENABLED}, so Lambda is not polling (aws lambda update-event-source-mapping "
            f"--uuid {mapping.get('UUID')} --enabled)"
        )
    if RESPONSE_TYPE not in types:
        problems.append(f"FunctionResponseTypes lacks {RESPONSE_TYPE} (run `userhub-sync wire`)")
    check: dict[str, Any] = {
        "ok": not problems,
        "uuid": mapping.get("UUID"),
        "state": state,
        "function_response_types": types,
    }
    if mapping.get("LastProcessingResult"):
        check["last_processing_result"] = mapping["LastProcessingResult"]
    if problems:
        check["detail"] = "; ".join(problems)
    return check


def wiring_status(ctx: StageContext) -> dict[str, Any]:
    """The three things `wire` sets, and the mapping's state, checked without changing anything."""
    lam = client("lambda")
    checks: dict[str, Any] = {}
    try:
        functions = locate_functions(ctx, lam, {}, ["post_auth", "deliver"], offer_arn_options=False)
    except OpsError as error:
        return {"ok": False, "deployed": False, "detail": str(error)}
    try:  # found as wire finds it: Chalice's recorded UUID, else deliver's mapping on this stage's queue
        mapping = find_mapping(lam, functions.arns["deliver"], events_queue_arn(ctx), functions.esm_uuid)
        checks["event_source_mapping"] = _mapping_check(mapping)
    except OpsError as error:
        checks["event_source_mapping"] = {"ok": False, "state": "absent", "detail": str(error)}
    pool_id = ctx.user_pool_id
    if not pool_id:
        checks["trigger"] = checks["permission"] = {"ok": False, "detail": "USER_POOL_ID not set"}
    else:
        try:
            pool = client("cognito-idp").describe_user_pool(UserPoolId=pool_id)["UserPool"]
            current = (pool.get("LambdaConfig") or {}).get(TRIGGERS["post_auth"])
            checks["trigger"] = {
                "ok": current == functions.arns["post_auth"],
                "pool": pool_id,
                "post_authentication": current,
            }
            checks["permission"] = {
                "ok": has_cognito_permission(lam, functions.arns["post_auth"], pool["Arn"]),
                "source_arn": pool["Arn"],
            }
        except Exception as error:
            detail = f"{error_code(error)}: {error}"[:300]
            checks["trigger"] = checks["permission"] = {"ok": False, "detail": detail}
    deployed = read_deployed(ctx.project_dir, ctx.stage)
    return {
        "ok": all(c["ok"] for c in checks.values()),
        "deployed": True,
        "source": str(deployed.path) if deployed else "function names",
        **checks,
    }


# ----------------------------------------------------------------------------------------------- retention
def retention_status(sqs: Any, events: dict[str, Any]) -> dict[str, Any] | None:
    """Does deliver's whole schedule, with the queue's own maxReceiveCount, fit in the queue's retention?"""
    if not events.get("exists"):
        return None
    names = ["MessageRetentionPeriod", "RedrivePolicy"]
    attrs = sqs.get_queue_attributes(QueueUrl=events["url"], AttributeNames=names)["Attributes"]
    schedule = delivery_schedule()
    count = schedule.max_receive_count  # deliver's own count, when the queue has no redrive policy
    if attrs.get("RedrivePolicy"):
        count = int(json.loads(attrs["RedrivePolicy"]).get("maxReceiveCount", count))
    return retention_fit(schedule, count, int(attrs.get("MessageRetentionPeriod", EVENTS_RETENTION_SECONDS))).to_dict()


# ----------------------------------------------------------------------------------------------- backlog
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


def backlog_status(
    sqs: Any,
    events: dict[str, Any],
    mapping_state: str,
    sample_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Backlog | None:
    if not events.get("exists"):
        return None
    visible, in_flight = int(events["visible"]), int(events["in_flight"])

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
    again = queue_depths(sqs, events["url"])
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


def gather(ctx: StageContext, *, peek: bool = False, sample_seconds: float = 0.0) -> dict[str, Any]:
    sqs = client("sqs")
    report: dict[str, Any] = {
        "stage": ctx.stage,
        "events_queue": queue_status(sqs, ctx.events_queue, peek),
        "dead_letter_queue": queue_status(sqs, ctx.dead_letter_queue, peek),
        "last_reconcile": last_reconcile(ctx.bucket),
        "wiring": wiring_status(ctx),
    }
    events = report["events_queue"]
    report["retention"] = retention_status(sqs, events)
    mapping = report["wiring"].get("event_source_mapping") or {"state": "absent (not deployed)"}
    backlog = backlog_status(sqs, events, str(mapping.get("state")), sample_seconds)
    report["backlog"] = asdict(backlog) if backlog else None
    dlq = report["dead_letter_queue"]
    dlq_depth = dlq.get("visible", 0) + dlq.get("in_flight", 0) + dlq.get("delayed", 0)
    report["healthy"] = bool(
        events.get("exists")
        and dlq.get("exists")
        and dlq_depth == 0
        and report["wiring"]["ok"]
        and (report["retention"] or {}).get("ok")
        and (backlog is None or backlog.ok)
        and report["last_reconcile"]["status"] != "failing"
    )
    return report
