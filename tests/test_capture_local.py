"""Capture on this machine: the CloudTrail emulator's events, through moto's EventBridge and the real handlers.

Everything is real but CloudTrail itself, which neither moto nor this machine has: the Cognito calls go to moto's
Cognito over HTTP, the events through moto's EventBridge (the deployed pattern, an SQS target in place of the Lambda,
which moto's EventBridge cannot invoke) or straight to `app.capture`, then `app.deliver` over the events queue to the
fake UserHub over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import app
from chalicelib.settings import get_settings, reset_settings
from tests.support import create_users, receive_all, receive_event
from userhub_sync.local.cloudtrail import HIDDEN, CloudTrailEmulator, EventBridgeDelivery, HandlerDelivery
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.moto import patched_environ


@pytest.fixture
def pool(pipeline) -> Iterator[dict[str, Any]]:
    """A moto pool with alice and bob, served by the test stage (USER_POOL_ID), and its snapshot bucket."""
    cognito = boto3.client("cognito-idp")
    pool_id = cognito.create_user_pool(PoolName="capture-local")["UserPool"]["Id"]
    subs = create_users(cognito, pool_id, ("alice", "bob"))
    with patched_environ({"USER_POOL_ID": pool_id}):
        reset_settings()
        boto3.client("s3").create_bucket(Bucket=get_settings().snapshot_bucket or "")
        yield {"id": pool_id, "subs": subs}
    reset_settings()


def eventbridge(handler: Any = None) -> EventBridgeDelivery:
    return EventBridgeDelivery(boto3.client("events"), boto3.client("sqs"), "test-capture", handler=handler)


def deliver_queued(pipeline, expected: int) -> dict[str, Any]:
    batch = receive_event(pipeline.sqs, pipeline.queues.events_url, expected)
    return app.deliver(batch, LambdaContext("deliver", 60))


def test_emulated_events_pass_the_rule_and_failed_calls_do_not(pool) -> None:
    """(a) The deployed pattern, matched by moto's EventBridge, lets the emulated records in; the failed-call record
    (`errorCode`: `exists: false`) is filtered out. What reaches the target is shaped as AWS documents it."""
    reached: list[dict[str, Any]] = []
    cognito = boto3.client("cognito-idp")
    emulator = CloudTrailEmulator(cognito, eventbridge(lambda event, _ctx: reached.append(event)), emit_failed=True)
    pool_id, alice = pool["id"], pool["subs"]["alice"]
    cognito.admin_update_user_attributes(
        UserPoolId=pool_id, Username="alice", UserAttributes=[{"Name": "name", "Value": "Alice"}]
    )
    cognito.admin_disable_user(UserPoolId=pool_id, Username="bob")
    cognito.admin_get_user(UserPoolId=pool_id, Username="alice")  # a read: CloudTrail records it, nothing emitted
    with pytest.raises(cognito.exceptions.UserNotFoundException):
        cognito.admin_delete_user(UserPoolId=pool_id, Username="nobody")
    cognito.admin_delete_user(UserPoolId=pool_id, Username="alice")

    emitted = emulator.emitted()
    assert [(e.operation, e.failed, e.delivered) for e in emitted] == [
        ("AdminUpdateUserAttributes", False, 1),
        ("AdminDisableUser", False, 1),
        ("AdminDeleteUser", True, 0),
        ("AdminDeleteUser", False, 1),
    ]
    names = [e["detail"]["eventName"] for e in reached]
    assert names == ["AdminUpdateUserAttributes", "AdminDisableUser", "AdminDeleteUser"]
    first = reached[0]
    assert (first["source"], first["detail-type"]) == ("aws.cognito-idp", "AWS API Call via CloudTrail")
    detail = first["detail"]
    assert detail["requestParameters"] == {"userPoolId": pool_id, "username": HIDDEN, "userAttributes": HIDDEN}
    assert detail["additionalEventData"] == {"sub": alice}
    assert (detail["eventSource"], detail["eventType"]) == ("cognito-idp.amazonaws.com", "AwsApiCall")
    assert reached[2]["detail"]["additionalEventData"] == {"sub": alice}  # read before the delete
    assert len({e["detail"]["eventID"] for e in reached}) == 3


@pytest.mark.parametrize("route", ["handler", "eventbridge"])
def test_an_admin_attribute_change_reaches_userhub_as_changed(pipeline, hub, pool, route: str) -> None:
    """(b) Username hidden, sub from moto: capture enqueues it, deliver resolves the sub to alice."""
    cognito = boto3.client("cognito-idp")
    CloudTrailEmulator(cognito, HandlerDelivery() if route == "handler" else eventbridge())
    cognito.admin_update_user_attributes(
        UserPoolId=pool["id"], Username="alice", UserAttributes=[{"Name": "name", "Value": "Alice"}]
    )
    assert deliver_queued(pipeline, 1) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("alice", "CHANGED")]


def test_a_disable_reaches_userhub_for_the_right_user(pipeline, hub, pool) -> None:
    cognito = boto3.client("cognito-idp")
    CloudTrailEmulator(cognito)
    cognito.admin_disable_user(UserPoolId=pool["id"], Username="bob")
    assert deliver_queued(pipeline, 1) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("bob", "CHANGED")]


def test_a_delete_after_a_reconcile_run_resolves_through_the_sub_map(pipeline, hub, pool) -> None:
    from chalicelib import reconcile

    reconcile.reset_clients()
    try:
        assert app.reconcile({}, LambdaContext("userhub-sync-test-reconcile", 900))["status"] == "complete"
    finally:
        reconcile.reset_clients()
    receive_all(pipeline.sqs, pipeline.queues.events_url, visibility=900)  # the run's own messages, set aside
    cognito = boto3.client("cognito-idp")
    emulator = CloudTrailEmulator(cognito)
    cognito.admin_delete_user(UserPoolId=pool["id"], Username="bob")
    [emitted] = emulator.emitted()
    assert emitted.sub == pool["subs"]["bob"] and emitted.event["detail"]["requestParameters"]["username"] == HIDDEN
    assert deliver_queued(pipeline, 1) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("bob", "CHANGED")]


@pytest.mark.parametrize("emit_failed", [False, True], ids=["nothing-emitted", "failed-record-skipped"])
def test_a_failed_call_captures_no_change(pipeline, hub, pool, emit_failed: bool) -> None:
    cognito = boto3.client("cognito-idp")
    emulator = CloudTrailEmulator(cognito, emit_failed=emit_failed)
    with pytest.raises(cognito.exceptions.UserNotFoundException):
        cognito.admin_disable_user(UserPoolId=pool["id"], Username="nobody")
    assert [e.failed for e in emulator.emitted()] == ([True] if emit_failed else [])
    assert receive_all(pipeline.sqs, pipeline.queues.events_url) == []
    assert hub.events() == []


def test_a_delivery_that_fails_never_fails_the_cognito_call(pool) -> None:
    """EventBridge delivers asynchronously: the admin's call succeeds whatever happens to the event."""
    attempts: list[str] = []

    def broken(event: dict[str, Any], _ctx: Any) -> None:
        attempts.append(event["detail"]["eventID"])
        raise ConnectionError("SQS unreachable")  # stands in for a capture Lambda that fails

    cognito = boto3.client("cognito-idp")
    emulator = CloudTrailEmulator(cognito, HandlerDelivery(broken))
    cognito.admin_enable_user(UserPoolId=pool["id"], Username="bob")
    [emitted] = emulator.emitted()
    assert emitted.delivered == 0 and emitted.error == "ConnectionError: SQS unreachable"
    assert len(attempts) == 3 and len(set(attempts)) == 1  # Lambda's two retries of an asynchronous invocation


