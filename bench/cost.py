"""Cost: count what a real local run of the pipeline asks of SQS, Lambda and UserHub, then price a month.

1,000 sign-ins go through the real `post_auth` handler into moto's SQS (in-process server, over HTTP); the local event
source mapping (`userhub_sync.local.event_source.LocalEventSource`) feeds the real `deliver` handler, which calls the
fake UserHub (+25 ms). Every SQS request is counted by API name and by who made it (a botocore `request-created.sqs`
hook on the session, inherited by every SQS client created after it: post_auth's, deliver's and the worker's), handler
invocations and their durations are timed, UserHub calls are read from the fake's journal, and log bytes are counted at
the handlers' stdout/stderr. Run once without faults and once with 5 % transient (503) UserHub failures.

Priced as deployed: post_auth writes a line only when something other than a plain success happened (counted), and
`wire` turns off Lambda's START/END/REPORT lines for post_auth (modelled: not written locally). The configuration
before those two changes (one EMF line per sign-in, platform lines on) is priced too, for information."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, Options, Section, fmt, log, median

SIGNINS = 1000
MAX_CHUNK = 100  # at most this many sign-ins between drains: moto's SendMessage is O(queue depth)
FAULT_RATE = 0.05
LATENCY_MS = 25.0
POOL_ID = "us-east-1_BenchPool1"
CONNECTION_ID = "conn_bench"
DAYS = 30
SIGNINS_PER_DAY = 1_000_000
# AWS list prices, us-east-1, as published on the AWS pricing pages (not fetched by the benchmark; free tier ignored)
PRICES_AS_OF = "2026-11 (AWS pricing pages for Lambda, SQS and CloudWatch; check before quoting)"
SQS_PER_MILLION = 0.40  # standard queue, per million requests (each 64 KB chunk of a payload is one request)
LAMBDA_PER_MILLION = 0.20  # requests
LAMBDA_PER_GB_SECOND = 0.0000166667  # x86
LOGS_PER_GB = 0.50  # CloudWatch Logs standard ingestion
LAMBDA_PLATFORM_LOG_BYTES = 300  # START, END and REPORT lines Lambda writes per invocation (approximate)
SIGNINS_PER_SECOND = SIGNINS_PER_DAY / 86_400
GUIDE_MEMORY_MB = 128


class _Role:
    """Who is making SQS requests now. Not thread-local: post_auth sends from its sender threads."""

    name = "event source mapping"


ROLE = _Role()


class _CountingWriter(io.TextIOBase):
    """Counts the bytes a handler writes (its JSON logs and EMF metrics: what CloudWatch Logs would ingest)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        return len(text)


@dataclass
class Tally:
    """What one scenario asked for."""

    sqs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (role, API) -> HTTP requests
    durations: dict[str, list[float]] = field(default_factory=lambda: {"post_auth": [], "deliver": []})
    log_bytes: Counter[str] = field(default_factory=Counter)
    userhub_calls: int = 0
    userhub_status: Counter[int] = field(default_factory=Counter)
    delivered: int = 0
    dead: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    silent_post_auth: int = 0  # post_auth invocations that wrote nothing at all (plain successes)

    def sqs_total(self, role: str | None = None) -> int:
        return sum(v for (r, _), v in self.sqs.items() if role is None or r == role)


@contextlib.contextmanager
def _as(role: str, tally: Tally) -> Iterator[None]:
    """Attribute SQS requests, duration and log bytes to `role` while a handler runs."""
    previous = ROLE.name
    ROLE.name = role
    writer = _CountingWriter()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
            yield
    finally:
        tally.durations[role].append((time.perf_counter() - started) * 1000)
        tally.log_bytes[role] += writer.bytes
        tally.silent_post_auth += int(role == "post_auth" and writer.bytes == 0)
        ROLE.name = previous


def _memory_sizes() -> dict[str, int]:
    """Configured memory per function, from .chalice/config.json (the prod stage)."""
    config = json.loads(Path(ROOT, ".chalice", "config.json").read_text())
    functions = config["stages"]["prod"]["lambda_functions"]
    return {name: int(functions[name]["lambda_memory_size"]) for name in ("post_auth", "deliver")}


