"""Cognito post-authentication (and post-confirmation) trigger: enqueue, return the event, never raise.

This runs inside every sign-in, which Cognito fails if the trigger raises or takes 5 s (and it may then retry the
trigger). Invariants:

- **Bounded by wall-clock time.** The whole run, every attempt included, ends within `POST_AUTH_BUDGET_SECONDS`
  (default 1.8 s) whatever the endpoint does: refuse, never answer, or answer one byte at a time. botocore's read
  timeout is per socket read, so it bounds none of the last; here each SendMessage runs on a worker thread of the
  container and the handler waits for it with a timeout. A call given up on may still finish later: at worst a
  duplicate SIGNIN (UserHub re-pulls the user once more).
- **Two attempts.** A first attempt that fails or runs past half the budget is followed by a second on a new client
  (a fresh connection), within the rest of the budget. Both attempts are counted and logged (user, pool, reason).
- **A second path.** If both fail, post_auth prints one *recovery record* to stdout: a JSON line with
  `"recovery": "userhub-sync/v1"`, the complete v1 message and the user's `sub`. Lambda ships function output to
  CloudWatch Logs through the Lambda service, not through our connection to SQS, so an SQS outage does not stop it.
  `chalicelib.signin_recovery` (run by the nightly reconcile, or `userhub-sync recover-signins`) enqueues it again.
  The nightly scan itself cannot find a lost sign-in: a sign-in changes no attribute it fingerprints.
- A sign-in is lost only if both attempts fail *and* its record never reaches CloudWatch Logs, or expires there
  before recovery runs (docs/RELIABILITY.md).
- **Logs what an operator needs.** A retry, a failure and a recovery record each have their line with the reason;
  a plain success has none at INFO (its "enqueued" line is DEBUG: `LOG_LEVEL=DEBUG` brings it back).
- **Metrics stay complete without a line per sign-in.** An invocation writes its EMF line only when something other
  than a plain first-attempt success happened (a retry, a failure, a recovery record, an ignored trigger source).
  A plain success writes nothing to stdout: it counts `enqueued` in `metrics.totals` only. Every invocation that
  returns either enqueued or counted `enqueue_failed` / `trigger_ignored` in its EMF line, and none raises, so in
  CloudWatch enqueued = AWS/Lambda Invocations − Errors − enqueue_failed − trigger_ignored (the dashboard's
  "sign-ins enqueued", docs/OPERATIONS.md). At a million sign-ins a day a success line, and then the EMF line,
  each cost dollars a month (docs/PERFORMANCE.md finding 4).

Only the standard library and boto3 are imported: no pydantic, httpx or UserHub code (see docs/PERFORMANCE.md for
the measured import time). The body it writes is the v1 message of `chalicelib.messages`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from chalicelib.identifiers import is_connection_id
from chalicelib.observability import Metrics, get_logger, log_user, redact

log = get_logger("post_auth")
metrics = Metrics("post_auth")

EVENT_TYPES = {
    "PostAuthentication_Authentication": ("SIGNIN", "post_auth"),
    "PostConfirmation_ConfirmSignUp": ("SIGNUP", "post_confirmation"),
}
DEFAULTS = {"SQS_CONNECT_TIMEOUT": 0.5, "SQS_READ_TIMEOUT": 1.0, "POST_AUTH_BUDGET_SECONDS": 1.8}
MAX_SECONDS = 4.0  # no setting may go beyond this: Cognito gives the whole trigger 5 s
FIRST_ATTEMPT_SHARE = 0.5  # the first attempt may use this share of the budget; the second gets the rest
SENDER_THREADS = 4  # threads a container keeps for SendMessage; calls given up on hold one until they end
RECOVERY_MARKER = "userhub-sync/v1"  # the value of "recovery" in a recovery record; signin_recovery filters on it


def _seconds(name: str) -> float:
    """A timeout from the environment; a bad value falls back to the default (sign-in must not break)."""
    try:
        value = float(os.environ.get(name, DEFAULTS[name]))
        if 0 < value <= MAX_SECONDS:
            return value
    except ValueError:
        pass
    log.error("ignoring invalid setting", extra={"variable": name})
    return DEFAULTS[name]


class EnqueueFailed(Exception):
    """Both attempts failed; `reasons` says why, one entry per attempt."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _new_client() -> Any:
    import boto3
    from botocore.config import Config

    with _client_lock:  # boto3's default session is not thread-safe for creating clients
        return boto3.client(
            "sqs",
            config=Config(
                connect_timeout=_seconds("SQS_CONNECT_TIMEOUT"),
                read_timeout=_seconds("SQS_READ_TIMEOUT"),
                retries={"total_max_attempts": 1, "mode": "standard"},
                tcp_keepalive=True,
            ),
        )