def test_a_bug_in_the_emulator_before_the_call_never_fails_the_cognito_call(pool, monkeypatch) -> None:
    """The sub is read in a botocore hook that runs before the admin's call: a bug there is logged, and the call and
    its record still happen (without a sub). The bug is planted; nothing else makes the emulator's own code fail."""
    cognito = boto3.client("cognito-idp")
    emulator = CloudTrailEmulator(cognito)
    calls = iter([TypeError("a bug"), None])

    def buggy_then_fine(params: dict[str, Any], parsed: Any = None) -> str | None:
        error = next(calls, None)
        if error:
            raise error
        return None

    monkeypatch.setattr(emulator, "_sub", buggy_then_fine)
    cognito.admin_enable_user(UserPoolId=pool["id"], Username="bob")  # raised TypeError before the guard
    [emitted] = emulator.emitted()
    assert emitted.operation == "AdminEnableUser" and not emitted.failed


def test_a_users_own_change_names_no_pool_and_reaches_userhub(pipeline, hub, pool) -> None:
    """A call made with the user's access token: CloudTrail records no pool, the sub still names the user."""
    cognito = boto3.client("cognito-idp")
    client_id = cognito.create_user_pool_client(
        UserPoolId=pool["id"], ClientName="app", ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH"]
    )["UserPoolClient"]["ClientId"]
    cognito.admin_set_user_password(UserPoolId=pool["id"], Username="bob", Password="Passw0rd!long", Permanent=True)
    token = cognito.admin_initiate_auth(
        UserPoolId=pool["id"],
        ClientId=client_id,
        AuthFlow="ADMIN_USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "bob", "PASSWORD": "Passw0rd!long"},
    )["AuthenticationResult"]["AccessToken"]
    emulator = CloudTrailEmulator(cognito)
    cognito.update_user_attributes(AccessToken=token, UserAttributes=[{"Name": "name", "Value": "Bob"}])
    [emitted] = emulator.emitted()
    detail = emitted.event["detail"]
    assert detail["requestParameters"] == {"accessToken": HIDDEN, "userAttributes": HIDDEN}
    assert detail["additionalEventData"] == {"sub": pool["subs"]["bob"]}
    assert deliver_queued(pipeline, 1) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("bob", "CHANGED")]