def run(options: Options) -> Section:
    import boto3

    from userhub_sync.local.fake_userhub import FakeUserHub
    from userhub_sync.local.moto import MotoServer, patched_environ
    from userhub_sync.scenarios.rig import stage_environ

    section = Section("cost", "4. Cost per 1,000 sign-ins and per month")
    key = "userhub_admin_bench_" + secrets.token_hex(8)
    tallies: dict[str, Tally] = {}
    counting: list[Tally] = []

    def count(operation_name: str | None = None, **_: Any) -> None:
        if counting and operation_name and ROLE.name != "setup":  # one per HTTP attempt: what SQS bills
            counting[-1].sqs[(ROLE.name, operation_name)] += 1

    session = boto3._get_default_session()
    session.events.register("request-created.sqs", count)
    logger = logging.getLogger("userhub_sync")
    level = logger.level
    try:
        with MotoServer() as moto, FakeUserHub(admin_keys=[key], latency_ms=LATENCY_MS, seed=5) as hub:
            # as deployed (INFO logs, metrics, post_auth's own timeouts), but short backoff for the retries
            base = stage_environ(
                "userhub-sync-bench-cost",
                connection_id=CONNECTION_ID,
                pool_id=POOL_ID,
                userhub_url=hub.url,
                admin_key=key,
                endpoint=moto.endpoint,
                LOG_LEVEL="INFO",
                USERHUB_SYNC_METRICS="on",
                DELIVERY_CONCURRENCY="16",
                RETRY_MAX_SECONDS="4",
                SQS_CONNECT_TIMEOUT=None,
                SQS_READ_TIMEOUT=None,
                POST_AUTH_BUDGET_SECONDS=None,
            )
            logger.setLevel(logging.INFO)
            for tag, name, fault_rate in (
                ("clean", "no faults", 0.0),
                ("faults", f"{FAULT_RATE:.0%} transient faults", FAULT_RATE),
            ):
                tally = Tally()
                counting.append(tally)
                with patched_environ(base):
                    _scenario(tally, hub, fault_rate, tag)
                counting.pop()
                tallies[name] = tally
                log(
                    f"   {name}: {tally.sqs_total()} SQS requests, {len(tally.durations['deliver'])} deliver "
                    f"invocations, {tally.userhub_calls} UserHub calls, {tally.seconds:.1f} s"
                )
            guide_ms = _guide_call_ms(hub.url, key)
    finally:
        session.events.unregister("request-created.sqs", count)
        logger.setLevel(level)
    _report(section, tallies, guide_ms)
    return section


def deployed_batching() -> tuple[int, int, int]:
    """(DELIVER_BATCH_SIZE, batching window in s, records per deliver invocation at SIGNINS_PER_DAY): with a steady
    trickle Lambda's event source fills a batch for the window, so a batch holds about rate × window records."""
    import app

    size, window = app.DELIVER_BATCH_SIZE, app.DELIVER_BATCHING_WINDOW
    return size, window, min(size, max(1, math.ceil(SIGNINS_PER_SECOND * window)))


