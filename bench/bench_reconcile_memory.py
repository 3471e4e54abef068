"""Bytes per user and throughput of reconcile. Not part of the test suite; prints the figures docs/RECONCILE.md quotes.

    .venv/bin/python bench/bench_reconcile_memory.py                      # memory at 10k and 50k users
    .venv/bin/python bench/bench_reconcile_memory.py --moto 10000 50000   # + throughput against moto over HTTP
    .venv/bin/python bench/bench_reconcile_memory.py --sizes --moto 3000 --rate 5   # the default rate

Memory: the run talks to in-process stand-ins for Cognito (pages generated on the fly, shaped like ListUsers
output), S3 (a dict) and SQS (a counter), so tracemalloc sees reconcile's own allocations and nothing of moto's.
Two runs per size: the first (every user new, no baseline) and an incremental one (1 % changed, 0.5 % deleted, 0.5 %
added) that loads the baseline. "peak/user" is tracemalloc's peak during the run, minus what the fake S3 holds
afterwards (that lives in S3, not in the Lambda), divided by the pool size.

Throughput: the same code against moto's server over real HTTP at RECONCILE_RATE_LIMIT=30 (the maximum; --rate
to change), seeded through moto's backend. moto's ListUsers costs O(pool) per page, so at 50k users moto, not the
rate limit, is the bottleneck; the figure that carries over to AWS is requests/s against the configured limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from userhub_sync.local.moto import patched_environ

ENV = {
    "USERHUB_API_URL": "http://127.0.0.1:9",
    "USERHUB_CONNECTION_ID": "conn_bench",
    "USERHUB_ADMIN_KEY": "bench-key",
    "EVENTS_QUEUE_NAME": "bench-events",
    "DEAD_LETTER_QUEUE_NAME": "bench-dlq",
    "SNAPSHOT_BUCKET": "bench-snapshots",
    "USER_POOL_ID": "us-east-1_Bench1",
    "RECONCILE_RATE_LIMIT": "30",
    "USERHUB_SYNC_METRICS": "off",
    "LOG_LEVEL": "WARNING",
}
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeCognito:
    """ListUsers pages computed from an index: no pool held in memory, so tracemalloc sees only the run."""

    def __init__(self, size: int) -> None:
        self.ids = range(size)
        self.changed: set[int] = set()
        self.deleted: set[int] = set()
        self.added = 0

    def mutate(self) -> None:
        n = len(self.ids)
        self.changed = set(range(0, n, 100))
        self.deleted = set(range(1, n, 200))
        self.added = n // 200

    def _user(self, i: int) -> dict[str, Any]:
        name = f"user{i:07d}@example.com"
        modified = EPOCH + dt.timedelta(days=1 if i in self.changed else 0, seconds=i)
        return {
            "Username": name,
            "Attributes": [
                {"Name": "sub", "Value": str(uuid.UUID(int=i + 1))},
                {"Name": "email", "Value": name},
                {"Name": "email_verified", "Value": "true"},
                {"Name": "name", "Value": f"User {i} {'changed' if i in self.changed else ''}".strip()},
            ],
            "UserCreateDate": EPOCH,
            "UserLastModifiedDate": modified,
            "Enabled": True,
            "UserStatus": "CONFIRMED",
        }

    def list_users(self, UserPoolId: str, Limit: int, PaginationToken: str | None = None) -> dict[str, Any]:
        assert Limit <= 60
        total = len(self.ids) + self.added
        start = int(PaginationToken or 0)
        page = [self._user(i) for i in range(start, min(start + Limit, total)) if i not in self.deleted]
        end = start + Limit
        return {"Users": page, **({"PaginationToken": str(end)} if end < total else {})}


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.version = 0

    def _error(self, code: str) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code}}, "S3")

    def put_object(
        self,
        Bucket: str,
        Key: str,
        Body: bytes,
        IfMatch: str | None = None,
        IfNoneMatch: str | None = None,
        Metadata: dict[str, str] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        current = self.objects.get(Key)
        if (IfNoneMatch and current) or (IfMatch and (not current or current[1] != IfMatch)):
            raise self._error("PreconditionFailed")
        self.version += 1
        etag = f'"{self.version}"'
        self.objects[Key] = (Body, etag, Metadata or {})
        return {"ETag": etag}

    def get_object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        if Key not in self.objects:
            raise self._error("NoSuchKey")
        body, etag, metadata = self.objects[Key]
        return {"Body": io.BytesIO(body), "ETag": etag, "Metadata": metadata}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise self._error("404")
        _, etag, metadata = self.objects[Key]
        return {"ETag": etag, "Metadata": metadata}

    def delete_object(self, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)

    def list_objects_v2(self, Bucket: str, Prefix: str) -> dict[str, Any]:
        return {"Contents": [{"Key": k} for k in self.objects if k.startswith(Prefix)]}

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
        for item in Delete["Objects"]:
            self.objects.pop(item["Key"], None)

    def stored_bytes(self) -> int:
        return sum(len(body) for body, _, _ in self.objects.values())


class CountingSQS:
    def __init__(self) -> None:
        self.sent = 0

    def get_queue_url(self, QueueName: str) -> dict[str, str]:
        return {"QueueUrl": "bench"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.sent += len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def measure_memory(size: int) -> list[dict[str, Any]]:
    from chalicelib import reconcile
    from chalicelib.settings import reset_settings

    rows = []
    with patched_environ({**ENV, "RECONCILE_RATE_LIMIT": "30"}):
        reset_settings()
        cognito, s3 = FakeCognito(size), FakeS3()
        # the fake pager is not botocore: skip the token bucket's sleeps here (memory only)
        pager = reconcile.UserPager.for_client(cognito, 30.0)
        pager.bucket.rate = 1e9
        for label in ("first run", "incremental"):
            if label == "incremental":
                cognito.mutate()
            deps = reconcile.Deps(cognito=cognito, s3=s3, sqs=CountingSQS())
            reconciler = reconcile.Reconciler(reconcile.get_settings(), deps)
            pager.bucket.rate = 1e9
            stored_before = s3.stored_bytes()
            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            started = time.perf_counter()
            result = reconciler.invoke(reconcile.ReconcileRequest(), reconcile.Deadline(None))
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            held_by_s3 = s3.stored_bytes() - stored_before
            snapshot_size = len(s3.objects[f"reconcile/{ENV['USER_POOL_ID']}/snapshot.gz"][0])
            users = result.summary["scanned"]
            rows.append(
                {
                    "users": users,
                    "run": label,
                    "enqueued": result.summary["enqueued"],
                    "peak_bytes": peak - before,
                    "peak_per_user": (peak - before - max(held_by_s3, 0)) / users,
                    "snapshot_per_user": snapshot_size / users,
                    "cpu_users_per_s": users / seconds,
                }
            )
    return rows


def measure_moto(size: int, rate: float = 30.0) -> list[dict[str, Any]]:
    import boto3
    from moto.cognitoidp.models import cognitoidp_backends

    from chalicelib import reconcile
    from chalicelib.settings import reset_settings
    from userhub_sync.local.moto import DEFAULT_REGION, MOTO_ACCOUNT, MotoServer, aws_environ

    rows = []
    with MotoServer() as server, patched_environ(aws_environ(server.endpoint)):
        pool_id = boto3.client("cognito-idp").create_user_pool(PoolName="bench")["UserPool"]["Id"]
        boto3.client("s3").create_bucket(Bucket=ENV["SNAPSHOT_BUCKET"])
        backend = cognitoidp_backends[MOTO_ACCOUNT][DEFAULT_REGION]
        for i in range(size):
            name = f"user{i:07d}@example.com"
            backend.admin_create_user(pool_id, name, None, None, [{"Name": "email", "Value": name}])
        with patched_environ({**ENV, "USER_POOL_ID": pool_id, "RECONCILE_RATE_LIMIT": str(rate)}):
            reset_settings()
            cognito = reconcile.make_cognito_client()
            for label in ("first run", "incremental"):
                if label == "incremental":
                    users = backend.user_pools[pool_id].users
                    for name in list(users)[::100]:
                        users[name].update_attributes([{"Name": "name", "Value": "changed"}])
                deps = reconcile.Deps(cognito=cognito, s3=boto3.client("s3"), sqs=CountingSQS())
                summary = reconcile.run_reconcile(reconcile.ReconcileRequest(), deps=deps).summary
                rows.append(
                    {
                        "users": size,
                        "run": label,
                        **{
                            k: summary[k]
                            for k in (
                                "pages",
                                "requests",
                                "throttles",
                                "enqueued",
                                "seconds",
                                "users_per_second",
                                "requests_per_second",
                                "rate_limit",
                            )
                        },
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000], help="pool sizes for memory")
    parser.add_argument("--moto", type=int, nargs="*", default=[], help="pool sizes to scan through moto")
    parser.add_argument("--rate", type=float, default=30.0, help="RECONCILE_RATE_LIMIT for the moto runs")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    print("memory (tracemalloc; fake Cognito/S3/SQS in-process)")
    print(
        f"{'users':>8} {'run':<12} {'enqueued':>8} {'peak KiB':>9} {'peak B/user':>11} {'snapshot B/user':>15} "
        f"{'CPU users/s':>11}"
    )
    results = []
    for size in args.sizes:
        for row in measure_memory(size):
            results.append(row)
            print(
                f"{row['users']:>8} {row['run']:<12} {row['enqueued']:>8} {row['peak_bytes'] / 1024:>9.0f} "
                f"{row['peak_per_user']:>11.1f} {row['snapshot_per_user']:>15.1f} {row['cpu_users_per_s']:>11.0f}"
            )
    incremental = [r for r in results if r["run"] == "incremental"]
    if len(incremental) >= 2:
        small, large = incremental[0], incremental[-1]
        marginal = (large["peak_bytes"] - small["peak_bytes"]) / (large["users"] - small["users"])
        print(f"marginal peak bytes per extra user (incremental, {small['users']}→{large['users']}): {marginal:.1f}")
    for size in args.moto:
        print(f"\nthroughput against moto over HTTP, {size} users, RECONCILE_RATE_LIMIT={args.rate}")
        for row in measure_moto(size, args.rate):
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
