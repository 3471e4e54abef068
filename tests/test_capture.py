"""Real-time capture on the shapes CloudTrail records for Cognito, from the rule to UserHub.

The envelopes are built as AWS documents them (EventBridge's event structure; CloudTrail's record fields; Cognito's
"records UserSub but not UserName"); no real capture of every Admin* call exists publicly, so each shape says which
variant it stands for. moto's Cognito emits no CloudTrail events, and moto's EventBridge cannot invoke a Lambda: the
pattern is checked through a moto rule with an SQS target, the handler is called as Lambda would call it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import app
from chalicelib import capture
from chalicelib.capture import Skip, read_change
from chalicelib.capture_rule import EVENT_PATTERN
from chalicelib.delivery import Deliverer
from chalicelib.messages import CaptureMessage, parse_message
from chalicelib.settings import get_settings, reset_settings
from chalicelib.sub_index import write_index
from tests.support import CONNECTION_ID, message_body, receive_all, receive_event
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.moto import patched_environ

HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"
ACCOUNT = "123456789012"


def envelope(detail: dict[str, Any], *, detail_type: str = "AWS API Call via CloudTrail") -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.cognito-idp",
        "account": ACCOUNT,
        "time": "2026-11-29T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def record(
    operation: str,
    *,
    pool: str | None = None,
    sub: str | None = None,
    username: Any = HIDDEN,
    request: Any = None,
    extra: Any = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A CloudTrail record of a Cognito API call, with what identifies the user where AWS puts it."""
    if request is None:
        request = {"userPoolId": pool, "username": username} if pool else {"accessToken": HIDDEN}
    if extra is None:
        extra = {"sub": sub} if sub else {}
    detail: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "accountId": ACCOUNT} if pool else {"type": "Unknown"},
        "eventTime": "2026-11-29T12:00:00Z",
        "eventSource": "cognito-idp.amazonaws.com",
        "eventName": operation,
        "awsRegion": "us-east-1",
        "requestParameters": request,
        "responseElements": None,
        "additionalEventData": extra,
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
    }
    if error:
        detail |= {"errorCode": error, "errorMessage": "denied"}
    return envelope(detail)


POOL = "us-east-1_Capture1"
SUB = "87a42a58-6051-7076-9c1b-0123456789ab"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (record("AdminUpdateUserAttributes", pool=POOL, sub=SUB), {"sub": SUB, "hint": None, "pool": POOL}),
        (record("AdminDisableUser", pool=POOL, sub=SUB, username="alice"), {"sub": SUB, "hint": "alice", "pool": POOL}),
        (record("AdminDeleteUser", pool=POOL, username="alice"), {"sub": None, "hint": "alice", "pool": POOL}),
        (record("UpdateUserAttributes", sub=SUB), {"sub": SUB, "hint": None, "pool": None}),  # own token: no pool
        (
            record("DeleteUser", sub=SUB, extra={"sub": SUB, "userPoolId": POOL}),  # pool only in additionalEventData
            {"sub": SUB, "hint": None, "pool": POOL},
        ),
        (
            record("AdminAddUserToGroup", pool=POOL, sub=SUB, username=[HIDDEN]),
            {"sub": SUB, "hint": None, "pool": POOL},
        ),
        (
            record("AdminUpdateUserAttributes", pool=POOL, sub=SUB, username="HIDDEN_FOR_SECURITY_REASONS"),
            {"sub": SUB, "hint": None, "pool": POOL},  # the other spelling AWS documents
        ),
    ],
    ids=["admin-hidden", "admin-clear", "admin-no-sub", "self-service", "self-service-pool", "list-hidden", "for"],
)
def test_what_names_the_user_is_kept_and_nothing_else(event: dict[str, Any], expected: dict[str, Any]) -> None:
    message = read_change(event, POOL)
    assert isinstance(message, CaptureMessage)
    assert (message.sub, message.username_hint, message.user_pool_id) == (
        expected["sub"],
        expected["hint"],
        expected["pool"],
    )
    assert message.event_id == event["detail"]["eventID"] and message.event_name == event["detail"]["eventName"]