_client_lock = threading.Lock()


class _Queue:
    """The SQS client and queue URL, kept for the container's life, and the threads that send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.busy = 0  # calls running on the sender threads, abandoned ones included
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
            "AWS_ENDPOINT_URL_SQS",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "EVENTS_QUEUE_URL",
            "EVENTS_QUEUE_NAME",
            *DEFAULTS,
        )
        return tuple(os.environ.get(name) for name in names)

    def _submit(self, call: Callable[[], tuple[Any, str, str]]) -> Future[tuple[Any, str, str]] | None:
        """Run `call` on a free sender thread; None if every thread is still held by a call given up on (or the
        interpreter is shutting down)."""
        with self._lock:
            if self.busy >= SENDER_THREADS:
                return None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="post_auth-sqs")
            self.busy += 1

        def release() -> None:
            with self._lock:
                self.busy -= 1

        def run() -> tuple[Any, str, str]:
            try:
                return call()
            finally:
                release()

        try:
            return self._executor.submit(run)
        except RuntimeError:  # the interpreter is shutting down: no thread will run it
            release()
            return None

    def _attempt(self, body: str, context: Any, client: Any) -> tuple[Any, str, str]:
        """One SendMessage (on a sender thread): the client used, the queue URL and the message id."""
        client = client or _new_client()
        url = self.url or os.environ.get("EVENTS_QUEUE_URL") or queue_url_from_context(context)
        if url is None:  # local runs (moto): the deployed role has no sqs:GetQueueUrl
            url = client.get_queue_url(QueueName=os.environ["EVENTS_QUEUE_NAME"])["QueueUrl"]
        return client, url, client.send_message(QueueUrl=url, MessageBody=body)["MessageId"]

    def send(
        self,
        body: str,
        started: float,
        budget: float,
        context: Any = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> str:
        """The SQS message id, within `budget` seconds of `started`; raises EnqueueFailed after two failures."""
        key = self.environment_key()
        if key != self.key:  # never in Lambda; a process driving the handler with other settings
            self.reset()
            self.key = key
        deadline = started + budget
        reasons: list[str] = []
        for attempt, until in ((1, started + budget * FIRST_ATTEMPT_SHARE), (2, deadline)):
            client = self.client if attempt == 1 else None  # the second attempt always opens a new connection
            window = until - time.monotonic()
            future = self._submit(functools.partial(self._attempt, body, context, client)) if window > 0 else None
            if future is None:
                reason = (
                    f"all {SENDER_THREADS} sender threads still held by calls given up on (or shutting down)"
                    if window > 0
                    else "budget spent"
                )
            else:
                try:
                    self.client, self.url, message_id = future.result(timeout=max(0.0, until - time.monotonic()))
                    return message_id
                except FutureTimeout:
                    future.cancel()
                    reason = f"no answer within {window:.2f} s (POST_AUTH_BUDGET_SECONDS={budget:g})"
                except Exception as error:
                    reason = f"{type(error).__name__}: {error}"
            reasons.append(reason[:300])
            if self.client is client:
                self.client = None  # its connection may be the broken one: the next sign-in starts afresh
            if attempt == 1 and on_retry is not None:
                on_retry(reason)
        raise EnqueueFailed(reasons)


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
            "connection_id": connection if is_connection_id(connection) else None,
            "event_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "source": source,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def user_sub(event: Any) -> str | None:
    """The user's immutable id, `request.userAttributes.sub`, if the event carries one."""
    try:
        sub = event["request"]["userAttributes"]["sub"]
    except (KeyError, TypeError):
        return None
    return sub[:128] if isinstance(sub, str) and sub else None


