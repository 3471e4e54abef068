"""capture: a Cognito user change that CloudTrail recorded, as EventBridge delivers it, becomes one queued message.

The handler does only what cannot fail: read the record defensively, keep what names the user (the pool if given,
the `sub`, a username hint, the operation, CloudTrail's `eventID`) and put one CaptureMessage on the events queue.
It never calls Cognito: `deliver` resolves the user, with backoff and a DLQ (`delivery.resolve`). Chalice sets no
retry policy or DLQ on this rule, so a SendMessage that fails raises, Lambda retries twice, and the nightly reconcile
stays the source of truth behind it. Everything skipped or failed is counted and logged.

What CloudTrail's records hold (AWS: "Amazon Cognito records UserSub but not UserName in CloudTrail logs for requests
that are specific to a user"; https://docs.aws.amazon.com/cognito/latest/developerguide/logging-using-cloudtrail.html):
- the user is `additionalEventData.sub`; `requestParameters.username` is hidden, or whatever the caller typed (an
  alias, an e-mail), so it is only a hint;
- hidden values read `HIDDEN_DUE_TO_SECURITY_REASONS` (AWS also spells it `HIDDEN_FOR_SECURITY_REASONS`), and a hidden
  map or list becomes that bare string;
- calls a user makes with their own access token carry no `userPoolId`: the pool is checked here, not in the pattern;
- failed calls arrive too (`errorCode`, sometimes `requestParameters: null`);
- delivery is best effort, unordered and may repeat (`eventID` names a record).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from chalicelib.capture_rule import CAPTURED_OPERATIONS
from chalicelib.identifiers import SUB_PATTERN, USER_POOL_ID_PATTERN, USERNAME_MAX_CHARS, is_connection_id
from chalicelib.messages import CaptureMessage
from chalicelib.observability import Metrics, get_logger

log = get_logger("capture")
metrics = Metrics("capture")

HIDDEN = frozenset({"HIDDEN_DUE_TO_SECURITY_REASONS", "HIDDEN_FOR_SECURITY_REASONS"})
_SUB = re.compile(SUB_PATTERN)
_POOL = re.compile(USER_POOL_ID_PATTERN)


class Skip(StrEnum):
    NOT_A_CHANGE = "not_a_change"  # another source, detail-type or operation (the pattern should not let it in)
    FAILED_CALL = "failed_call"  # the API call failed: nothing changed
    OTHER_POOL = "other_pool"  # a pool this stage does not serve
    NO_USER = "no_user"  # neither a sub nor a username: left to the nightly run (and a sign CloudTrail changed shape)


def read_change(event: Any, serving_pool: str | None) -> CaptureMessage | Skip:
    """The message for an EventBridge envelope, or why there is none. Never raises, whatever the shape."""
    envelope = event if isinstance(event, dict) else {}
    detail = _mapping(envelope.get("detail"))
    if (
        envelope.get("source") != "aws.cognito-idp"
        or detail.get("eventSource") != "cognito-idp.amazonaws.com"
        or detail.get("eventName") not in CAPTURED_OPERATIONS
    ):
        return Skip.NOT_A_CHANGE
    if detail.get("errorCode") or detail.get("errorMessage"):
        return Skip.FAILED_CALL
    request, extra = _mapping(detail.get("requestParameters")), _mapping(detail.get("additionalEventData"))
    pool = _visible(request.get("userPoolId")) or _visible(extra.get("userPoolId"))
    if pool is not None and not _POOL.match(pool):
        pool = None
    if pool is not None and serving_pool and pool != serving_pool:
        return Skip.OTHER_POOL
    sub = _visible(extra.get("sub"))
    hint = _visible(request.get("username"))
    sub = sub if sub is not None and _SUB.match(sub) else None
    hint = hint if hint is not None and len(hint) <= USERNAME_MAX_CHARS else None
    if sub is None and hint is None:
        return Skip.NO_USER
    event_id = _visible(detail.get("eventID")) or _visible(envelope.get("id")) or ""
    connection = os.environ.get("USERHUB_CONNECTION_ID", "")
    return CaptureMessage(
        user_pool_id=pool,
        connection_id=connection if is_connection_id(connection) else None,
        event_time=_time(detail.get("eventTime")) or _time(envelope.get("time")) or datetime.now(UTC),
        event_id=event_id[:128] or "unknown",
        event_name=str(detail["eventName"]),
        sub=sub,
        username_hint=hint,
    )


def handle_capture_event(event: Any, context: Any, *, sqs: Any = None) -> dict[str, Any]:
    """The `capture` handler: returns what it did; raises only when SQS refused the message (Lambda retries)."""
    metrics.count("capture_received")
    try:
        change = read_change(event, os.environ.get("USER_POOL_ID") or None)
        if isinstance(change, Skip):
            metrics.count(f"capture_skipped_{change.value}")
            log.info("change not captured", extra={"skip": change.value, "operation": _operation(event)})
            return {"captured": False, "skip": change.value}
        try:
            message_id = _queue(sqs, context).send(change.to_body())
        except Exception as error:
            metrics.count("capture_enqueue_failed")
            log.error(
                "captured change not enqueued; Lambda retries, then the nightly reconcile covers it",
                extra={"event_id": change.event_id, "operation": change.event_name, "error": type(error).__name__},
            )
            raise
        metrics.count("capture_enqueued")
        return {"captured": True, "event_id": change.event_id, "sqs_message_id": message_id}
    finally:
        metrics.flush()


class _EventsQueue:
    """The events queue, found as post_auth finds it (the deployed role may only SendMessage)."""

    def __init__(self, sqs: Any, context: Any) -> None:
        from chalicelib.aws_clients import aws_client
        from chalicelib.post_auth import queue_url_from_context

        self.sqs = sqs or aws_client("sqs", connect_timeout=1, read_timeout=3, max_attempts=3)
        self.url = os.environ.get("EVENTS_QUEUE_URL") or queue_url_from_context(context)
        if self.url is None:  # local runs (moto): outside Lambda there is no function ARN to build it from
            self.url = self.sqs.get_queue_url(QueueName=os.environ["EVENTS_QUEUE_NAME"])["QueueUrl"]

    def send(self, body: str) -> str:
        return str(self.sqs.send_message(QueueUrl=self.url, MessageBody=body)["MessageId"])


_cached: tuple[tuple[str | None, ...], _EventsQueue] | None = None


def _queue(sqs: Any, context: Any) -> _EventsQueue:
    """One client per container (per environment, for a process that drives the handler with several): the same
    environment variables decide as for post_auth's queue, the Region and the SQS endpoint included."""
    from chalicelib.post_auth import queue

    global _cached
    key = queue.environment_key()
    if sqs is not None:
        return _EventsQueue(sqs, context)
    if _cached is None or _cached[0] != key:
        _cached = (key, _EventsQueue(None, context))
    return _cached[1]


def _mapping(value: Any) -> dict[str, Any]:
    """A dict, or {} for null, a hidden marker turned string, or anything else."""
    return value if isinstance(value, dict) else {}


def _visible(value: Any) -> str | None:
    """A non-empty string that is not a hidden marker (a one-element list, as the hosted UI sends, counts too)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value or value in HIDDEN:
        return None
    return value


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _operation(event: Any) -> str:
    detail = _mapping(event.get("detail")) if isinstance(event, dict) else {}
    return str(detail.get("eventName", ""))[:64]
