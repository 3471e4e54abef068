"""`status --stage S`: is the stage healthy? Queue depths, the oldest message's age, the last reconcile, the wiring.

SQS has no API for the age of the oldest message; CloudWatch's `ApproximateAgeOfOldestMessage` has it, a minute or
so late. When CloudWatch has no datapoint (a new queue, moto, no permission) the age is unknown unless the operator
asks for a peek, which receives up to 10 messages with VisibilityTimeout=0: that is a real receive, so it adds one
to each peeked message's receive count (and on the events queue, one step closer to the DLQ). Hence opt-in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from userhub_sync.opsutil import (
    OpsError,
    StageContext,
    client,
    error_code,
    format_duration,
    now,
    parse_time,
    read_deployed,
)
from userhub_sync.queues import queue_depths
from userhub_sync.wire import (
    RESPONSE_TYPE,
    TRIGGERS,
    find_mapping,
    has_cognito_permission,
    locate_functions,
)


def _queue_url(sqs: Any, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except Exception as error:
        if error_code(error) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return None
        raise


def oldest_from_cloudwatch(name: str) -> tuple[float, str] | None:
    """The latest `ApproximateAgeOfOldestMessage` maximum of the last 15 minutes, if CloudWatch has one."""
    try:
        end = now()
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
    age = now().timestamp() - min(stamps) / 1000
    return max(age, 0.0), f"peek of {len(stamps)} message(s), a lower bound"


def queue_status(sqs: Any, name: str, peek: bool) -> dict[str, Any]:
    url = _queue_url(sqs, name)
    if url is None:
        return {"name": name, "exists": False}
    info: dict[str, Any] = {"name": name, "exists": True, "url": url, **queue_depths(sqs, url)}
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
        age = format_duration((now() - finished).total_seconds()) if finished else "?"
        since = f"last complete run {age} ago ({complete.get('finished_at')})"
    if ended == "failed":
        reason = summary.get("error") or "no reason recorded"
        detail = f"{since}; last run failed at {summary.get('finished_at')}: {reason}"
        return {"status": "failing", "summary": summary, "last_complete": complete, "detail": detail}
    detail = f"{since}; last run stopped at {summary.get('finished_at')} (the next run carries on)"
    return {"status": "ok", "summary": summary, "last_complete": complete, "detail": detail}


def wiring_status(ctx: StageContext) -> dict[str, Any]:
    """The three things `wire` sets, checked without changing anything."""
    lam = client("lambda")
    checks: dict[str, Any] = {}
    try:
        functions = locate_functions(ctx, lam, {}, ["post_auth", "deliver"])
    except OpsError as error:
        return {"ok": False, "deployed": False, "detail": str(error)}
    try:
        mapping = find_mapping(lam, functions.arns["deliver"], None, functions.esm_uuid)
        types = mapping.get("FunctionResponseTypes") or []
        checks["event_source_mapping"] = {
            "ok": RESPONSE_TYPE in types,
            "uuid": mapping.get("UUID"),
            "function_response_types": types,
        }
    except OpsError as error:
        checks["event_source_mapping"] = {"ok": False, "detail": str(error)}
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


def gather(ctx: StageContext, *, peek: bool = False) -> dict[str, Any]:
    sqs = client("sqs")
    report = {
        "stage": ctx.stage,
        "events_queue": queue_status(sqs, ctx.events_queue, peek),
        "dead_letter_queue": queue_status(sqs, ctx.dead_letter_queue, peek),
        "last_reconcile": last_reconcile(ctx.bucket),
        "wiring": wiring_status(ctx),
    }
    dlq = report["dead_letter_queue"]
    dlq_depth = dlq.get("visible", 0) + dlq.get("in_flight", 0) + dlq.get("delayed", 0)
    report["healthy"] = bool(
        report["events_queue"].get("exists")
        and dlq.get("exists")
        and dlq_depth == 0
        and report["wiring"]["ok"]
        and report["last_reconcile"]["status"] != "failing"
    )
    return report
