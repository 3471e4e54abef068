"""The demo's capture part: an admin changes users in moto's Cognito, and each change must reach UserHub as CHANGED.

The admin's calls go through a cognito-idp client hooked by the CloudTrail emulator (`local/cloudtrail.py`), which
hands each event to `app.capture` (or through moto's EventBridge rule); the real `deliver`, fed by the local event
source, resolves the user and calls the fake UserHub. One change at a time, so each is timed on its own: from the
moment the admin's call started to the moment UserHub accepted a CHANGED for that user (the fake's clock is
`time.time()`, the same one). A change with no such CHANGED within `timeout` is lost.

Invariant: the users are created with a plain client, as users who existed before capture was deployed, so only the
changes below are captured; the delete comes after a reconcile run, whose sub→username map is all that still knows
whose sub it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from userhub_sync.local.cloudtrail import CloudTrailEmulator, Delivery, EventBridgeDelivery, HandlerDelivery
from userhub_sync.local.fake_userhub import EventType, FakeUserHub

if TYPE_CHECKING:
    from types_boto3_cognito_idp.type_defs import AttributeTypeTypeDef

USERS = ("ana", "ben", "carla", "dev", "eli")
# Between two changes, as an admin makes them: longer than deliver's pace for ListUsers (CAPTURE_LIST_USERS_RATE,
# 2/s), so each change is timed through the pipeline rather than waiting for the previous one's token.
PAUSE_SECONDS = 0.6


class CaptureRoute(StrEnum):
    """How the emulated events reach `app.capture`."""

    HANDLER = "handler"  # straight, as EventBridge invokes the Lambda
    EVENTBRIDGE = "eventbridge"  # through moto's EventBridge: the deployed pattern, an SQS target, then the handler


def create_pool(name: str) -> str:
    """A pool on moto with USERS in it, made without the emulator (they predate capture); its id."""
    import boto3

    cognito = boto3.client("cognito-idp")
    pool_id = cognito.create_user_pool(PoolName=name)["UserPool"]["Id"]
    for user in USERS:
        attributes: list[AttributeTypeTypeDef] = [{"Name": "email", "Value": f"{user}@example.com"}]
        cognito.admin_create_user(
            UserPoolId=pool_id, Username=user, UserAttributes=attributes, MessageAction="SUPPRESS"
        )
    return pool_id


@dataclass(frozen=True)
class CapturedChange:
    operation: str
    user: str
    called_at: float  # the admin's call started (time.time())
    accepted_at: float | None  # UserHub accepted a CHANGED for the user at or after it; None: lost

    @property
    def seconds(self) -> float | None:
        return None if self.accepted_at is None else self.accepted_at - self.called_at


@dataclass
class CaptureResult:
    changes: list[CapturedChange] = field(default_factory=list)
    failed_calls: int = 0  # admin calls Cognito refused
    emitted_for_failed: int = 0  # events emitted for them (must be 0)
    delivery_errors: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return sum(1 for c in self.changes if c.accepted_at is not None)

    @property
    def lost(self) -> list[str]:
        return [f"{c.operation} of {c.user}" for c in self.changes if c.accepted_at is None]


def delivery_for(route: CaptureRoute, rule_name: str) -> Delivery:
    if route == CaptureRoute.HANDLER:
        return HandlerDelivery()
    import boto3

    return EventBridgeDelivery(boto3.client("events"), boto3.client("sqs"), rule_name)


def make_changes(
    pool_id: str,
    hub: FakeUserHub,
    delivery: Delivery,
    connection_id: str,
    *,
    timeout: float = 30.0,
    pause: float = PAUSE_SECONDS,
) -> CaptureResult:
    """The admin's changes, one at a time, each waited for at UserHub; then one call Cognito refuses."""
    import boto3

    admin = boto3.client("cognito-idp")  # the admin's own client, hooked: what it changes is "recorded"
    emulator = CloudTrailEmulator(admin, delivery)

    def update(user: str) -> Callable[[], Any]:
        name: list[AttributeTypeTypeDef] = [{"Name": "name", "Value": f"{user.title()} (changed by an admin)"}]
        return lambda: admin.admin_update_user_attributes(UserPoolId=pool_id, Username=user, UserAttributes=name)

    plan: list[tuple[str, str, Callable[[], Any]]] = [
        ("AdminUpdateUserAttributes", "ana", update("ana")),
        ("AdminUpdateUserAttributes", "ben", update("ben")),
        ("AdminUpdateUserAttributes", "carla", update("carla")),
        ("AdminDisableUser", "dev", lambda: admin.admin_disable_user(UserPoolId=pool_id, Username="dev")),
        ("AdminDeleteUser", "eli", lambda: admin.admin_delete_user(UserPoolId=pool_id, Username="eli")),
    ]
    result = CaptureResult()
    for number, (operation, user, call) in enumerate(plan):
        if number:
            time.sleep(pause)
        before, started = len(emulator.emitted()), time.time()
        call()
        emitted = emulator.emitted()[before:]
        if not emitted:  # the emulator logged why; the change must still reach UserHub, or it is lost
            result.delivery_errors.append(f"{operation} of {user}: no event emitted")
        elif emitted[0].error:
            result.delivery_errors.append(f"{operation} of {user}: {emitted[0].error}")
        called_at = emitted[0].called_at if emitted else started
        accepted = _wait_for_changed(hub, user, connection_id, called_at, timeout)
        result.changes.append(CapturedChange(operation, user, called_at, accepted))
    before = len(emulator.emitted())
    try:
        update("nobody")()
    except admin.exceptions.UserNotFoundException:
        result.failed_calls += 1
    result.emitted_for_failed = len(emulator.emitted()) - before
    return result


def _wait_for_changed(hub: FakeUserHub, user: str, connection_id: str, since: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        accepted = [
            e.ts
            for e in hub.events()
            if (e.external_id, e.connection_id, e.type) == (user, connection_id, EventType.CHANGED) and e.ts >= since
        ]
        if accepted:
            return min(accepted)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