@pytest.mark.parametrize(
    ("event", "skip"),
    [
        (record("AdminDeleteUser", pool=POOL, sub=SUB, error="AccessDeniedException"), Skip.FAILED_CALL),
        (record("AdminDeleteUser", pool=POOL, request=None, error="AccessDeniedException"), Skip.FAILED_CALL),
        (record("AdminDeleteUser", pool="us-east-1_Another9", sub=SUB), Skip.OTHER_POOL),
        (record("AdminUpdateUserAttributes", pool=POOL, request=HIDDEN, extra=HIDDEN), Skip.NO_USER),
        (record("UpdateUserAttributes", extra={"sub": 'x" or sub = "y'}), Skip.NO_USER),  # never into a filter
        (record("ChangePassword", sub=SUB), Skip.NOT_A_CHANGE),
        (record("ListUsers", pool=POOL), Skip.NOT_A_CHANGE),
        (
            envelope(
                {
                    "eventSource": "cognito-idp.amazonaws.com",
                    "eventName": "Confirm_POST",
                    "eventType": "AwsServiceEvent",
                    "additionalEventData": {"requestParameters": {"sub": [SUB]}},
                },
                detail_type="AWS Service Event via CloudTrail",
            ),
            Skip.NOT_A_CHANGE,  # hosted-UI records: the triggers and the nightly run cover them
        ),
        ({"source": "aws.cognito-idp", "detail": "garbage"}, Skip.NOT_A_CHANGE),
        ("not even a dict", Skip.NOT_A_CHANGE),
    ],
    ids=[
        "failed",
        "failed-null",
        "other-pool",
        "hidden-strings",
        "injection",
        "password",
        "read",
        "hosted-ui",
        "junk",
        "str",
    ],
)
def test_what_is_not_a_change_of_ours_is_skipped_with_the_reason(event: Any, skip: Skip) -> None:
    assert read_change(event, POOL) is skip


def test_the_handler_enqueues_one_message_per_change_and_counts_what_it_skips(aws) -> None:
    with patched_environ({"USER_POOL_ID": POOL}):
        event = record("AdminUpdateUserAttributes", pool=POOL, sub=SUB)
        assert capture.handle_capture_event(event, None)["captured"] is True
        assert capture.handle_capture_event(record("AdminDeleteUser", pool="us-east-1_Another9", sub=SUB), None) == {
            "captured": False,
            "skip": "other_pool",
        }
    [queued] = receive_all(aws.sqs, aws.queues.events_url)
    message = parse_message(queued["Body"])
    assert isinstance(message, CaptureMessage)
    assert (message.event_id, message.sub, message.connection_id) == (event["detail"]["eventID"], SUB, CONNECTION_ID)
    assert capture.metrics.totals["capture_skipped_other_pool"] >= 1


def test_a_refused_send_raises_so_lambda_retries(aws) -> None:
    class Refusing:
        def get_queue_url(self, **_: Any) -> dict[str, str]:
            return {"QueueUrl": "http://127.0.0.1:9/none"}

        def send_message(self, **_: Any) -> dict[str, str]:
            raise ConnectionError("SQS unreachable")  # stands in for an SQS outage, which moto cannot stage

    before = capture.metrics.totals["capture_enqueue_failed"]
    with patched_environ({"USER_POOL_ID": POOL}), pytest.raises(ConnectionError):
        capture.handle_capture_event(record("AdminDisableUser", pool=POOL, sub=SUB), None, sqs=Refusing())
    assert capture.metrics.totals["capture_enqueue_failed"] == before + 1


def test_the_rule_lets_in_exactly_the_changes_it_names(aws) -> None:
    """moto's EventBridge matches patterns (including `exists: false`); its targets can be SQS, not Lambda."""
    events, sqs = boto3.client("events"), aws.sqs
    url = sqs.create_queue(QueueName="capture-rule")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="capture", EventPattern=json.dumps(EVENT_PATTERN))
    events.put_targets(Rule="capture", Targets=[{"Id": "1", "Arn": arn}])
    samples = {
        "admin": record("AdminUpdateUserAttributes", pool=POOL, sub=SUB),
        "self": record("DeleteUser", sub=SUB),
        "failed": record("AdminDeleteUser", pool=POOL, sub=SUB, error="AccessDeniedException"),
        "password": record("ChangePassword", sub=SUB),
        "signin": record("InitiateAuth", sub=SUB),
    }
    for sample in samples.values():
        events.put_events(
            Entries=[
                {
                    "Source": sample["source"],
                    "DetailType": sample["detail-type"],
                    "Detail": json.dumps(sample["detail"]),
                }
            ]
        )
    arrived = {json.loads(m["Body"])["detail"]["eventName"] for m in receive_all(sqs, url)}
    assert arrived == {"AdminUpdateUserAttributes", "DeleteUser"}


