"""The nightly reconcile's map from a user's `sub` to their username, in 256 small S3 objects.

CloudTrail names a changed user by `sub`, and after a delete Cognito can no longer say whose `sub` it was: this map,
written by each complete reconcile run, can. It is sharded by the first byte of SHA-256(sub) so that `deliver`
reads one object of a few hundred kilobytes (for a million users) to resolve one deleted user, never the whole
snapshot. Each shard is gzip'd `sub<TAB>username` lines, built streaming (compressed in memory, never a dict of all
users).
"""

from __future__ import annotations

import gzip
import hashlib
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from chalicelib.aws_clients import error_code

SHARDS = 256
SHARD_WINDOW_BITS = 12
SHARD_MEM_LEVEL = 2
CACHE_SECONDS = 600.0


def shard_of(sub: str) -> str:
    return hashlib.sha256(sub.encode()).hexdigest()[:2]


def shard_key(pool_id: str, shard: str) -> str:
    return f"reconcile/{pool_id}/subs/{shard}.json.gz"


def encode_shards(pairs: Iterable[tuple[str, str]]) -> dict[str, bytes]:
    """Every shard's object body for these (sub, username) pairs; empty shards too, so stale ones are replaced."""
    # gzip members with a 4 KiB window and a small hash: 256 compressors at zlib's defaults hold 68 MB whatever the
    # pool's size (measured with tracemalloc); these hold 4.5 MB, for 35 instead of 33 bytes a user
    compressors = {
        f"{i:02x}": zlib.compressobj(6, zlib.DEFLATED, 16 + SHARD_WINDOW_BITS, SHARD_MEM_LEVEL) for i in range(SHARDS)
    }
    bodies = {shard: bytearray() for shard in compressors}
    for sub, username in pairs:
        shard = shard_of(sub)
        bodies[shard] += compressors[shard].compress(f"{sub}\t{username}\n".encode())
    for shard, compressor in compressors.items():
        bodies[shard] += compressor.flush(zlib.Z_FINISH)
    return {shard: bytes(body) for shard, body in bodies.items()}


def write_index(s3: Any, bucket: str, pool_id: str, pairs: Iterable[tuple[str, str]]) -> int:
    """Replace the pool's index; returns the bytes written."""
    written = 0
    for shard, body in encode_shards(pairs).items():
        s3.put_object(Bucket=bucket, Key=shard_key(pool_id, shard), Body=body, ContentType="application/gzip")
        written += len(body)
    return written


class SubIndex:
    """Reads the index, one shard at a time, kept for a few minutes per container."""

    def __init__(self, s3: Callable[[], Any], bucket: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._clock = clock
        self._shards: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    def username(self, pool_id: str, sub: str) -> str | None:
        """The username reconcile last saw for `sub`; None when it has none (or there is no index yet)."""
        if not self._bucket:
            return None
        key = (pool_id, shard_of(sub))
        cached = self._shards.get(key)
        if cached is None or self._clock() - cached[0] > CACHE_SECONDS:
            cached = (self._clock(), self._read(pool_id, key[1]))
            self._shards[key] = cached
        return cached[1].get(sub)

    def _read(self, pool_id: str, shard: str) -> dict[str, str]:
        from botocore.exceptions import ClientError

        try:
            body = self._s3().get_object(Bucket=self._bucket, Key=shard_key(pool_id, shard))["Body"].read()
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return {}
            raise
        mapping: dict[str, str] = {}
        for line in gzip.decompress(body).decode().splitlines():
            sub, _, username = line.partition("\t")
            if sub and username:
                mapping[sub] = username
        return mapping
