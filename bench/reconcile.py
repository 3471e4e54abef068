"""Reconcile: users/s against a bare ListUsers pagination loop on the same moto, memory, request rate, and the
messages an incremental run enqueues.

moto runs in its own process (bench/_moto_proc.py) so that its O(N)-per-page ListUsers neither shares a GIL with
the code under measurement nor lands in the traced heap; pools are seeded straight into its backend.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

from bench.common import Figure, JsonLineChild, Options, Section, fmt, json_line_process, log
from bench.fakes import CountingSQS

PREFIX = "userhub-sync-bench-reconcile"
BUCKET, EVENTS_QUEUE, DLQ = f"{PREFIX}-snapshots", f"{PREFIX}-events", f"{PREFIX}-dlq"
CONNECTION_ID = "conn_bench"
PAGE = 60
FAST_LIMIT = 30.0  # RECONCILE_RATE_LIMIT for the timed runs: Cognito's ListUsers quota, the setting's maximum
CHANGED_FRACTION = 0.01


@dataclass
class Scan:
    """One pass over a pool: what it cost, how fast it asked, what it enqueued."""

    users: int
    seconds: float
    requests: list[float] = field(default_factory=list)  # time.monotonic() of each ListUsers request sent
    summary: dict[str, Any] = field(default_factory=dict)
    enqueued: int = 0
    peak_bytes: int | None = None
    rss_growth: int | None = None

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds

    def paced(self, limit: float) -> float:
        """This scan's time had no two requests left closer than 1/limit s (reconcile's bucket, burst 1)."""
        gaps = [b - a for a, b in zip(self.requests, self.requests[1:], strict=False)]
        return self.seconds + sum(max(g, 1 / limit) - g for g in gaps)

    def peak_rate(self, window: float = 1.0) -> float:
        """Most requests sent in any half-open window of `window` seconds, per second."""
        times, best, j = self.requests, 0, 0
        for i in range(len(times)):
            while times[i] - times[j] >= window:
                j += 1
            best = max(best, i - j + 1)
        return best / window


def _listusers_hook(client: Any, times: list[float]) -> None:
    """Record when each ListUsers request leaves (registered last: after reconcile's own rate limiter)."""
    client.meta.events.register_last(
        "before-send.cognito-identity-provider.ListUsers", lambda **_: times.append(time.monotonic())
    )


def bare_scan(pool_id: str) -> Scan:
    """The baseline: ListUsers, Limit=60, token after token, nothing else (plain boto3 client, HTTP)."""
    import boto3

    client = boto3.client("cognito-idp")
    times: list[float] = []
    _listusers_hook(client, times)
    users, token = 0, None
    started = time.perf_counter()
    while True:
        params: dict[str, Any] = {"UserPoolId": pool_id, "Limit": PAGE}
        if token:
            params["PaginationToken"] = token
        page = client.list_users(**params)
        users += len(page.get("Users") or [])
        token = page.get("PaginationToken")
        if not token:
            break
    return Scan(users, time.perf_counter() - started, times)


class _RssWatch:
    """Peak resident set size while a run lasts, sampled every 20 ms (what Lambda's max memory used reports)."""

    def __init__(self) -> None:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.peak = max(self.peak, self._rss())


def subject_run(pool_id: str, users: int, *, sqs: Any, s3: Any, trace_memory: bool = False) -> Scan:
    """One reconcile run by hand (no Lambda deadline), as `userhub-sync reconcile` runs it."""
    from chalicelib import reconcile
    from userhub_sync.local.moto import new_container

    new_container()
    cognito = reconcile.make_cognito_client()  # adaptive retries, as deployed
    times: list[float] = []
    _listusers_hook(cognito, times)
    deps = reconcile.Deps(cognito=cognito, sqs=sqs, s3=s3)
    gc.collect()
    if trace_memory:
        tracemalloc.start()
    try:
        with _RssWatch() as rss:
            started = time.perf_counter()
            result = reconcile.run_reconcile(reconcile.ReconcileRequest(), deps=deps)
            seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
    finally:
        if trace_memory:
            tracemalloc.stop()
    if result.status != "complete":
        raise RuntimeError(f"reconcile run ended {result.status}: {result.summary}")
    if result.summary.scanned != users:
        raise RuntimeError(f"reconcile scanned {result.summary.scanned} of {users} users")
    return Scan(users, seconds, times, result.summary.to_dict(), result.summary.enqueued, peak, rss.peak - rss.start)


def _queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def run(options: Options) -> Section:
    section = Section("reconcile", "3. Reconcile")
    if importlib.util.find_spec("chalicelib.reconcile") is None:
        section.error = "reconcile not available yet (chalicelib/reconcile/ does not exist)"
        return section
    with json_line_process("bench._moto_proc") as moto:
        _run(section, moto, options)
    return section


def _run(section: Section, moto: JsonLineChild, options: Options) -> None:
    import boto3

    from chalicelib.settings import reset_settings
    from userhub_sync.local.moto import patched_environ
    from userhub_sync.scenarios.rig import stage_environ

    environ = stage_environ(
        PREFIX,
        connection_id=CONNECTION_ID,
        pool_id="",
        endpoint=moto.hello["endpoint"],
        admin_key="userhub_admin_bench_unused",
        RECONCILE_RATE_LIMIT=f"{FAST_LIMIT:g}",
        USER_POOL_ID=None,  # each size's pool is created below and set then
    )
    sizes = [10_000] if options.quick else [10_000, 50_000]
    rows = [
        "| run | users | seconds | users/s | bare loop seconds | ratio (time) | requests | peak req/s "
        "(1 s window) | limit | enqueued | traced heap peak (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with patched_environ(environ):
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        sqs.create_queue(QueueName=DLQ)
        queue_url = sqs.create_queue(QueueName=EVENTS_QUEUE)["QueueUrl"]
        cognito = boto3.client("cognito-idp")
        timed: list[Scan] = []
        for size in sizes:
            if options.left() < (200 if size > 10_000 else 60):
                section.notes.append(f"{size:,} users skipped: the run's time budget was nearly spent")
                continue
            pool_id = cognito.create_user_pool(PoolName=f"bench-{size}")["UserPool"]["Id"]
            seeded = moto.call({"cmd": "seed", "pool": pool_id, "count": size})
            log(f"   seeded {size:,} users into moto's backend in {seeded['seconds']:.1f} s")
            with patched_environ({"USER_POOL_ID": pool_id}):
                reset_settings()
                if size == 10_000:
                    timed.append(_ten_thousand(section, rows, moto, pool_id, size, s3, sqs, queue_url))
                else:
                    timed.append(_large(section, rows, pool_id, size, s3))
            reset_settings()
        deployed = _traced(rows, moto, cognito, s3, 2_000, 5.0)  # also the limiter at the deployed default
        _rate_figure(section, deployed, 5.0, "first run at the deployed default")
        traced = [deployed, _traced(rows, moto, cognito, s3, 10_000, FAST_LIMIT)]
        _memory_figures(section, traced, timed)
    section.tables.insert(0, "\n".join(rows))
    section.method = [
        "moto in its own process (`bench/_moto_proc.py`: ThreadedMotoServer over HTTP on loopback); users seeded "
        "straight into its Cognito backend (email + name attributes).",
        "Baseline: a bare boto3 loop, `list_users(Limit=60, PaginationToken=...)` until no token. Subject: "
        "`chalicelib.reconcile.run_reconcile` by hand (no Lambda deadline), with its adaptive-retry Cognito client, "
        "token-bucket rate limiter, S3 snapshot and checkpoints in the same moto. Each subject run is timed right "
        "after (or before) its own baseline scan of the same pool.",
        f"Timed runs use RECONCILE_RATE_LIMIT={FAST_LIMIT:g} (Cognito's ListUsers quota, and the setting's maximum); "
        "the limiter is also checked at the deployed default, 5 req/s, on a 2,000-user pool.",
        "First runs (every user new) send their CHANGED messages to a counting stand-in for SQS (moto's SQS is "
        "O(depth): 10k messages would take minutes there); incremental runs send to moto's SQS queue.",
        f"Incremental: {CHANGED_FRACTION:.0%} of the users get a new `name` attribute in moto's backend, then a "
        "normal (not --full) run; the messages it enqueued are counted in the queue.",
        "Request rate: the time each ListUsers request leaves (a botocore before-send hook registered after "
        "reconcile's limiter); peak = most requests in any 1 s window.",
        "Memory: peak of tracemalloc's traced heap during first runs on pools of their own (2k users at the "
        "deployed 5 req/s, 10k at 30 req/s; untimed, since tracing slows allocation-heavy code), per user and per "
        "additional user; and the peak growth of this process's RSS during the timed (untraced) first runs.",
    ]


def _ratio_figure(section: Section, label: str, subject: Scan, bare: Scan, limit: float) -> None:
    """The issue's figure (time against the bare loop) and, for context, against the quota-paced minimum."""
    ratio = subject.seconds / bare.seconds
    section.add(
        Figure(
            f"{label}: users/s",
            subject.users_per_second,
            "users/s",
            bare.users_per_second,
            "bare ListUsers loop",
            ratio,
            "time ≤ 1.25 × bare loop",
            ratio <= 1.25,
            note=f"{subject.seconds:.1f} s vs {bare.seconds:.1f} s (ratio of times)",
        )
    )
    floor = bare.paced(limit)
    if floor > bare.seconds * 1.01:
        section.add(
            Figure(
                f"{label}: time against the bare loop paced to the quota",
                subject.seconds,
                "s",
                floor,
                f"bare loop, requests ≥ 1/{limit:g} s apart",
                subject.seconds / floor,
                note="the bare loop asks faster than the ListUsers quota allows",
            )
        )
    if ratio > 1.25 and subject.seconds / floor <= 1.25:
        section.notes.append(
            f"{label}: moto answered faster than the ListUsers quota. The bare loop averaged "
            f"{len(bare.requests) / bare.seconds:.0f} req/s (peak {bare.peak_rate():.0f} in 1 s), while reconcile may "
            f"not exceed {limit:g} (Cognito's quota, and the setting's maximum; the run's peak was "
            f"{subject.peak_rate():.0f}). The same loop with its requests ≥ 1/{limit:g} s apart takes {floor:.2f} s, "
            f"{floor / subject.seconds:.0%} of reconcile's {subject.seconds:.2f} s. The ≤ 1.25× target cannot be met "
            "here without breaking the quota; real Cognito would throttle the bare loop."
        )


def _row(rows: list[str], label: str, scan: Scan, bare: Scan | None, limit: float | None) -> None:
    ratio = f"{scan.seconds / bare.seconds:.2f}×" if bare else "–"
    rows.append(
        f"| {label} | {scan.users:,} | {scan.seconds:.1f} | {fmt(scan.users_per_second)} | "
        f"{f'{bare.seconds:.1f}' if bare else '–'} | {ratio} | {len(scan.requests)} | "
        f"{scan.peak_rate():.0f} | {f'{limit:g}' if limit else 'none'} | "
        f"{scan.enqueued if scan.summary else '–'} | "
        f"{f'{scan.peak_bytes / 1e6:.2f}' if scan.peak_bytes is not None else '–'} |"
    )


def _ten_thousand(
    section: Section, rows: list[str], moto: JsonLineChild, pool_id: str, size: int, s3: Any, sqs: Any, queue_url: str
) -> Scan:
    bare1 = bare_scan(pool_id)
    _row(rows, "bare ListUsers loop", bare1, None, None)
    log(f"   {size:,}: bare loop {bare1.seconds:.1f} s ({len(bare1.requests) / bare1.seconds:.0f} req/s)")
    first = subject_run(pool_id, size, sqs=CountingSQS(), s3=s3)
    _row(rows, "first run (all new; SQS stand-in)", first, bare1, FAST_LIMIT)
    log(f"   {size:,}: first run {first.seconds:.1f} s, {first.enqueued} enqueued")
    _ratio_figure(section, f"{size // 1000}k users, first run", first, bare1, FAST_LIMIT)

    changed = int(size * CHANGED_FRACTION)
    moto.call({"cmd": "change", "pool": pool_id, "count": changed, "seed": 1})
    before = _queue_depth(sqs, queue_url)
    incremental = subject_run(pool_id, size, sqs=sqs, s3=s3)
    in_queue = _queue_depth(sqs, queue_url) - before
    bare2 = bare_scan(pool_id)
    _row(rows, f"incremental run ({CHANGED_FRACTION:.0%} changed; moto SQS)", incremental, bare2, FAST_LIMIT)
    _row(rows, "bare ListUsers loop", bare2, None, None)
    log(
        f"   {size:,}: incremental {incremental.seconds:.1f} s ({incremental.enqueued} enqueued, {in_queue} in the "
        f"queue), bare loop {bare2.seconds:.1f} s"
    )
    _ratio_figure(section, f"{size // 1000}k users, incremental run", incremental, bare2, FAST_LIMIT)
    section.add(
        Figure(
            f"messages enqueued by an incremental run after {changed} of {size:,} users changed",
            in_queue,
            "messages",
            changed,
            "users changed",
            in_queue / changed,
            f"= {changed}",
            in_queue == changed == incremental.enqueued,
        )
    )
    _rate_figure(section, first, FAST_LIMIT)
    _rate_figure(section, incremental, FAST_LIMIT, "incremental run")
    return first


def _large(section: Section, rows: list[str], pool_id: str, size: int, s3: Any) -> Scan:
    bare = bare_scan(pool_id)
    log(f"   {size:,}: bare loop {bare.seconds:.1f} s ({len(bare.requests) / bare.seconds:.0f} req/s)")
    _row(rows, "bare ListUsers loop", bare, None, None)
    first = subject_run(pool_id, size, sqs=CountingSQS(), s3=s3)
    log(f"   {size:,}: first run {first.seconds:.1f} s")
    _row(rows, "first run (all new; SQS stand-in)", first, bare, FAST_LIMIT)
    _ratio_figure(section, f"{size // 1000}k users, first run", first, bare, FAST_LIMIT)
    _rate_figure(section, first, FAST_LIMIT)
    return first


def _traced(rows: list[str], moto: JsonLineChild, cognito: Any, s3: Any, size: int, limit: float) -> Scan:
    """A first run on a pool of its own with tracemalloc on: memory only (tracing slows allocation-heavy code)."""
    from chalicelib.settings import reset_settings
    from userhub_sync.local.moto import patched_environ

    pool_id = cognito.create_user_pool(PoolName=f"bench-{size}-traced")["UserPool"]["Id"]
    moto.call({"cmd": "seed", "pool": pool_id, "count": size})
    with patched_environ({"USER_POOL_ID": pool_id, "RECONCILE_RATE_LIMIT": f"{limit:g}"}):
        scan = subject_run(pool_id, size, sqs=CountingSQS(), s3=s3, trace_memory=True)
    reset_settings()
    _row(rows, "first run, heap traced (SQS stand-in)", scan, None, limit)
    log(
        f"   {size:,}: traced first run at {limit:g} req/s: {scan.seconds:.1f} s, peak heap "
        f"{(scan.peak_bytes or 0) / 1e6:.2f} MB, peak {scan.peak_rate():.0f} req/s"
    )
    return scan


def _rate_figure(section: Section, scan: Scan, limit: float, run: str = "first run") -> None:
    peak = scan.peak_rate()
    section.add(
        Figure(
            f"highest ListUsers rate seen, {scan.users // 1000}k users, {run}, limit {limit:g}/s",
            peak,
            "req/s (1 s window)",
            limit,
            "configured RECONCILE_RATE_LIMIT",
            peak / limit,
            "never above the limit",
            peak <= limit,
        )
    )


def _memory_figures(section: Section, traced: list[Scan], timed: list[Scan]) -> None:
    for scan in traced:
        assert scan.peak_bytes is not None
        section.add(
            Figure(
                f"peak memory per user, {scan.users:,} users, first run (traced heap)",
                scan.peak_bytes / scan.users,
                "bytes/user",
                note=f"peak {scan.peak_bytes / 1e6:.2f} MB",
            )
        )
    if len(traced) == 2:
        small, big = traced
        assert small.peak_bytes is not None and big.peak_bytes is not None
        section.add(
            Figure(
                f"heap per additional user, {small.users:,} → {big.users:,} (traced)",
                (big.peak_bytes - small.peak_bytes) / (big.users - small.users),
                "bytes/user",
                note="fixed overhead cancels out",
            )
        )
    for scan in timed:
        section.add(
            Figure(
                f"peak RSS growth per user, {scan.users:,} users, first run (untraced)",
                (scan.rss_growth or 0) / scan.users,
                "bytes/user",
                note=f"{(scan.rss_growth or 0) / 1e6:.1f} MB",
            )
        )
    if len(timed) == 2:
        small, big = timed
        section.add(
            Figure(
                f"RSS per additional user, {small.users:,} → {big.users:,}",
                ((big.rss_growth or 0) - (small.rss_growth or 0)) / (big.users - small.users),
                "bytes/user",
                note="what Lambda's Max Memory Used would grow by",
            )
        )