# ------------------------------------------------------------------------- resolution in the worker


@pytest.fixture
def pool(pipeline) -> Iterator[dict[str, Any]]:
    cognito = boto3.client("cognito-idp")
    pool_id = cognito.create_user_pool(PoolName="capture", AliasAttributes=["email"])["UserPool"]["Id"]
    subs = {}
    for name in ("alice", "bob"):
        cognito.admin_create_user(
            UserPoolId=pool_id, Username=name, UserAttributes=[{"Name": "email", "Value": f"{name}@example.com"}]
        )
        attributes = cognito.admin_get_user(UserPoolId=pool_id, Username=name)["UserAttributes"]
        subs[name] = next(a["Value"] for a in attributes if a["Name"] == "sub")
    with patched_environ({"USER_POOL_ID": pool_id}):
        reset_settings()
        yield {"id": pool_id, "subs": subs, "cognito": cognito}
    reset_settings()


def deliver_captured(pipeline, *events: dict[str, Any], extra_bodies: tuple[str, ...] = ()) -> dict[str, Any]:
    for event in events:
        capture.handle_capture_event(event, None)
    for body in extra_bodies:
        pipeline.sqs.send_message(QueueUrl=pipeline.queues.events_url, MessageBody=body)
    batch = receive_event(pipeline.sqs, pipeline.queues.events_url, len(events) + len(extra_bodies))
    return app.deliver(batch, LambdaContext("deliver", 60))


def test_an_admin_change_with_the_username_hidden_reaches_userhub_by_sub(pipeline, hub, pool) -> None:
    event = record("AdminUpdateUserAttributes", pool=pool["id"], sub=pool["subs"]["alice"])
    assert deliver_captured(pipeline, event) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("alice", "CHANGED")]


def test_a_username_hint_is_only_a_hint(pipeline, hub, pool) -> None:
    """An alias (here the e-mail) is not the username: AWS's AdminGetUser resolves aliases, moto's does not, and
    then the sub still names the user. A canonical hint needs no ListUsers at all."""
    alias = record("AdminDisableUser", pool=pool["id"], sub=pool["subs"]["alice"], username="alice@example.com")
    canonical = record("AdminEnableUser", pool=pool["id"], username="bob")
    assert deliver_captured(pipeline, alias, canonical) == {"batchItemFailures": []}
    assert sorted(e.external_id for e in hub.events()) == ["alice", "bob"]


def test_a_self_service_change_without_a_pool_is_resolved_in_the_served_pool(pipeline, hub, pool) -> None:
    assert deliver_captured(pipeline, record("UpdateUserAttributes", sub=pool["subs"]["bob"])) == {
        "batchItemFailures": []
    }
    assert [e.external_id for e in hub.events()] == ["bob"]


def test_repeats_of_one_change_and_the_same_users_other_messages_make_one_call(pipeline, hub, pool) -> None:
    event = record("AdminUpdateUserAttributes", pool=pool["id"], sub=pool["subs"]["alice"])
    reconciled = message_body("alice", "CHANGED", user_pool_id=pool["id"], source="reconcile")
    assert deliver_captured(pipeline, event, event, extra_bodies=(reconciled,)) == {"batchItemFailures": []}
    assert [e.external_id for e in hub.events()] == ["alice"]


def test_a_deleted_user_is_found_in_reconciles_map(pipeline, hub, pool) -> None:
    sub = pool["subs"]["bob"]
    pool["cognito"].admin_delete_user(UserPoolId=pool["id"], Username="bob")
    write_index(boto3.client("s3"), _bucket(), pool["id"], [(sub, "bob")])
    assert deliver_captured(pipeline, record("AdminDeleteUser", pool=pool["id"], sub=sub)) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("bob", "CHANGED")]


def test_an_unresolvable_sub_and_another_pool_are_dropped_and_counted(pipeline, hub, pool) -> None:
    _bucket()  # reconcile's map does not know the sub either
    unknown = record("AdminDeleteUser", pool=pool["id"], sub=str(uuid.uuid4()))
    foreign = CaptureMessage(user_pool_id="us-east-1_Another9", event_id="e-1", event_name="AdminDeleteUser", sub=SUB)
    assert deliver_captured(pipeline, unknown, extra_bodies=(foreign.to_body(),)) == {"batchItemFailures": []}
    assert hub.events() == [] and receive_all(pipeline.sqs, pipeline.queues.dlq_url) == []
    from chalicelib.delivery import get_deliverer

    totals = get_deliverer().metrics.totals
    assert totals["capture_dropped_unresolved"] >= 1 and totals["capture_dropped_other_pool"] >= 1