def recovery_record(body: str, event: Any, reason: str) -> str:
    """The line `signin_recovery` parses back: marker first, then sub, reason and the complete v1 message.

    ASCII only (json's escapes), so no character in a username can split it into two log events.
    """
    message, sub = json.loads(body), user_sub(event)
    if sub and log_user(message["username"]) != message["username"]:
        message["username"] = None  # LOG_USERNAMES=hashed: recovery finds the user by `sub` instead
    return json.dumps(
        {"recovery": RECOVERY_MARKER, "sub": sub, "reason": reason[:500], "message": message},
        separators=(",", ":"),
    )


def _who(event: Any) -> dict[str, str | None]:
    user = event.get("userName") if isinstance(event, dict) else None
    pool = event.get("userPoolId") if isinstance(event, dict) else None
    return {"user": log_user(str(user)[:256]) if user is not None else None, "pool": str(pool)[:64] if pool else None}


def _log_retry(event: Any, reason: str) -> None:
    metrics.count("enqueue_retried")
    log.warning(
        "enqueue attempt 1 failed; retrying on a fresh connection", extra={**_who(event), "reason": reason[:500]}
    )


def _retry(event: Any, reason: str, retried: list[str]) -> None:
    retried.append(reason)
    _log_retry(event, reason)


def _write_recovery_record(body: str, event: Any, event_type: str, reason: str) -> None:
    """The second path: one line on stdout, which Lambda ships to CloudWatch Logs without our SQS connection."""
    try:
        sys.stdout.write(redact(recovery_record(body, event, reason)) + "\n")
        sys.stdout.flush()
    except Exception as error:
        metrics.count("recovery_record_failed")
        log.error(
            "enqueue failed twice and the recovery record could not be written: sign-in lost",
            extra={**_who(event), "type": event_type, "reason": f"{reason[:400]} | {type(error).__name__}"},
        )
        return
    metrics.count("recovery_record_written")
    log.error(
        "enqueue failed twice; recovery record written, sign-in continues",
        extra={**_who(event), "type": event_type, "reason": reason[:500]},
    )


def handle_trigger(event: Any, context: Any = None) -> Any:
    """Enqueue one message for a sign-in or sign-up and give Cognito its event back, whatever happens."""
    started = time.monotonic()
    plain = False  # a first-attempt success: no EMF line (see the module docstring)
    retried: list[str] = []
    try:
        source_name = event.get("triggerSource") if isinstance(event, dict) else None
        if source_name not in EVENT_TYPES:
            log.info("trigger source ignored", extra={"trigger_source": str(source_name)[:80]})
            metrics.count("trigger_ignored")
            return event
        event_type, source = EVENT_TYPES[source_name]
        body = message_body(event, event_type, source)
        budget = _seconds("POST_AUTH_BUDGET_SECONDS")
        try:
            message_id = queue.send(body, started, budget, context, lambda reason: _retry(event, reason, retried))
        except EnqueueFailed as failure:
            metrics.count("enqueue_failed")
            _write_recovery_record(body, event, event_type, " | ".join(failure.reasons))
            return event
        metrics.count("enqueued")  # in the totals always; in an EMF line only after a retry
        plain = not retried
        log.debug(
            "enqueued",
            extra={
                "user": log_user(event.get("userName")),
                "pool": event.get("userPoolId"),
                "type": event_type,
                "sqs_message_id": message_id,
            },
        )
    except Exception as error:  # sign-in must never fail because of us
        metrics.count("enqueue_failed")
        try:
            log.error(
                "enqueue failed; nothing to recover, sign-in continues",
                extra={**_who(event), "reason": f"{type(error).__name__}: {error}"[:500]},
            )
        except Exception:
            pass
    finally:
        try:
            metrics.timing("post_auth_ms", (time.monotonic() - started) * 1000)
            if plain:  # Lambda's Invocations and Duration say it; a line here would cost ≈$4 a month at 1 M/day
                metrics.discard()
            else:
                metrics.flush()
        except Exception:
            pass
    return event
