"""Sign-in overhead: what post_auth adds to a Cognito sign-in, against the least any enqueue could cost.

- warm: `app.post_auth(event, None)` against a bare `boto3.client("sqs").send_message` to the same in-process moto
  server (over HTTP), one call of each in turn, p50 and p99;
- cold: imports and the first call, in fresh interpreters, against `import boto3` and a bare client + send;
- worst case: SQS refusing, black-holed (a listener that accepts and never answers, one whose backlog is full so
  that connections never complete) or dripping a byte at a time; and what writing the recovery record costs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from bench.common import ROOT, Figure, Options, Section, fmt, interleaved, log, median, paired_ratio, percentile

PREFIX = "userhub-sync-bench-signin"
QUEUE_NAME = f"{PREFIX}-events"
POOL_ID = "us-east-1_BenchPool1"
CONNECTION_ID = "conn_bench"
BUDGET_SECONDS = 2.0


class _NullWriter(io.TextIOBase):
    """Swallows the handler's log lines and metrics while keeping their formatting cost in the timing."""

    def write(self, text: str) -> int:
        return len(text)


def signin_event(username: str) -> dict[str, Any]:
    """The one event builder, with an e-mail attribute, as most pools have."""
    from userhub_sync.scenarios.traffic import signin_event as event

    return event(username, POOL_ID, email=f"{username}@example.com")


def stage_environ(endpoint: str, queue_url: str | None) -> dict[str, str | None]:
    """The local stage, with post_auth's settings as deployed: its own timeouts and budget, INFO logs, metrics."""
    from userhub_sync.scenarios.rig import stage_environ as local_stage

    return local_stage(
        PREFIX,
        connection_id=CONNECTION_ID,
        pool_id=POOL_ID,
        endpoint=endpoint,
        EVENTS_QUEUE_URL=queue_url,
        LOG_LEVEL="INFO",
        USERHUB_SYNC_METRICS="on",
        SQS_CONNECT_TIMEOUT=None,
        SQS_READ_TIMEOUT=None,
        POST_AUTH_BUDGET_SECONDS=None,
    )


@contextlib.contextmanager
def deployed_logging() -> Iterator[None]:
    """Logs at INFO and metrics on, as deployed (config.json), written to a sink instead of the terminal."""
    logger = logging.getLogger("userhub_sync")
    level = logger.level
    logger.setLevel(logging.INFO)
    sink = _NullWriter()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logger.setLevel(level)


def _empty_queue() -> None:
    """Keep moto's queue shallow between blocks (its SendMessage is O(depth)); untimed."""
    from moto.sqs.models import sqs_backends

    from userhub_sync.local.moto import DEFAULT_REGION, MOTO_ACCOUNT

    queue = sqs_backends[MOTO_ACCOUNT][DEFAULT_REGION].queues[QUEUE_NAME]
    # moto refuses a second PurgeQueue within 60 s (PurgeQueueInProgress, as SQS does); this empties the queue
    # every 50 calls, so it forgets the last purge first. Only the benchmark's own untimed housekeeping does this.
    queue.last_purged_at = None
    sqs_backends[MOTO_ACCOUNT][DEFAULT_REGION].purge_queue(QUEUE_NAME)


def run(options: Options) -> Section:
    import boto3

    from userhub_sync.local.moto import MotoServer, patched_environ

    section = Section("signin", "2. Sign-in overhead (post_auth)")
    calls = 200 if options.quick else 500
    cold_runs = 5 if options.quick else 7
    with MotoServer() as moto, patched_environ(stage_environ(moto.endpoint, None)):
        queue_url = boto3.client("sqs").create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
        _warm(section, queue_url, calls)
        _cold(section, moto.endpoint, queue_url, cold_runs)
    _worst_case(section)
    section.method = [
        "moto's ThreadedMotoServer in this process, over HTTP on loopback; one standard queue kept under "
        "100 messages (moto's SendMessage is O(depth)). post_auth runs as deployed: LOG_LEVEL=INFO and embedded "
        "metrics on, its output written to a sink (so their cost is in the timing).",
        f"Warm: after one untimed call each, {calls} calls of `app.post_auth(event, None)`, {calls} of "
        f"`boto3.client('sqs').send_message(QueueUrl, MessageBody)` (same body size) and {calls} of post_auth with "
        "its SendMessage run inline instead of on a sender thread, rotating call by call.",
        f"Cold: {cold_runs} fresh interpreters per variant, interleaved; import time is measured inside the "
        "child (interpreter start-up excluded); the first call includes building the boto3 client.",
        "Worst case: loopback endpoints that refuse, accept and never answer, never complete the connection (full "
        "accept backlog), or drip one byte every 0.2 s; a new client each time (`post_auth.queue.reset()`), the "
        "deployed settings (budget 1.8 s for both attempts, connect 0.5 s, read 1.0 s). Sender threads are the "
        "process's, as in a container: calls given up on still hold theirs.",
    ]
    return section