def test_in_a_pool_that_signs_in_by_email_the_sub_is_the_username(pipeline, hub) -> None:
    cognito = boto3.client("cognito-idp")
    pool_id = cognito.create_user_pool(PoolName="by-email", UsernameAttributes=["email"])["UserPool"]["Id"]
    username = cognito.admin_create_user(UserPoolId=pool_id, Username="carol@example.com")["User"]["Username"]
    with patched_environ({"USER_POOL_ID": pool_id}):
        reset_settings()
        calls: list[str] = []
        deliverer = Deliverer(get_settings(), sqs=pipeline.sqs)
        deliverer._cognito_client().meta.events.register(
            "before-call.cognito-identity-provider.ListUsers", lambda **_: calls.append("ListUsers")
        )
        capture.handle_capture_event(record("AdminUpdateUserAttributes", pool=pool_id, sub=username), None)
        result = deliverer.handle(receive_event(pipeline.sqs, pipeline.queues.events_url, 1), lambda: 60_000)
    reset_settings()
    assert result == {"batchItemFailures": []} and calls == []
    assert [e.external_id for e in hub.events()] == [username]


def test_cognito_throttling_retries_the_change_later(pipeline, hub, pool) -> None:
    """moto never throttles, so the throttle is injected on the client (the call itself does not happen)."""
    from botocore.exceptions import ClientError

    def throttle(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "ListUsers")

    deliverer = Deliverer(get_settings(), sqs=pipeline.sqs)
    deliverer._cognito_client().meta.events.register("before-call.cognito-identity-provider.ListUsers", throttle)
    capture.handle_capture_event(record("AdminUpdateUserAttributes", pool=pool["id"], sub=pool["subs"]["alice"]), None)
    result = deliverer.handle(receive_event(pipeline.sqs, pipeline.queues.events_url, 1), lambda: 60_000)
    assert len(result["batchItemFailures"]) == 1 and hub.events() == []


def _bucket() -> str:
    s3 = boto3.client("s3")
    name = get_settings().snapshot_bucket or "test-snapshots"
    if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=name)
    return name


def test_a_user_deleted_after_a_nightly_run_is_named_by_the_map_that_run_wrote(pipeline, hub, pool) -> None:
    from chalicelib import reconcile

    _bucket()
    reconcile.reset_clients()
    try:
        summary = app.reconcile({}, LambdaContext("userhub-sync-test-reconcile", 900))
    finally:
        reconcile.reset_clients()
    assert summary["status"] == "complete"
    receive_all(pipeline.sqs, pipeline.queues.events_url, visibility=900)  # the run's own CHANGED messages, set aside
    pool["cognito"].admin_delete_user(UserPoolId=pool["id"], Username="alice")
    event = record("AdminDeleteUser", pool=pool["id"], sub=pool["subs"]["alice"])
    assert deliver_captured(pipeline, event) == {"batchItemFailures": []}
    assert [(e.external_id, e.type) for e in hub.events()] == [("alice", "CHANGED")]


def test_a_captured_change_replayed_from_the_dlq_is_resolved_again(pipeline) -> None:
    from userhub_sync.ops.dlq import replay_body
    from userhub_sync.ops.dlq_scan import DlqMessage

    body = CaptureMessage(user_pool_id=POOL, event_id="e-9", event_name="AdminDisableUser", sub=SUB).to_body()
    raw = {"MessageId": "m", "ReceiptHandle": "r", "Body": body, "MessageAttributes": {}, "Attributes": {}}
    message = DlqMessage.from_sqs(raw)
    assert message.kind == "redriven" and message.username is None
    assert isinstance(parse_message(replay_body(message)), CaptureMessage)


def test_the_sub_maps_shards_are_built_in_bounded_memory() -> None:
    """256 gzip compressors at zlib's default window hold 68 MB whatever the pool's size; reconcile runs in a Lambda."""
    import tracemalloc

    from chalicelib import sub_index

    tracemalloc.start()
    try:
        shards = sub_index.encode_shards((f"{n:08x}-sub", f"user{n}@example.com") for n in range(2000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(shards) == sub_index.SHARDS
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.0f} MB to build the map's shards"
