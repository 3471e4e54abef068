"""Sign-in recovery's watermark and its `sub` lookups, piece by piece: the watermark is written only over what was
read (a run that lost the race never moves it back), it records when it was written, and an unreadable one starts
over; a `sub` lookup fails the run on Cognito trouble (the watermark stays) but reads a vanished pool as "no user".

S3 and Cognito are moto over HTTP; Cognito's throttling cannot be produced by moto, so one test uses a stand-in
that raises the ClientError botocore builds for it (said there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import signin_recovery as sr
from tests.support import create_users
from userhub_sync.local.moto import MotoServer

BUCKET = "recovery-watermark-test"


@pytest.fixture
def s3(moto_server: MotoServer) -> Iterator[Any]:
    moto_server.reset()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client


def stored(s3: Any) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=sr.WATERMARK_KEY)["Body"].read())


def test_a_first_watermark_is_created_with_the_time_it_was_written(s3: Any) -> None:
    store = sr.WatermarkStore(s3, BUCKET)
    assert store.read() == (None, None)
    before = int(time.time() * 1000)
    assert store.advance(5_000, None) == 5_000
    written = stored(s3)
    assert written["recovered_until_ms"] == 5_000
    assert before - 1000 <= written["updated_at_ms"] <= int(time.time() * 1000) + 1000
    value, etag = store.read()
    assert value == 5_000 and etag


def test_a_run_that_lost_the_race_to_a_later_watermark_never_moves_it_back(s3: Any) -> None:
    mine, theirs = sr.WatermarkStore(s3, BUCKET), sr.WatermarkStore(s3, BUCKET)
    _, my_etag = mine.read()
    _, their_etag = theirs.read()
    assert theirs.advance(9_000, their_etag) == 9_000
    assert mine.advance(4_000, my_etag) == 9_000  # read before theirs was written: mine is stale
    assert stored(s3)["recovered_until_ms"] == 9_000


def test_a_run_that_lost_the_race_to_an_earlier_watermark_writes_its_own_over_it(s3: Any) -> None:
    first = sr.WatermarkStore(s3, BUCKET)
    first.advance(1_000, None)
    mine, theirs = sr.WatermarkStore(s3, BUCKET), sr.WatermarkStore(s3, BUCKET)
    _, my_etag = mine.read()
    _, their_etag = theirs.read()
    theirs.advance(2_000, their_etag)
    assert mine.advance(7_000, my_etag) == 7_000  # its ETag is stale: read again, and write over the new one
    assert stored(s3)["recovered_until_ms"] == 7_000


def test_an_existing_watermark_is_not_overwritten_by_a_run_that_read_none(s3: Any) -> None:
    sr.WatermarkStore(s3, BUCKET).advance(8_000, None)
    assert sr.WatermarkStore(s3, BUCKET).advance(3_000, None) == 8_000
    assert stored(s3)["recovered_until_ms"] == 8_000


class EverChangingS3:
    """The real moto client whose every put first sees the watermark moved by someone else (moto can't race)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.puts = 0

    def put_object(self, **kwargs: Any) -> Any:
        self.puts += 1
        self.real.put_object(Bucket=BUCKET, Key=sr.WATERMARK_KEY, Body=json.dumps({"recovered_until_ms": self.puts}))
        return self.real.put_object(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        return self.real.get_object(**kwargs)


def test_a_watermark_that_keeps_changing_gives_up_after_three_writes(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=sr.WATERMARK_KEY, Body=json.dumps({"recovered_until_ms": 0}))
    racing = EverChangingS3(s3)
    store = sr.WatermarkStore(racing, BUCKET)
    _, etag = store.read()
    with pytest.raises(sr.RecoveryError, match="kept changing"):
        store.advance(10_000, etag)
    assert racing.puts == 3


@pytest.mark.parametrize("body", [b"not json", b'{"other": 1}', b'{"recovered_until_ms": "12"}', b"[1]"])
def test_an_unreadable_watermark_starts_over_but_keeps_its_etag(s3: Any, body: bytes) -> None:
    etag = s3.put_object(Bucket=BUCKET, Key=sr.WATERMARK_KEY, Body=body)["ETag"]
    assert sr.WatermarkStore(s3, BUCKET).read() == (None, etag)


class ThrottledCognito:
    """Stand-in: moto never throttles, so this raises the ClientError botocore builds for a throttled ListUsers."""

    def __init__(self) -> None:
        self.calls = 0

    def list_users(self, **_: Any) -> Any:
        self.calls += 1
        raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, "ListUsers")


def test_cognito_trouble_during_a_sub_lookup_fails_the_run() -> None:
    cognito = ThrottledCognito()
    with pytest.raises(ClientError):
        sr.SubResolver(lambda: cognito).username("us-east-1_Abc", "sub-1")
    assert cognito.calls == 1


def test_a_sub_in_a_pool_cognito_no_longer_has_is_no_user_and_asked_once(moto_server: MotoServer) -> None:
    moto_server.reset()
    made: list[Any] = []

    def cognito() -> Any:
        made.append(boto3.client("cognito-idp"))
        return made[-1]

    resolver = sr.SubResolver(cognito)
    assert resolver.username("us-east-1_GonePool1", "sub-1") is None
    assert resolver.username("us-east-1_GonePool1", "sub-1") is None
    assert len(made) == 1


def test_a_sub_lookup_finds_the_username_and_each_sub_is_asked_once(moto_server: MotoServer) -> None:
    moto_server.reset()
    cognito = boto3.client("cognito-idp")
    pool = cognito.create_user_pool(PoolName="recovery")["UserPool"]["Id"]
    subs = create_users(cognito, pool, ("kim", "lou"))
    asked: list[str] = []
    cognito.meta.events.register("provide-client-params.cognito-idp.ListUsers", lambda params, **_: asked.append(1))
    resolver = sr.SubResolver(lambda: cognito)
    assert [resolver.username(pool, subs[n]) for n in ("kim", "lou", "kim")] == ["kim", "lou", "kim"]
    assert len(asked) == 2