def _scenario(tally: Tally, hub: Any, fault_rate: float, tag: str) -> None:
    import boto3

    import app
    from bench.signin import signin_event
    from chalicelib import post_auth
    from userhub_sync.local.event_source import LocalEventSource
    from userhub_sync.local.fake_userhub import Fault
    from userhub_sync.local.moto import new_container, patched_environ
    from userhub_sync.ops.queues import QueueSpec, ensure_queues

    events_name, dlq_name = f"userhub-sync-bench-cost-{tag}", f"userhub-sync-bench-cost-{tag}-dlq"
    ROLE.name = "setup"  # bootstrap's work, and the harness's own checks, are not per sign-in
    state = ensure_queues(
        boto3.client("sqs"), QueueSpec(events_name, dlq_name, max_receive_count=8, visibility_timeout=30)
    )
    hub.reset()
    if fault_rate:
        hub.add_fault(Fault(status=503, probability=fault_rate))
    with patched_environ(
        {"EVENTS_QUEUE_NAME": events_name, "DEAD_LETTER_QUEUE_NAME": dlq_name, "EVENTS_QUEUE_URL": state.events_url}
    ):  # `bootstrap` writes EVENTS_QUEUE_URL
        new_container()  # new containers for both functions: their cold starts are counted
        failed_before = post_auth.metrics.totals.get("enqueue_failed", 0)
        per_batch = deployed_batching()[2]
        chunk_size = per_batch * max(1, MAX_CHUNK // per_batch)  # whole batches between drains
        source = LocalEventSource(
            boto3.client("sqs"),
            state.events_url,
            _deliver_counted(app.deliver, tally),
            batch_size=per_batch,
            wait_seconds=0,
            function_timeout=60,
        )
        backlog = source.backlog

        def harness_backlog() -> int:  # the drain check is ours, not the mapping's: not counted
            ROLE.name = "setup"
            try:
                return backlog()
            finally:
                ROLE.name = "event source mapping"

        source.backlog = harness_backlog  # type: ignore[method-assign]
        ROLE.name = "event source mapping"
        started = time.monotonic()
        for chunk in range(0, SIGNINS, chunk_size):
            for i in range(chunk, min(chunk + chunk_size, SIGNINS)):
                event = signin_event(f"cost-{tag}-{i:05d}")
                with _as("post_auth", tally):
                    returned = app.post_auth(event, None)
                if returned is not event:
                    raise RuntimeError("post_auth did not return its event")
            while source.poll_once().received:  # what the mapping's pollers would take right away
                pass
        source.wait_seconds = 1
        source.run(drain=True, should_stop=lambda: time.monotonic() - started > 120)  # retries come back
        tally.seconds = time.monotonic() - started
        hub.clear_faults()
        if post_auth.metrics.totals.get("enqueue_failed", 0) != failed_before:
            raise RuntimeError("post_auth failed to enqueue during the cost run")
        tally.delivered = source.totals.deleted
    journal = [e for e in hub.journal() if e.verb == "event"]
    tally.userhub_calls = len(journal)
    tally.userhub_status = Counter(e.status or 0 for e in journal)
    accepted = {e.external_id for e in hub.events()}
    missing = SIGNINS - len(accepted)
    if missing:
        raise RuntimeError(f"{missing} sign-ins never reached the fake UserHub")
    new_container()


def _deliver_counted(
    handler: Callable[[dict[str, Any], Any], Any], tally: Tally
) -> Callable[[dict[str, Any], Any], Any]:
    def invoke(event: dict[str, Any], context: Any) -> Any:
        tally.batch_sizes.append(len(event.get("Records") or []))
        with _as("deliver", tally):
            return handler(event, context)

    return invoke


def _guide_call_ms(url: str, key: str, calls: int = 60) -> float:
    """The guide's inline POST, warm, against the same fake: what its Lambda would be billed for per sign-in."""
    import httpx

    from chalicelib.userhub import event_path

    times = []
    with httpx.Client(base_url=url, timeout=2.0, headers={"user-agent": "UserHub-AmazonCognito/1.0"}) as client:
        for i in range(calls):
            started = time.perf_counter()
            client.post(
                event_path(f"guide-{i}", CONNECTION_ID),
                json={"type": "SIGNIN"},
                headers={"authorization": f"Bearer {key}"},
            )
            times.append((time.perf_counter() - started) * 1000)
    return median(times[5:])


def _gb_seconds(durations_ms: list[float], memory_mb: int) -> float:
    """Lambda bills each invocation's duration rounded up to the millisecond."""
    return sum(math.ceil(d) for d in durations_ms) / 1000 * memory_mb / 1024


def plain_success_emf_bytes(milliseconds: float) -> int:
    """The EMF line post_auth wrote for every plain success before it stopped (same code: `Metrics._document`)."""
    from chalicelib.observability import Metrics

    line = Metrics("post_auth")._document({"enqueued": 1}, {"post_auth_ms": [round(milliseconds, 2)]}, {})
    return len(line.encode()) + 1  # and its newline


def _monthly(
    tally: Tally,
    memory: dict[str, int],
    *,
    post_auth_platform_lines: bool = False,
    emf_per_success: bool = False,
) -> dict[str, float]:
    """As deployed by default: post_auth's system log level WARN (`wire`, the template), so no START/END/REPORT lines
    for it. `post_auth_platform_lines=True`: `wire --keep-platform-logs`. `emf_per_success=True`: as before, when
    each plain success wrote its EMF line too."""
    scale = SIGNINS_PER_DAY * DAYS / SIGNINS  # this run's counts → a month of 1 M sign-ins a day
    invocations = len(tally.durations["post_auth"]) + len(tally.durations["deliver"])
    gb_s = _gb_seconds(tally.durations["post_auth"], memory["post_auth"]) + _gb_seconds(
        tally.durations["deliver"], memory["deliver"]
    )
    with_lines = invocations if post_auth_platform_lines else len(tally.durations["deliver"])
    log_bytes = sum(tally.log_bytes.values()) + with_lines * LAMBDA_PLATFORM_LOG_BYTES
    if emf_per_success:
        log_bytes += tally.silent_post_auth * plain_success_emf_bytes(median(tally.durations["post_auth"]))
    return {
        "SQS requests": tally.sqs_total() * scale / 1e6 * SQS_PER_MILLION,
        "Lambda requests": invocations * scale / 1e6 * LAMBDA_PER_MILLION,
        "Lambda duration": gb_s * scale * LAMBDA_PER_GB_SECOND,
        "CloudWatch Logs ingestion": log_bytes * scale / 1e9 * LOGS_PER_GB,
    }


def _guide_monthly(call_ms: float) -> dict[str, float]:
    month = SIGNINS_PER_DAY * DAYS
    return {
        "SQS requests": 0.0,
        "Lambda requests": month / 1e6 * LAMBDA_PER_MILLION,
        "Lambda duration": month * math.ceil(call_ms) / 1000 * GUIDE_MEMORY_MB / 1024 * LAMBDA_PER_GB_SECOND,
        "CloudWatch Logs ingestion": month * LAMBDA_PLATFORM_LOG_BYTES / 1e9 * LOGS_PER_GB,
    }


def _report(section: Section, tallies: dict[str, Tally], guide_ms: float) -> None:
    memory = _memory_sizes()
    per = 1000 / SIGNINS
    roles = ("post_auth", "deliver", "event source mapping")
    apis = sorted({api for t in tallies.values() for (_, api) in t.sqs})
    names = list(tallies)
    rows = ["| per 1,000 sign-ins | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for role in roles:
        for api in apis:
            values = [t.sqs[(role, api)] * per for t in tallies.values()]
            if any(values):
                rows.append(f"| SQS {api} ({role}) | " + " | ".join(fmt(v) for v in values) + " |")
    rows.append(
        "| **SQS requests, all** | " + " | ".join(f"**{fmt(t.sqs_total() * per)}**" for t in tallies.values()) + " |"
    )
    rows.append(
        "| Lambda invocations: post_auth | "
        + " | ".join(fmt(len(t.durations["post_auth"]) * per) for t in tallies.values())
        + " |"
    )
    rows.append(
        "| Lambda invocations: deliver (batches) | "
        + " | ".join(fmt(len(t.durations["deliver"]) * per) for t in tallies.values())
        + " |"
    )
    rows.append(
        "| mean deliver batch (records) | "
        + " | ".join(fmt(sum(t.batch_sizes) / max(len(t.batch_sizes), 1)) for t in tallies.values())
        + " |"
    )
    rows.append(
        "| UserHub calls (HTTP status: count) | "
        + " | ".join(
            f"{fmt(t.userhub_calls * per)} ({', '.join(f'{s}: {n}' for s, n in sorted(t.userhub_status.items()))})"
            for t in tallies.values()
        )
        + " |"
    )
    rows.append(
        "| post_auth duration, median / mean (ms) | "
        + " | ".join(
            f"{fmt(median(t.durations['post_auth']))} / {fmt(_mean(t.durations['post_auth']))}"
            for t in tallies.values()
        )
        + " |"
    )
    rows.append(
        "| deliver duration per invocation, median / mean (ms) | "
        + " | ".join(
            f"{fmt(median(t.durations['deliver']))} / {fmt(_mean(t.durations['deliver']))}" for t in tallies.values()
        )
        + " |"
    )
    for role in ("post_auth", "deliver"):
        rows.append(
            f"| log bytes written by {role} (JSON lines + EMF) | "
            + " | ".join(fmt(t.log_bytes[role] * per) for t in tallies.values())
            + " |"
        )
    rows.append(
        "| post_auth invocations that wrote nothing (plain successes) | "
        + " | ".join(fmt(t.silent_post_auth * per) for t in tallies.values())
        + " |"
    )
    rows.append("| wall time of the run (s) | " + " | ".join(f"{t.seconds:.1f}" for t in tallies.values()) + " |")
    section.tables.append("Counted in the runs (scaled to 1,000 sign-ins):\n\n" + "\n".join(rows))

    clean, faulty = tallies[names[0]], tallies[names[1]]
    section.add(
        Figure(
            "SQS requests per 1,000 sign-ins",
            clean.sqs_total() * per,
            "requests",
            note=f"{fmt(faulty.sqs_total() * per)} with {FAULT_RATE:.0%} faults",
        )
    )
    section.add(
        Figure(
            "Lambda invocations per 1,000 sign-ins",
            (len(clean.durations["post_auth"]) + len(clean.durations["deliver"])) * per,
            "invocations",
            SIGNINS * per,
            "guide: one per sign-in",
            (len(clean.durations["post_auth"]) + len(clean.durations["deliver"])) / SIGNINS,
            note=f"{fmt(len(faulty.durations['post_auth']) + len(faulty.durations['deliver']))} with "
            f"{FAULT_RATE:.0%} faults",
        )
    )
    section.add(
        Figure(
            "UserHub calls per 1,000 sign-ins",
            clean.userhub_calls * per,
            "calls",
            SIGNINS * per,
            "guide: one per sign-in",
            clean.userhub_calls / SIGNINS,
            note=f"{fmt(faulty.userhub_calls * per)} with {FAULT_RATE:.0%} faults, every retry counted",
        )
    )

    ours = {name: _monthly(t, memory) for name, t in tallies.items()}
    guide = _guide_monthly(guide_ms)
    month_rows = [
        "| monthly, 1 M sign-ins a day × 30 | "
        + " | ".join(f"pipeline, {n}" for n in names)
        + " | guide's inline Lambda |",
        "| --- |" + " ---: |" * (len(names) + 1),
    ]
    for item in guide:
        month_rows.append(
            f"| {item} | " + " | ".join(f"${ours[n][item]:,.2f}" for n in names) + f" | ${guide[item]:,.2f} |"
        )
    month_rows.append(
        "| **total** | "
        + " | ".join(f"**${sum(ours[n].values()):,.2f}**" for n in names)
        + f" | **${sum(guide.values()):,.2f}** |"
    )
    section.tables.append("\n".join(month_rows))
    total, guide_total = sum(ours[names[0]].values()), sum(guide.values())
    section.add(
        Figure(
            "monthly cost, 1 M sign-ins/day (no faults)",
            total,
            "USD",
            guide_total,
            "guide's inline Lambda",
            total / guide_total,
            "≤ 2.0 × guide",
            total / guide_total <= 2.0,
            note=f"${sum(ours[names[1]].values()):,.2f} with {FAULT_RATE:.0%} faults",
        )
    )
    loud = sum(_monthly(clean, memory, post_auth_platform_lines=True).values())
    old = sum(_monthly(clean, memory, post_auth_platform_lines=True, emf_per_success=True).values())
    section.add(
        Figure(
            "monthly cost with `wire --keep-platform-logs` (START/END/REPORT lines for post_auth)",
            loud,
            "USD",
            guide_total,
            "guide's inline Lambda",
            loud / guide_total,
            note="information: the option, not the default",
        )
    )
    section.add(
        Figure(
            "monthly cost in the old configuration (an EMF line per sign-in, platform lines on)",
            old,
            "USD",
            guide_total,
            "guide's inline Lambda",
            old / guide_total,
            note=f"information: {plain_success_emf_bytes(median(clean.durations['post_auth']))} bytes of EMF per "
            "plain success, added to this run's counts",
        )
    )
    trickle = _trickle(clean, memory)
    section.tables.append(
        f"If traffic trickled in so that every deliver batch held one message (no batching window), the same "
        f"month would cost about ${trickle:,.2f}: one deliver invocation and one ReceiveMessage + one "
        "DeleteMessageBatch per sign-in (estimated from this run's per-record figures, not measured)."
    )
    size, window, per_batch = deployed_batching()
    section.method = [
        f"{SIGNINS:,} distinct users sign in through `app.post_auth` (LOG_LEVEL=INFO, metrics on, as deployed; "
        f"EVENTS_QUEUE_URL set, as `bootstrap` writes it) into moto's SQS (in-process ThreadedMotoServer, HTTP). "
        f"The local event source mapping (`LocalEventSource`) polls until the queue is empty after every "
        f"{per_batch * max(1, MAX_CHUNK // per_batch)} sign-ins and invokes `app.deliver` "
        f"(DELIVERY_CONCURRENCY=16) on batches of {per_batch}: app.py's batching window of {window} s at "
        f"{SIGNINS_PER_DAY:,} sign-ins a day ({SIGNINS_PER_SECOND:.1f}/s) fills a batch with about that many "
        f"(DELIVER_BATCH_SIZE {size} is the cap, reached only with a backlog). This assumes one poller collects the "
        "window's messages; Lambda's several pollers may split them into smaller batches. The fake UserHub "
        f"(in-process, +{LATENCY_MS:g} ms) answers. Then long polls drain the retries.",
        "Counted, not assumed: SQS HTTP requests by API name and caller (a `request-created.sqs` hook on the boto3 "
        "session, inherited by every SQS client: post_auth's `queue.client`, deliver's `get_deliverer().sqs`, the "
        "worker's), handler invocations and their wall time, UserHub calls (the fake's journal), bytes the "
        "handlers wrote to stdout/stderr (their JSON logs and EMF metrics, which CloudWatch Logs ingests).",
        "The worker's ReceiveMessage and DeleteMessageBatch stand in for the Lambda event source mapping's own "
        "polling. In AWS those are billed SQS requests too, and the mapping also long-polls an empty queue "
        "(pollers keep asking when there is nothing to deliver): those empty receives are not in these counts.",
        f"The {FAULT_RATE:.0%}-fault run adds a 503 on 5 % of UserHub calls; RETRY_BASE_SECONDS=1 (30 s deployed) "
        "only shortens the wait, the counts are the same.",
        f"Prices: list prices for us-east-1 as published by AWS, as of {PRICES_AS_OF}: SQS standard "
        f"${SQS_PER_MILLION:.2f} per million requests; Lambda ${LAMBDA_PER_MILLION:.2f} per million requests + "
        f"${LAMBDA_PER_GB_SECOND} per GB-second (x86, each invocation rounded up to 1 ms); CloudWatch Logs "
        f"${LOGS_PER_GB:.2f} per GB ingested (+≈{LAMBDA_PLATFORM_LOG_BYTES} bytes of START/END/REPORT lines per "
        "deliver invocation, an estimate; none for post_auth, whose LoggingConfig `wire` and the template set to "
        "system log level WARN). Free tiers and log storage are ignored.",
        "post_auth's own bytes are counted as it writes them: nothing on a plain first-attempt success, its EMF line "
        "and reason lines otherwise. The old configuration adds the EMF line each plain success used to write "
        "(built by the same `Metrics` code with this run's median duration) and post_auth's platform lines.",
        f"Memory from .chalice/config.json: post_auth {memory['post_auth']} MB, deliver {memory['deliver']} MB. "
        f"Durations measured here (loopback moto and fake UserHub); in AWS the SQS and UserHub round trips will "
        f"differ. Guide: one {GUIDE_MEMORY_MB} MB invocation per sign-in lasting one UserHub call, "
        f"{fmt(guide_ms)} ms measured warm against the same fake (Node's own overhead not included).",
    ]
    section.notes.append(
        "Reconcile is not in the monthly figure (it depends on the pool, not on sign-ins): at the deployed 5 req/s "
        "a 50k-user pool is 834 ListUsers pages ≈ 167 s of a 1,024 MB function per night ≈ 5,000 GB-s ≈ $0.08 a "
        "month; ListUsers itself is not billed."
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _trickle(tally: Tally, memory: dict[str, int]) -> float:
    """The month if each sign-in were its own deliver batch (per-record costs from the measured run)."""
    scale = SIGNINS_PER_DAY * DAYS
    deliver_ms = median(tally.durations["deliver"]) if tally.durations["deliver"] else 0.0
    per_record_ms = max(deliver_ms / max(sum(tally.batch_sizes) / max(len(tally.batch_sizes), 1), 1), LATENCY_MS)
    post_ms = math.ceil(_mean(tally.durations["post_auth"]))
    sqs = 3 * scale / 1e6 * SQS_PER_MILLION  # send, receive, delete per sign-in
    requests = 2 * scale / 1e6 * LAMBDA_PER_MILLION
    duration = scale * (post_ms * memory["post_auth"] + math.ceil(per_record_ms) * memory["deliver"]) / 1000 / 1024
    per_signin_log = sum(tally.log_bytes.values()) / SIGNINS
    logs = scale * (per_signin_log + LAMBDA_PLATFORM_LOG_BYTES) / 1e9 * LOGS_PER_GB  # deliver's; post_auth's are off
    return sqs + requests + duration * LAMBDA_PER_GB_SECOND + logs
