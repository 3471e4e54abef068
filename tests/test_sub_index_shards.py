"""The sub→username map reconcile writes and capture reads: 256 gzip shards named by SHA-256(sub), every shard
written (empty ones too, so a stale one is replaced), one shard read per lookup and kept ten minutes, a missing
shard read as "unknown" and any other S3 error raised (deliver retries the message; nothing is dropped).

S3 is moto over HTTP (the `moto_server` fixture); the clock is a fake that the test moves.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.sub_index import CACHE_SECONDS, SHARDS, SubIndex, encode_shards, shard_key, shard_of, write_index
from tests.support import FakeTime
from userhub_sync.local.moto import MotoServer

POOL = "us-east-1_SubIndex1"
BUCKET = "sub-index-test"


class CountingS3:
    """The real moto client, with its get_object calls counted (how many shards a lookup read)."""

    def __init__(self) -> None:
        self.client = boto3.client("s3")
        self.gets: list[str] = []

    def get_object(self, **kwargs: Any) -> Any:
        self.gets.append(kwargs["Key"])
        return self.client.get_object(**kwargs)


@pytest.fixture
def s3(moto_server: MotoServer) -> Iterator[CountingS3]:
    moto_server.reset()
    counting = CountingS3()
    counting.client.create_bucket(Bucket=BUCKET)
    yield counting


def put_shards(s3: CountingS3, pool: str, pairs: list[tuple[str, str]]) -> None:
    """What write_index writes, only for the shards these subs fall in (256 PUTs per test would be slow)."""
    bodies = encode_shards(pairs)
    for shard in {shard_of(sub) for sub, _ in pairs}:
        s3.client.put_object(Bucket=BUCKET, Key=shard_key(pool, shard), Body=bodies[shard])


def test_a_sub_s_shard_is_the_first_byte_of_its_sha256_in_hex() -> None:
    sub = "0b1c2d3e-aaaa-bbbb-cccc-000000000001"
    assert shard_of(sub) == hashlib.sha256(sub.encode()).hexdigest()[:2]
    assert len(shard_of("x")) == 2 and shard_of("x") == "2d"


def test_a_shard_s_key_is_under_the_pool_s_reconcile_prefix() -> None:
    assert shard_key(POOL, "7f") == f"reconcile/{POOL}/subs/7f.json.gz"


def test_every_one_of_the_256_shards_is_encoded_and_each_is_gzip_of_its_own_pairs() -> None:
    pairs = [(f"sub-{i}", f"user-{i}") for i in range(600)]
    bodies = encode_shards(pairs)
    assert SHARDS == 256 and sorted(bodies) == [f"{i:02x}" for i in range(256)]
    decoded = {shard: gzip.decompress(body).decode() for shard, body in bodies.items()}
    lines = [line for text in decoded.values() for line in text.splitlines()]
    assert sorted(lines) == sorted(f"{sub}\t{user}" for sub, user in pairs)
    for sub, user in pairs:
        assert f"{sub}\t{user}\n" in decoded[shard_of(sub)]


def test_a_rewrite_writes_every_shard_so_an_empty_map_replaces_a_stale_entry(s3: CountingS3) -> None:
    write_index(s3.client, BUCKET, POOL, [("sub-a", "alice")])
    written = write_index(s3.client, BUCKET, POOL, [])
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"reconcile/{POOL}/subs/")["Contents"]
    assert len(listed) == 256 and written == sum(item["Size"] for item in listed)
    one = s3.client.get_object(Bucket=BUCKET, Key=shard_key(POOL, shard_of("sub-a")))
    assert one["ContentType"] == "application/gzip" and gzip.decompress(one["Body"].read()) == b""
    assert SubIndex(lambda: s3, BUCKET).username(POOL, "sub-a") is None


def test_a_lookup_reads_only_the_sub_s_shard_and_finds_the_username(s3: CountingS3) -> None:
    put_shards(s3, POOL, [("sub-a", "alice"), ("sub-b", "bob with spaces")])
    index = SubIndex(lambda: s3, BUCKET)
    assert index.username(POOL, "sub-b") == "bob with spaces"
    assert s3.gets == [shard_key(POOL, shard_of("sub-b"))]
    assert index.username(POOL, "sub-unknown") is None


def test_no_bucket_means_no_index_and_no_s3_call() -> None:
    def no_s3() -> Any:
        raise AssertionError("S3 must not be asked")

    assert SubIndex(no_s3, None).username(POOL, "sub-a") is None
    assert SubIndex(no_s3, "").username(POOL, "sub-a") is None


def test_a_missing_shard_is_an_unknown_sub(s3: CountingS3) -> None:
    assert SubIndex(lambda: s3, BUCKET).username(POOL, "sub-a") is None  # reconcile never ran


def test_an_s3_error_other_than_a_missing_key_is_raised(s3: CountingS3) -> None:
    with pytest.raises(ClientError) as raised:
        SubIndex(lambda: s3, "no-such-bucket-here").username(POOL, "sub-a")
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"


def test_a_shard_is_kept_ten_minutes_then_read_again(s3: CountingS3) -> None:
    fake = FakeTime(now=5000.0)
    put_shards(s3, POOL, [("sub-a", "alice")])
    index = SubIndex(lambda: s3, BUCKET, clock=fake.clock)
    assert index.username(POOL, "sub-a") == "alice"
    put_shards(s3, POOL, [("sub-a", "alice-renamed")])
    fake.now += CACHE_SECONDS  # exactly ten minutes: still the kept copy
    assert CACHE_SECONDS == 600.0
    assert index.username(POOL, "sub-a") == "alice"
    assert len(s3.gets) == 1
    fake.now += 0.5
    assert index.username(POOL, "sub-a") == "alice-renamed"
    assert len(s3.gets) == 2
    fake.now += 1.0  # the new copy is kept from its own read
    assert index.username(POOL, "sub-a") == "alice-renamed" and len(s3.gets) == 2


def test_the_kept_shards_are_per_pool(s3: CountingS3) -> None:
    other = "us-east-1_SubIndex2"
    put_shards(s3, POOL, [("sub-a", "alice")])
    put_shards(s3, other, [("sub-a", "alice-elsewhere")])
    index = SubIndex(lambda: s3, BUCKET)
    assert index.username(POOL, "sub-a") == "alice"
    assert index.username(other, "sub-a") == "alice-elsewhere"
    assert len(s3.gets) == 2
