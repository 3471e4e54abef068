"""Which user a captured change means, decided by `delivery.resolve.Resolver` step by step: the pool check, the
username hint through AdminGetUser, the sub as username in e-mail pools, ListUsers paced by the shared bucket,
reconcile's map for the deleted, and what each Cognito failure becomes (configuration, congestion, plain transient).

Cognito and S3 are moto over HTTP. Cognito's throttling cannot be produced by moto, so one test uses a stand-in that
raises the ClientError botocore would build for it (said there).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.delivery.calls import NotStarted, Transient
from chalicelib.delivery.resolve import Dropped, DropReason, Resolver
from chalicelib.messages import CaptureMessage, SyncMessage
from chalicelib.sub_index import SubIndex, encode_shards, shard_key, shard_of
from chalicelib.token_bucket import TokenBucket
from tests.support import FakeTime
from userhub_sync.local.moto import MotoServer

BUCKET = "resolve-test-index"
FOREVER = lambda: 60.0  # noqa: E731 - the invocation's time left, plenty


class CountingCognito:
    """The real moto client, with the calls the resolver makes counted by operation."""

    def __init__(self) -> None:
        self.client = boto3.client("cognito-idp")
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.client, name)


@pytest.fixture
def cognito(moto_server: MotoServer) -> Iterator[CountingCognito]:
    moto_server.reset()
    yield CountingCognito()


def make_pool(cognito: CountingCognito, *, by_email: bool = False) -> tuple[str, dict[str, str]]:
    kwargs: dict[str, Any] = {"UsernameAttributes": ["email"]} if by_email else {"AliasAttributes": ["email"]}
    pool = cognito.client.create_user_pool(PoolName="resolve", **kwargs)["UserPool"]["Id"]
    subs = {}
    for name in ("alice", "bob"):
        username = f"{name}@example.com" if by_email else name
        created = cognito.client.admin_create_user(
            UserPoolId=pool, Username=username, UserAttributes=[{"Name": "email", "Value": f"{name}@example.com"}]
        )["User"]
        subs[name] = next(a["Value"] for a in created["Attributes"] if a["Name"] == "sub")
    cognito.calls.clear()
    return pool, subs


def resolver(
    cognito: Any, pool: str | None, *, index: SubIndex | None = None, bucket: TokenBucket | None = None
) -> Resolver:
    return Resolver(lambda: cognito, pool, index or SubIndex(boto3.client, None), bucket or TokenBucket(None))


def change(pool: str | None, *, sub: str | None = None, hint: str | None = None) -> CaptureMessage:
    return CaptureMessage(
        user_pool_id=pool,
        event_id=uuid.uuid4().hex,
        event_name="AdminUpdateUserAttributes",
        sub=sub,
        username_hint=hint,
    )


def test_without_a_pool_setting_every_change_is_a_configuration_error(cognito: CountingCognito) -> None:
    got = resolver(cognito, None).resolve(change("us-east-1_Abc", sub=str(uuid.uuid4())), FOREVER)
    assert got == Transient("USER_POOL_ID: required to resolve captured changes but not set", configuration=True)
    assert cognito.calls == []


def test_another_pool_s_change_is_dropped_without_asking_cognito(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito)
    got = resolver(cognito, pool).resolve(change("us-east-1_Other99", sub=subs["alice"]), FOREVER)
    assert got == Dropped(DropReason.OTHER_POOL) and cognito.calls == []


def test_a_change_naming_no_pool_is_taken_as_the_stage_s(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito)
    got = resolver(cognito, pool).resolve(change(None, sub=subs["bob"]), FOREVER)
    assert isinstance(got, SyncMessage) and (got.username, got.user_pool_id) == ("bob", pool)


def test_a_username_hint_is_made_canonical_by_admin_get_user(cognito: CountingCognito) -> None:
    pool, _ = make_pool(cognito)
    message = change(pool, hint="alice")
    got = resolver(cognito, pool).resolve(message, FOREVER)
    assert isinstance(got, SyncMessage)
    assert (got.id, got.username, got.user_pool_id, got.type.value) == (message.id, "alice", pool, "CHANGED")
    assert cognito.calls == ["admin_get_user"]


def test_an_unknown_hint_falls_back_to_the_sub(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito)
    got = resolver(cognito, pool).resolve(change(pool, sub=subs["bob"], hint="nobody-by-that-name"), FOREVER)
    assert isinstance(got, SyncMessage) and got.username == "bob"
    assert cognito.calls == ["admin_get_user", "describe_user_pool", "list_users"]


def test_an_unknown_hint_and_no_sub_is_unresolved(cognito: CountingCognito) -> None:
    pool, _ = make_pool(cognito)
    assert resolver(cognito, pool).resolve(change(pool, hint="nobody"), FOREVER) == Dropped(DropReason.UNRESOLVED)


def test_a_hint_in_a_pool_cognito_does_not_know_is_a_configuration_error(cognito: CountingCognito) -> None:
    missing = "us-east-1_NoSuchPool"
    got = resolver(cognito, missing).resolve(change(missing, hint="alice"), FOREVER)
    assert isinstance(got, Transient) and got.configuration is True and got.congestion is False
    assert got.detail == "Cognito AdminGetUser: ResourceNotFoundException"


def test_in_an_email_pool_the_sub_is_the_username_and_the_pool_is_described_once(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito, by_email=True)
    fake = FakeTime()
    paced = resolver(cognito, pool, bucket=TokenBucket(1.0, clock=fake.clock, sleep=fake.sleep))
    first = paced.resolve(change(pool, sub=subs["alice"]), FOREVER)
    second = paced.resolve(change(pool, sub=subs["bob"]), FOREVER)
    assert isinstance(first, SyncMessage) and first.username == subs["alice"]
    assert isinstance(second, SyncMessage) and second.username == subs["bob"]
    assert cognito.calls == ["describe_user_pool"] and fake.slept == []


def test_in_a_username_pool_the_sub_is_looked_up_once_per_change_and_the_pool_described_once(
    cognito: CountingCognito,
) -> None:
    pool, subs = make_pool(cognito)
    found = resolver(cognito, pool)
    assert [found.resolve(change(pool, sub=subs[name]), FOREVER).username for name in ("alice", "bob")] == [
        "alice",
        "bob",
    ]
    assert cognito.calls == ["describe_user_pool", "list_users", "list_users"]


def test_a_deleted_user_is_named_by_reconcile_s_map_and_an_unknown_one_is_unresolved(
    cognito: CountingCognito,
) -> None:
    pool, subs = make_pool(cognito)
    cognito.client.admin_delete_user(UserPoolId=pool, Username="bob")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    sub = subs["bob"]
    s3.put_object(Bucket=BUCKET, Key=shard_key(pool, shard_of(sub)), Body=encode_shards([(sub, "bob")])[shard_of(sub)])
    found = resolver(cognito, pool, index=SubIndex(lambda: s3, BUCKET))
    got = found.resolve(change(pool, sub=sub), FOREVER)
    assert isinstance(got, SyncMessage) and got.username == "bob"
    assert found.resolve(change(pool, sub=str(uuid.uuid4())), FOREVER) == Dropped(DropReason.UNRESOLVED)


def test_without_a_list_users_token_in_time_the_message_is_not_started(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito)
    fake = FakeTime()
    bucket = TokenBucket(0.5, clock=fake.clock, sleep=fake.sleep)
    paced = resolver(cognito, pool, bucket=bucket)
    assert isinstance(paced.resolve(change(pool, sub=subs["alice"]), lambda: 1.9), SyncMessage)
    assert paced.resolve(change(pool, sub=subs["bob"]), lambda: 1.9) == NotStarted()  # the next token is 2 s off
    assert paced.resolve(change(pool, sub=subs["bob"]), lambda: -5.0) == NotStarted()
    assert cognito.calls.count("list_users") == 1 and fake.slept == []
    got = paced.resolve(change(pool, sub=subs["bob"]), lambda: 2.0)  # a token exactly within the time left
    assert isinstance(got, SyncMessage) and got.username == "bob" and fake.slept == [pytest.approx(2.0)]


class ThrottlingCognito:
    """Stand-in: moto never throttles, so this raises the ClientError botocore builds for a throttled ListUsers."""

    def __init__(self, code: str) -> None:
        self.code = code

    def describe_user_pool(self, **_: Any) -> dict[str, Any]:
        return {"UserPool": {}}

    def list_users(self, **_: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": self.code, "Message": "slow down"}}, "ListUsers")


@pytest.mark.parametrize("code", ["TooManyRequestsException", "ThrottlingException", "LimitExceededException"])
def test_cognito_throttling_is_congestion(code: str) -> None:
    got = resolver(ThrottlingCognito(code), "us-east-1_Abc").resolve(change(None, sub=str(uuid.uuid4())), FOREVER)
    assert got == Transient(f"Cognito ListUsers: {code}", congestion=True)


@pytest.mark.parametrize("code", ["AccessDeniedException", "NotAuthorizedException", "ResourceNotFoundException"])
def test_cognito_refusing_us_is_a_configuration_error(code: str) -> None:
    got = resolver(ThrottlingCognito(code), "us-east-1_Abc").resolve(change(None, sub=str(uuid.uuid4())), FOREVER)
    assert got == Transient(f"Cognito ListUsers: {code}", configuration=True)


def test_another_cognito_error_is_a_plain_transient() -> None:
    got = resolver(ThrottlingCognito("InternalErrorException"), "us-east-1_Abc").resolve(
        change(None, sub=str(uuid.uuid4())), FOREVER
    )
    assert got == Transient("Cognito ListUsers: InternalErrorException")


def test_cognito_out_of_reach_is_a_plain_transient(moto_server: MotoServer) -> None:
    # moto_server only for the session's region and dummy credentials: this client goes nowhere near it
    unreachable = boto3.client(
        "cognito-idp",
        endpoint_url="http://127.0.0.1:9",  # nothing listens on the discard port here
        config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1}),
    )
    got = resolver(unreachable, "us-east-1_Abc").resolve(change(None, sub=str(uuid.uuid4())), FOREVER)
    assert isinstance(got, Transient) and got.detail == "Cognito: EndpointConnectionError"
    assert got.configuration is False and got.congestion is False


def test_repeats_in_a_batch_cost_one_lookup_and_keep_their_own_ids(cognito: CountingCognito) -> None:
    pool, subs = make_pool(cognito)
    one, again, other = change(pool, sub=subs["alice"]), change(pool, sub=subs["alice"]), change(pool, sub=subs["bob"])
    foreign = change("us-east-1_Other99", sub=subs["alice"])
    got = resolver(cognito, pool).resolve_all([one, again, other, foreign], FOREVER)
    assert [(g.id, g.username) for g in got[:3] if isinstance(g, SyncMessage)] == [
        (one.id, "alice"),
        (again.id, "alice"),
        (other.id, "bob"),
    ]
    assert got[3] == Dropped(DropReason.OTHER_POOL)
    assert cognito.calls == ["describe_user_pool", "list_users", "list_users"]
