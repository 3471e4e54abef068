"""Reconcile's memory per user, with nothing else in the traced heap: `python -m bench --only reconcile-memory`.

The run talks to in-process stand-ins for Cognito (pages generated on the fly, shaped like ListUsers output), S3 (a
dict) and SQS (a counter), bench/fakes.py, so tracemalloc sees reconcile's own allocations and nothing of moto's.
Two runs per size: the first (every user new, no baseline) and an incremental one (1 % changed, 0.5 % deleted, 0.5 %
added) that loads the baseline. "peak per user" is tracemalloc's peak during the run, minus what the fake S3 holds
afterwards (that lives in S3, not in the Lambda), divided by the pool size. Not in the default run: the reconcile
benchmark measures memory against moto too; this one isolates the run's own bytes (docs/RECONCILE.md quotes it).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from bench.common import Figure, Options, Section, fmt, log
from bench.fakes import CountingSQS, FakeCognito, FakeS3

PREFIX = "userhub-sync-bench-memory"
POOL_ID = "us-east-1_Bench1"
SIZES = (10_000, 50_000)


def measure(size: int) -> list[dict[str, Any]]:
    """The first and the incremental run on a pool of `size` users."""
    from chalicelib import reconcile
    from chalicelib.settings import get_settings
    from userhub_sync.local.moto import new_container, patched_environ
    from userhub_sync.scenarios.rig import stage_environ

    rows = []
    environ = stage_environ(
        PREFIX, connection_id="conn_bench", pool_id=POOL_ID, admin_key="bench-key", RECONCILE_RATE_LIMIT="30"
    )
    with patched_environ(environ):
        new_container()
        cognito, s3 = FakeCognito(size), FakeS3()
        for label in ("first run", "incremental"):
            if label == "incremental":
                cognito.mutate()
            deps = reconcile.Deps(cognito=cognito, s3=s3, sqs=CountingSQS())
            # the fake Cognito is not botocore (no hooks to attach): a bucket with no real limit, memory only
            reconciler = reconcile.Reconciler(get_settings(), deps, reconcile.UserPager(cognito, 1e9))
            stored_before = s3.stored_bytes()
            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            started = time.perf_counter()
            result = reconciler.invoke(reconcile.ReconcileRequest(), reconcile.Deadline(None))
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            held_by_s3 = s3.stored_bytes() - stored_before
            snapshot_size = len(s3.objects[f"reconcile/{POOL_ID}/snapshot.gz"][0])
            users = result.summary.scanned
            rows.append(
                {
                    "users": users,
                    "run": label,
                    "enqueued": result.summary.enqueued,
                    "peak_bytes": peak - before,
                    "peak_per_user": (peak - before - max(held_by_s3, 0)) / users,
                    "snapshot_per_user": snapshot_size / users,
                    "cpu_users_per_s": users / seconds,
                }
            )
        new_container()
    return rows


def run(options: Options) -> Section:
    section = Section("reconcile-memory", "5. Reconcile memory per user (in-process fakes)")
    sizes = SIZES[:1] if options.quick else SIZES
    table = [
        "| users | run | enqueued | peak (KiB) | peak bytes/user | snapshot in S3, bytes/user | CPU users/s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for size in sizes:
        for row in measure(size):
            rows.append(row)
            log(f"   {row['users']:,} users, {row['run']}: {row['peak_per_user']:.1f} bytes/user")
            table.append(
                f"| {row['users']:,} | {row['run']} | {row['enqueued']:,} | {row['peak_bytes'] / 1024:,.0f} | "
                f"{row['peak_per_user']:.1f} | {row['snapshot_per_user']:.1f} | {fmt(row['cpu_users_per_s'])} |"
            )
    for row in rows:
        section.add(Figure(f"peak bytes per user, {row['users']:,} users, {row['run']}", row["peak_per_user"], "B"))
    incremental = [r for r in rows if r["run"] == "incremental"]
    if len(incremental) >= 2:
        small, large = incremental[0], incremental[-1]
        marginal = (large["peak_bytes"] - small["peak_bytes"]) / (large["users"] - small["users"])
        section.add(
            Figure(
                f"marginal peak bytes per extra user, incremental, {small['users']:,} → {large['users']:,}",
                marginal,
                "B",
                note="fixed overhead cancels out",
            )
        )
    section.tables.append("\n".join(table))
    section.method = [__doc__.split("\n\n", 1)[1].replace("\n", " ")]
    return section
