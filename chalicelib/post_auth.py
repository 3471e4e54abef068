"""Cognito post-authentication (and post-confirmation) trigger: enqueue, return the event, never raise.

This runs inside every sign-in, which Cognito fails if the trigger raises or takes 5 s. So it does one thing,
an SQS SendMessage with tight timeouts and no botocore retries, and swallows every failure after logging it (with
user, pool and reason) and counting it. The nightly reconcile covers anything lost here.

Only the standard library and boto3 are imported: no pydantic, httpx or UserHub code (see docs/PERFORMANCE.md for
the measured import time). The body it writes is the v1 message of `chalicelib.messages`.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from chalicelib.observability import Metrics, get_logger

log = get_logger("post_auth")
metrics = Metrics("post_auth")

EVENT_TYPES = {
    "PostAuthentication_Authentication": ("SIGNIN", "post_auth"),
    "PostConfirmation_ConfirmSignUp": ("SIGNUP", "post_confirmation"),
}
_CONNECTION_RE = re.compile(r"^conn_[A-Za-z0-9_-]+$")
DEFAULTS = {"SQS_CONNECT_TIMEOUT": 0.5, "SQS_READ_TIMEOUT": 1.0, "POST_AUTH_BUDGET_SECONDS": 1.8}


def _seconds(name: str) -> float:
    """A timeout from the environment; a bad value falls back to the default (sign-in must not break)."""
    try:
        value = float(os.environ.get(name, DEFAULTS[name]))
        if 0 < value <= 4:
            return value
    except ValueError:
        pass
    log.error("ignoring invalid setting", extra={"variable": name})
    return DEFAULTS[name]


class _Queue:
    """The SQS client and queue URL, built on first use and kept for the container's life."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the client and URL, as a new container would (tests, demo)."""
        self.client: Any = None
        self.url: str | None = None
        self.key: tuple[str | None, ...] = ()

    @staticmethod
    def environment_key() -> tuple[str | None, ...]:
        names = (
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "EVENTS_QUEUE_URL",
            "EVENTS_QUEUE_NAME",
            *DEFAULTS,
        )
        return tuple(os.environ.get(name) for name in names)

    def send(self, body: str, deadline: float, context: Any = None) -> str:
        key = self.environment_key()
        if key != self.key:  # never in Lambda; a process driving the handler with other settings
            self.reset()
            self.key = key
        if self.client is None:
            import boto3
            from botocore.config import Config

            self.client = boto3.client(
                "sqs",
                config=Config(
                    connect_timeout=_seconds("SQS_CONNECT_TIMEOUT"),
                    read_timeout=_seconds("SQS_READ_TIMEOUT"),
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    tcp_keepalive=True,
                ),
            )
        if self.url is None:
            self.url = os.environ.get("EVENTS_QUEUE_URL") or queue_url_from_context(context)
            if self.url is None:  # local runs (moto): the deployed role has no sqs:GetQueueUrl
                self.url = self.client.get_queue_url(QueueName=os.environ["EVENTS_QUEUE_NAME"])["QueueUrl"]
            if time.monotonic() >= deadline:  # the budget bounds starting the send: worst case budget + one call
                raise TimeoutError("post_auth budget spent resolving the queue URL")
        return self.client.send_message(QueueUrl=self.url, MessageBody=body)["MessageId"]


queue = _Queue()


def queue_url_from_context(context: Any) -> str | None:
    """In Lambda, the queue's URL follows from the function's ARN (region, account): no GetQueueUrl, no IAM for it."""
    arn = getattr(context, "invoked_function_arn", None)
    name = os.environ.get("EVENTS_QUEUE_NAME")
    if not isinstance(arn, str) or not name or os.environ.get("AWS_ENDPOINT_URL"):
        return None
    parts = arn.split(":")
    if len(parts) < 7 or parts[2] != "lambda" or not parts[4].isdigit():
        return None
    domain = "amazonaws.com.cn" if parts[1] == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{parts[3]}.{domain}/{parts[4]}/{name}"


def message_body(event: dict[str, Any], event_type: str, source: str) -> str:
    """The v1 queue message for this trigger event (same fields as `messages.SyncMessage`)."""
    username = event.get("userName")
    pool = event.get("userPoolId") or os.environ.get("USER_POOL_ID")
    if not isinstance(username, str) or not username:
        raise ValueError("event has no userName")
    if not isinstance(pool, str) or not pool:
        raise ValueError("event has no userPoolId")
    connection = os.environ.get("USERHUB_CONNECTION_ID", "")
    return json.dumps(
        {
            "v": 1,
            "id": uuid.uuid4().hex,
            "type": event_type,
            "user_pool_id": pool,
            "username": username,
            "connection_id": connection if _CONNECTION_RE.match(connection) else None,
            "event_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "source": source,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def handle_trigger(event: Any, context: Any = None) -> Any:
    """Enqueue one message for a sign-in or sign-up and give Cognito its event back, whatever happens."""
    started = time.monotonic()
    deadline = started + _seconds("POST_AUTH_BUDGET_SECONDS")
    try:
        source_name = event.get("triggerSource") if isinstance(event, dict) else None
        if source_name not in EVENT_TYPES:
            log.info("trigger source ignored", extra={"trigger_source": str(source_name)[:80]})
            metrics.count("trigger_ignored")
            return event
        event_type, source = EVENT_TYPES[source_name]
        message_id = queue.send(message_body(event, event_type, source), deadline, context)
        metrics.count("enqueued")
        log.info(
            "enqueued",
            extra={
                "user": event.get("userName"),
                "pool": event.get("userPoolId"),
                "type": event_type,
                "sqs_message_id": message_id,
            },
        )
    except Exception as error:  # sign-in must never fail because of us; reconcile will catch up
        metrics.count("enqueue_failed")
        try:
            user = event.get("userName") if isinstance(event, dict) else None
            pool = event.get("userPoolId") if isinstance(event, dict) else None
            log.error(
                "enqueue failed; sign-in continues",
                extra={
                    "user": str(user)[:256] if user is not None else None,
                    "pool": str(pool)[:64] if pool else None,
                    "reason": f"{type(error).__name__}: {error}"[:500],
                },
            )
        except Exception:
            pass
    finally:
        try:
            metrics.timing("post_auth_ms", (time.monotonic() - started) * 1000)
            metrics.flush()
        except Exception:
            pass
    return event
