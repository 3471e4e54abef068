"""CloudTrail and EventBridge for Cognito on this machine: what AWS would deliver to `capture`, made by us.

Neither moto nor this machine has CloudTrail, and moto's Cognito emits nothing, so `CloudTrailEmulator` hooks a
boto3 cognito-idp client: after each successful call of an operation the capture rule names
(`chalicelib.capture_rule.CAPTURED_OPERATIONS`) it builds the EventBridge event AWS documents and hands it to a
delivery:

- `HandlerDelivery` (default): straight to `app.capture`, as EventBridge invokes the Lambda (asynchronously: an error
  is retried twice, as Lambda does, then recorded; the caller's Cognito call never sees it);
- `EventBridgeDelivery`: through moto's EventBridge (`put_events` on the default bus, the stage's rule with the
  deployed pattern and an SQS target, because moto's EventBridge cannot invoke a Lambda), then whatever the rule let
  through, from that queue to `app.capture`. This shows the pattern matching, `exists: false` included.

What the events hold (https://docs.aws.amazon.com/cognito/latest/developerguide/logging-using-cloudtrail.html,
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-events-structure.html): the envelope `version`, `id`,
`detail-type: AWS API Call via CloudTrail`, `source: aws.cognito-idp`, `account`, `time`, `region`, `resources: []`;
the record's `eventSource`, `eventName`, `eventTime`, a fresh `eventID`, `eventType: AwsApiCall`, the caller's request
parameters with every value but `userPoolId` and `clientId` hidden (`HIDDEN_DUE_TO_SECURITY_REASONS`, as AWS hides the
username: "Amazon Cognito records UserSub but not UserName"), and `additionalEventData.sub`, the user's sub read from
moto (before the call, so a deleted user still has one). Calls made with an access token carry no pool.

Invariants: a call that failed produces nothing (or, with `emit_failed`, the failed-call record with `errorCode`, which
the rule filters out and `capture` skips); the emulator never changes what the Cognito call returns or raises; what it
emitted is kept in order, with the moment the call started, so a run can time the change to UserHub.
What is not emulated: CloudTrail's and EventBridge's own delay (AWS gives no EventBridge figure; CloudTrail log files
arrive "within an average of about 5 minutes"), their best-effort, unordered, repeated delivery, and the hosted UI's
service events.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from chalicelib.capture_rule import CAPTURED_OPERATIONS, EVENT_PATTERN
from userhub_sync.local.moto import DEFAULT_REGION, MOTO_ACCOUNT
from userhub_sync.ops.aws import aws_errors

log = logging.getLogger("userhub_sync.cloudtrail")

HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"
SERVICE = "cognito-identity-provider"  # botocore's event name for cognito-idp
VISIBLE_PARAMETERS = frozenset({"userPoolId", "clientId"})
LAMBDA_ASYNC_ATTEMPTS = 3  # an asynchronous invocation that fails is retried twice
_CALL = "userhub_sync_cloudtrail"  # our key in botocore's per-call context


class Delivery(Protocol):
    """Where an emulated event goes: returns how many times it reached `capture` (0: the rule filtered it out)."""

    def __call__(self, event: dict[str, Any]) -> int: ...


CaptureHandler = Callable[[dict[str, Any], Any], Any]


def _app_capture() -> CaptureHandler:
    import app

    handler: CaptureHandler = app.capture
    return handler


@dataclass
class HandlerDelivery:
    """The event to `app.capture` (or `handler`), as EventBridge invokes the Lambda: retried twice on an error."""

    handler: CaptureHandler | None = None

    def __call__(self, event: dict[str, Any]) -> int:
        from userhub_sync.local.event_source import LambdaContext

        handler = self.handler or _app_capture()
        for attempt in range(1, LAMBDA_ASYNC_ATTEMPTS + 1):
            try:
                handler(event, LambdaContext("capture", 60))
                return 1
            except Exception:  # broad as EventBridge is: any handler error is retried, the last one raised
                if attempt == LAMBDA_ASYNC_ATTEMPTS:
                    raise
        return 0  # pragma: no cover (the loop returns or raises)


@dataclass
class EventBridgeDelivery:
    """The event through moto's EventBridge: the capture rule (the deployed pattern) with an SQS target in place of
    the Lambda, and each event the rule lets through from that queue to `app.capture`."""

    events: Any  # boto3 EventBridge client
    sqs: Any  # boto3 SQS client
    rule_name: str
    handler: CaptureHandler | None = None
    queue_url: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.queue_url = self.sqs.create_queue(QueueName=f"{self.rule_name}-target")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self.events.put_rule(Name=self.rule_name, EventPattern=json.dumps(EVENT_PATTERN), State="ENABLED")
        self.events.put_targets(Rule=self.rule_name, Targets=[{"Id": "capture", "Arn": arn["QueueArn"]}])

    def __call__(self, event: dict[str, Any]) -> int:
        entry = {
            "Source": event["source"],
            "DetailType": event["detail-type"],
            "Detail": json.dumps(event["detail"]),
            "Resources": event["resources"],
            "Time": datetime.fromisoformat(event["time"].replace("Z", "+00:00")),
        }
        answer = self.events.put_events(Entries=[entry])
        if answer.get("FailedEntryCount"):
            raise RuntimeError(f"EventBridge refused the event: {answer['Entries']}")
        delivered = 0
        while True:  # moto delivers to the target during put_events: what matched is in the queue now
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return delivered
            for message in messages:
                delivered += HandlerDelivery(self.handler)(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass(frozen=True)
class EmittedEvent:
    """One user-changing call and the event emitted for it."""

    operation: str
    username: str | None  # as the caller passed it; the event itself hides it
    sub: str | None
    called_at: float  # time.time() as the call started: the clock the fake UserHub stamps events with
    event: dict[str, Any]
    failed: bool  # the failed-call record (only with emit_failed)
    delivered: int  # times it reached capture (0: filtered out by the rule, or delivery failed)
    error: str | None = None  # why delivery failed


class CloudTrailEmulator:
    """Hooks `cognito` (a boto3 cognito-idp client): its user-changing calls emit the event AWS would deliver."""

    def __init__(
        self,
        cognito: Any,
        delivery: Delivery | None = None,
        *,
        account: str = MOTO_ACCOUNT,
        emit_failed: bool = False,
        pool_id: str | None = None,
    ) -> None:
        self.cognito = cognito
        self.delivery: Delivery = delivery or HandlerDelivery()
        self.account = account
        self.emit_failed = emit_failed
        self.pool_id = pool_id  # for calls that name no pool (ConfirmForgotPassword): where to read the sub
        self.region = cognito.meta.region_name or DEFAULT_REGION
        self._emitted: list[EmittedEvent] = []
        self._lock = threading.Lock()
        events = cognito.meta.events
        for operation in CAPTURED_OPERATIONS:
            events.register(f"provide-client-params.{SERVICE}.{operation}", self._before, unique_id=f"ct-{operation}")
            events.register(f"after-call.{SERVICE}.{operation}", self._after, unique_id=f"ct-after-{operation}")

    def emitted(self) -> list[EmittedEvent]:
        with self._lock:
            return list(self._emitted)

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        """Runs before the call: remembers what was asked, when, and whose sub it is while the user still exists."""
        try:
            sub = self._sub(dict(params))
        except Exception:  # broad: as in _after, a bug in the emulator must not fail the admin's Cognito call
            log.exception("CloudTrail emulation could not read the sub before %s", model.name)
            sub = None
        context[_CALL] = {"params": dict(params), "at": time.time(), "sub": sub}

    def _after(self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        call = context.get(_CALL)
        if call is None:
            return
        try:
            failed = http_response.status_code >= 300
            if failed and not self.emit_failed:
                return
            params: dict[str, Any] = call["params"]
            sub = call["sub"] or (None if failed else self._sub(params, parsed))
            event = self.event(model.name, params, sub, parsed.get("ResponseMetadata", {}).get("RequestId"))
            if failed:
                error = parsed.get("Error", {})
                event["detail"] |= {"errorCode": error.get("Code", "Unknown"), "errorMessage": error.get("Message", "")}
            delivered, reason = 0, None
            try:
                delivered = self.delivery(event)
            except Exception as error:  # broad: EventBridge is async; the caller's call never fails by it
                reason = f"{type(error).__name__}: {error}"
                log.error("emulated capture event not delivered: %s", reason)
            username = _text(params.get("Username"))
            with self._lock:
                self._emitted.append(
                    EmittedEvent(model.name, username, sub, call["at"], event, failed, delivered, reason)
                )
        except Exception:  # broad: even a bug here must not turn into a failed Cognito call (it is logged)
            log.exception("CloudTrail emulation failed for %s", model.name)

    def event(
        self, operation: str, params: dict[str, Any], sub: str | None, request_id: str | None = None
    ) -> dict[str, Any]:
        """The EventBridge envelope of the CloudTrail record of this call."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        by_token = "AccessToken" in params
        identity: dict[str, Any] = (
            {"type": "Unknown", "principalId": "Anonymous"}
            if by_token
            else {"type": "IAMUser", "accountId": self.account, "arn": f"arn:aws:iam::{self.account}:user/local"}
        )
        detail = {
            "eventVersion": "1.08",
            "userIdentity": identity,
            "eventTime": now,
            "eventSource": "cognito-idp.amazonaws.com",
            "eventName": operation,
            "awsRegion": self.region,
            "sourceIPAddress": "127.0.0.1",
            "userAgent": "userhub-sync local CloudTrail emulation",
            "requestParameters": {
                _camel(k): v if _camel(k) in VISIBLE_PARAMETERS else HIDDEN for k, v in params.items()
            },
            "responseElements": None,
            "additionalEventData": {"sub": sub} if sub else {},
            "requestID": request_id or str(uuid.uuid4()),
            "eventID": str(uuid.uuid4()),
            "readOnly": False,
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": self.account,
            "eventCategory": "Management",
        }
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.cognito-idp",
            "account": self.account,
            "time": now,
            "region": self.region,
            "resources": [],
            "detail": detail,
        }

    def _sub(self, params: dict[str, Any], parsed: dict[str, Any] | None = None) -> str | None:
        """The user's sub, read from Cognito (moto); None when there is no such user (yet)."""
        try:
            if parsed and isinstance(parsed.get("User"), dict):  # AdminCreateUser answers with the user
                return _sub_of(parsed["User"].get("Attributes", []))
            if "AccessToken" in params:
                return _sub_of(self.cognito.get_user(AccessToken=params["AccessToken"])["UserAttributes"])
            pool = params.get("UserPoolId") or self.pool_id
            username = _text(params.get("Username")) or _linked_username(params)
            if pool and username:
                return _sub_of(self.cognito.admin_get_user(UserPoolId=pool, Username=username)["UserAttributes"])
        except aws_errors():  # no such user (yet), a bad token: AWS would still record the call, without a sub
            return None
        return None


def _sub_of(attributes: list[dict[str, str]]) -> str | None:
    return next((a["Value"] for a in attributes if a.get("Name") == "sub"), None)


def _linked_username(params: dict[str, Any]) -> str | None:
    """AdminLinkProviderForUser names the Cognito user as its destination."""
    user = params.get("DestinationUser")
    if isinstance(user, dict) and user.get("ProviderName") == "Cognito":
        return _text(user.get("ProviderAttributeValue"))
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]