def _warm(section: Section, queue_url: str, calls: int) -> None:
    import boto3

    import app
    from chalicelib import post_auth
    from userhub_sync.local.moto import new_container

    new_container()
    bare = boto3.client("sqs")
    subject_ms: list[float] = []
    bare_ms: list[float] = []
    inline_ms: list[float] = []  # post_auth with SendMessage run inline: what the sender-thread hop costs
    shipped_submit = post_auth.queue._submit

    def inline_submit(call: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(call())
        return future

    events = [signin_event(f"warm-{i:05d}") for i in range(calls + 1)]
    bodies = [post_auth.message_body(e, "SIGNIN", "post_auth") for e in events]
    failed_before = post_auth.metrics.totals.get("enqueue_failed", 0)
    with deployed_logging():
        assert app.post_auth(events[-1], None) is events[-1]  # the cold call: client and queue URL
        bare.send_message(QueueUrl=queue_url, MessageBody=bodies[-1])
        for i in range(calls):
            if i % 50 == 0:
                _empty_queue()
            order = ("subject", "bare", "inline")
            for which in order[i % 3 :] + order[: i % 3]:
                post_auth.queue._submit = inline_submit if which == "inline" else shipped_submit  # type: ignore[method-assign]
                started = time.perf_counter()
                if which in ("subject", "inline"):
                    returned = app.post_auth(events[i], None)
                    (subject_ms if which == "subject" else inline_ms).append((time.perf_counter() - started) * 1000)
                    if returned is not events[i]:
                        raise RuntimeError("post_auth did not return the event it was given")
                else:
                    bare.send_message(QueueUrl=queue_url, MessageBody=bodies[i])
                    bare_ms.append((time.perf_counter() - started) * 1000)
    post_auth.queue._submit = shipped_submit  # type: ignore[method-assign]
    _empty_queue()
    failed = post_auth.metrics.totals.get("enqueue_failed", 0) - failed_before
    if failed:
        raise RuntimeError(f"{failed} post_auth calls failed to enqueue during the warm run")
    for p in (50, 99):
        s, b = percentile(subject_ms, p), percentile(bare_ms, p)
        section.add(
            Figure(f"post_auth warm p{p}", s, "ms", b, f"bare send_message p{p}", s / b, "≤ 1.2×", s / b <= 1.2)
        )
    hop_us = median([(a - b) * 1000 for a, b in zip(subject_ms, inline_ms, strict=True)])
    section.add(
        Figure(
            "sender-thread hop: post_auth warm p50, SendMessage on a sender thread vs inline",
            median(subject_ms),
            "ms",
            median(inline_ms),
            "post_auth with the call inline (no wall-clock bound)",
            median(subject_ms) / median(inline_ms),
            note=f"median paired difference {hop_us:.0f} µs",
        )
    )
    section.tables.append(
        f"Warm latency (ms) over {calls} calls each — post_auth: p50 {fmt(percentile(subject_ms, 50))}, p90 "
        f"{fmt(percentile(subject_ms, 90))}, p99 {fmt(percentile(subject_ms, 99))}, max {fmt(max(subject_ms))}; "
        f"bare send_message: p50 {fmt(percentile(bare_ms, 50))}, p90 {fmt(percentile(bare_ms, 90))}, p99 "
        f"{fmt(percentile(bare_ms, 99))}, max {fmt(max(bare_ms))}."
    )


_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
mode = sys.argv[1]
if mode == "import-boto3":
    import boto3
elif mode == "import-post-auth":
    import boto3, app, chalicelib.post_auth
t1 = time.perf_counter()
out = {"import_s": t1 - t0, "pydantic": "pydantic" in sys.modules, "httpx": "httpx" in sys.modules}
if mode == "first-bare":
    import boto3
    t1 = time.perf_counter()
    boto3.client("sqs").send_message(QueueUrl=os.environ["BENCH_QUEUE_URL"], MessageBody=os.environ["BENCH_BODY"])
elif mode == "first-post-auth":
    import app
    t1 = time.perf_counter()
    event = json.loads(os.environ["BENCH_EVENT"])
    assert app.post_auth(event, None) is event
    from chalicelib import post_auth
    assert post_auth.metrics.totals.get("enqueued") == 1, "not enqueued"
t2 = time.perf_counter()
out.update(total_s=t2 - t0, call_s=t2 - t1, pydantic="pydantic" in sys.modules, httpx="httpx" in sys.modules)
print(json.dumps(out))
"""


def _child(mode: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"cold child {mode} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cold(section: Section, endpoint: str, queue_url: str, runs: int) -> None:
    from chalicelib import post_auth

    base = {k: v for k, v in os.environ.items()}
    base.update({k: v for k, v in stage_environ(endpoint, None).items() if v is not None})
    base["USERHUB_SYNC_METRICS"] = "off"
    event = signin_event("cold-user")
    base["BENCH_EVENT"] = json.dumps(event)
    base["BENCH_QUEUE_URL"] = queue_url
    base["BENCH_BODY"] = post_auth.message_body(event, "SIGNIN", "post_auth")
    with_url = {**base, "EVENTS_QUEUE_URL": queue_url}
    seen: dict[str, list[dict[str, Any]]] = {}

    def child(mode: str, env: dict[str, str], name: str) -> float:
        out = _child(mode, env)
        seen.setdefault(name, []).append(out)
        return out["import_s"] if mode.startswith("import") else out["total_s"]

    results = interleaved(
        runs,
        {
            "import boto3": lambda: child("import-boto3", base, "import boto3"),
            "import post_auth path": lambda: child("import-post-auth", base, "import post_auth path"),
            "first bare": lambda: child("first-bare", base, "first bare"),
            "first post_auth (URL set)": lambda: child("first-post-auth", with_url, "first post_auth (URL set)"),
            "first post_auth (GetQueueUrl)": lambda: child("first-post-auth", base, "first post_auth (GetQueueUrl)"),
        },
    )
    _empty_queue()
    imp_b, imp_s = results["import boto3"], results["import post_auth path"]
    ratio = paired_ratio(imp_s, imp_b)
    heavy = any(o["pydantic"] or o["httpx"] for o in seen["import post_auth path"] + seen["first post_auth (URL set)"])
    section.add(
        Figure(
            "cold import of the post_auth path (`import boto3, app, chalicelib.post_auth`)",
            median(imp_s) * 1000,
            "ms",
            median(imp_b) * 1000,
            "`import boto3`",
            ratio,
            "≤ 1.3×",
            ratio <= 1.3,
            note="pydantic or httpx imported!" if heavy else "",
        )
    )
    first_b = results["first bare"]
    for name in ("first post_auth (URL set)", "first post_auth (GetQueueUrl)"):
        values = results[name]
        label = "EVENTS_QUEUE_URL set" if "URL set" in name else "no EVENTS_QUEUE_URL: one GetQueueUrl more"
        section.add(
            Figure(
                f"cold start, import + first call ({label})",
                median(values) * 1000,
                "ms",
                median(first_b) * 1000,
                "import boto3 + client + send_message",
                paired_ratio(values, first_b),
            )
        )
    calls_b = [o["call_s"] * 1000 for o in seen["first bare"]]
    calls_s = [o["call_s"] * 1000 for o in seen["first post_auth (URL set)"]]
    section.tables.append(
        f"Cold, medians of {runs} fresh interpreters: `import boto3` {fmt(median(imp_b) * 1000)} ms, post_auth path "
        f"{fmt(median(imp_s) * 1000)} ms (+{fmt((median(imp_s) - median(imp_b)) * 1000)} ms). First call: "
        f"post_auth {fmt(median(calls_s))} ms after `import app` (it imports boto3 lazily, then builds its client "
        f"and sends), bare client + send {fmt(median(calls_b))} ms after `import boto3`. pydantic or httpx on the "
        f"post_auth path: {'yes' if heavy else 'no'}."
    )
    section.tables.append(_importtime_table())


def _importtime_table() -> str:
    """Where the post_auth path's import time goes (`python -X importtime`, one run, self+children ms)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import boto3, app, chalicelib.post_auth"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    top: dict[str, int] = {}
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if depth == 0:
            top[name.strip()] = top.get(name.strip(), 0) + int(parts[1])
    ours = {k: v for k, v in top.items() if k.split(".")[0] in ("app", "chalicelib", "chalice")}
    biggest = sorted(top.items(), key=lambda kv: -kv[1])[:5]
    return (
        "`python -X importtime` (one run, cumulative ms of top-level imports): "
        + ", ".join(f"{k} {v / 1000:.1f}" for k, v in biggest)
        + "; of which this project and Chalice: "
        + (", ".join(f"{k} {v / 1000:.1f}" for k, v in ours.items()) or "none at top level")
        + "."
    )


class _Listener:
    """A loopback TCP port where SQS misbehaves.

    `refused`: nothing listens. `accept`: accepts and never answers. `full`: the accept backlog is full, so
    connecting hangs. `drip`: answers one byte every 0.2 s for 10 s, which botocore's per-read timeout never ends.
    """

    def __init__(self, mode: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.mode = mode
        if mode == "refused":
            self.sock.close()
        elif mode in ("accept", "drip"):
            self.sock.listen(64)
            self.sock.settimeout(0.1)
            self._thread = threading.Thread(target=self._accept, daemon=True)
            self._thread.start()
        else:  # backlog full: one queued connection that nobody accepts; later SYNs are dropped
            self.sock.listen(0)
            filler = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            self.held.append(filler)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except (TimeoutError, OSError):
                continue
            if self.mode == "drip":
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(1)
            conn.recv(65536)
        ends = time.monotonic() + 10
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"a" * 200:
            if self._stop.is_set() or time.monotonic() > ends:
                break
            with contextlib.suppress(OSError):
                conn.send(bytes([byte]))
            time.sleep(0.2)

    def close(self) -> None:
        from chalicelib import post_auth

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        ends = time.monotonic() + 15  # calls post_auth gave up on end now; free their threads for what follows
        while post_auth.queue.busy and time.monotonic() < ends:
            time.sleep(0.02)


def _worst_case(section: Section) -> None:
    import app
    from chalicelib import post_auth
    from userhub_sync.local.moto import new_container, patched_environ

    rows = [
        "| SQS endpoint | EVENTS_QUEUE_URL | post_auth wall time, each sign-in (s) | enqueue failures "
        "| recovery records |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    worst = 0.0
    cases = (
        ("refused", "refuses connections", (True,)),
        ("accept", "accepts, never answers", (True, False)),
        ("full", "backlog full, never connects", (True,)),
        ("drip", "answers a byte every 0.2 s", (True,)),
    )
    for mode, label, url_options in cases:
        listener = _Listener(mode)
        endpoint = f"http://127.0.0.1:{listener.port}"
        try:
            for with_url in url_options:
                queue_url = f"{endpoint}/123456789012/{QUEUE_NAME}" if with_url else None
                times = []
                failed_before = post_auth.metrics.totals.get("enqueue_failed", 0)
                records_before = post_auth.metrics.totals.get("recovery_record_written", 0)
                with patched_environ(stage_environ(endpoint, queue_url)), deployed_logging():
                    for i in range(3):
                        new_container()  # a new container's client; its sender threads are the process's
                        event = signin_event(f"hole-{mode}-{i}")
                        started = time.perf_counter()
                        returned = app.post_auth(event, None)
                        times.append(time.perf_counter() - started)
                        if returned is not event:
                            raise RuntimeError(f"post_auth did not return the event when SQS {label}")
                new_container()
                failures = post_auth.metrics.totals.get("enqueue_failed", 0) - failed_before
                records = post_auth.metrics.totals.get("recovery_record_written", 0) - records_before
                worst = max(worst, *times)
                rows.append(
                    f"| {label} | {'set' if with_url else 'unset (GetQueueUrl first)'} | "
                    f"{', '.join(f'{t:.2f}' for t in times)} | {failures:.0f} of 3 | {records:.0f} of 3 |"
                )
                log(f"   SQS {label} (URL {'set' if with_url else 'unset'}): " + ", ".join(f"{t:.2f} s" for t in times))
        finally:
            listener.close()
    section.add(
        Figure(
            "worst case, SQS refused / black-holed / slow-drip (max of 15 sign-ins)",
            worst,
            "s",
            None,
            "bounded by POST_AUTH_BUDGET_SECONDS (1.8 s), both attempts",
            None,
            f"< {BUDGET_SECONDS:g} s",
            worst < BUDGET_SECONDS,
        )
    )
    section.tables.append("\n".join(rows))
    _recovery_record_cost(section)


def _recovery_record_cost(section: Section) -> None:
    """What writing the recovery record adds to a sign-in whose two attempts failed (µs, median of 2,000)."""
    from chalicelib import post_auth

    event = signin_event("record-cost")
    body = post_auth.message_body(event, "SIGNIN", "post_auth")
    reason = "EndpointConnectionError: Could not connect | EndpointConnectionError: Could not connect"
    sink = _NullWriter()
    samples = []
    with contextlib.redirect_stdout(sink):
        for _ in range(2000):
            started = time.perf_counter()
            sink.write(post_auth.redact(post_auth.recovery_record(body, event, reason)) + "\n")
            sink.flush()
            samples.append((time.perf_counter() - started) * 1e6)
    section.add(
        Figure(
            "recovery record: build and write one line (only when both attempts failed)",
            median(samples),
            "µs",
            None,
            "",
            None,
            "",
            None,
            note=f"p99 {percentile(samples, 99):.1f} µs; {len(post_auth.recovery_record(body, event, reason))} bytes",
        )
    )
