"""Delivery throughput: the deliver handler against two baselines, on one fake UserHub in its own process.

- subject: `app.deliver(event, context)` fed synthetic Lambda SQS batches (the warm container's Deliverer, with an
  SQS stand-in that fails the run if touched: on the all-success path deliver must make no SQS call);
- (a) the connection guide's way: one inline POST per event, in turn (httpx.Client, 2 s timeout, keep-alive);
- (b) a bare httpx async loop (AsyncClient + Semaphore(c) + gather) with the same URL, headers, body and pool
  limits: what this machine can do at that concurrency with the same HTTP stack;
- (b′) the same loop with its pool split into clients of at most 8 connections, as deliver's is;
- (b″) the same requests, as deliver's client sends them, straight to the transports of pools of at most 8
  connections (no httpx client layer): the best bare loop, and the baseline the high-concurrency target is stated on;
- the batch tail: deliver at the deployed batch size and concurrency against (b″) as one continuous stream (Lambda
  waits for a whole batch before it sends the next, so the last calls of each batch leave slots idle) and against
  (b″) cut into the same batches.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    Options,
    Section,
    fake_userhub_process,
    fmt,
    http_post,
    interleaved,
    log,
    median,
    paired_ratio,
)
from bench.fakes import NoSQS
from chalicelib.sqs_limits import MAX_EVENT_SOURCE_BATCH

LATENCY_MS = 25.0
CONCURRENCIES = (1, 4, 16, 64, 256)
SHARD = 8  # connections per client in (b′)
SHARDED_AT = (16, 64, 256)  # where (b′) differs from (b)
HIGH_AT = (64, 256)  # deliver ≥ 0.95 × (b′) here
SINGLE_POOL_AT = (1, 4, 16, 64)  # (b); at 256 its one pool collapses (finding 1) and its 256 more connections
# to the fake (a thread each) overload it on a 2-core machine
REOFFERS = 3  # a record deliver gives back is offered again, as SQS would, at most this many times
CONNECTION_ID = "conn_bench"
POOL_ID = "us-east-1_BenchPool1"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:userhub-sync-bench-events"
PLOT_NAME = "delivery_throughput.png"
GUIDE_USER_AGENT = "UserHub-AmazonCognito/1.0"


def make_records(n: int, tag: str) -> list[dict[str, Any]]:
    """n Lambda SQS records with unique message ids and usernames, as `lambda_record` builds them."""
    from userhub_sync.local.event_source import lambda_record

    sent = str(int(time.time() * 1000))
    records = []
    for i in range(n):
        body = json.dumps(
            {
                "v": 1,
                "id": uuid.uuid4().hex,
                "type": "SIGNIN",
                "user_pool_id": POOL_ID,
                "username": f"bench-{tag}-{i:06d}",
                "connection_id": CONNECTION_ID,
                "event_time": "2026-01-01T00:00:00.000+00:00",
                "source": "post_auth",
            },
            separators=(",", ":"),
        )
        message = {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": f"rh-{tag}-{i}-{uuid.uuid4().hex}",
            "Body": body,
            "Attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": sent,
                "ApproximateFirstReceiveTimestamp": sent,
                "SenderId": "AROABENCH",
            },
        }
        records.append(lambda_record(message, QUEUE_ARN, "us-east-1"))
    return records


def event_paths(n: int, tag: str) -> list[str]:
    from chalicelib.userhub import event_path

    return [event_path(f"bench-{tag}-{i:06d}", CONNECTION_ID) for i in range(n)]


class DeliverSubject:
    """The deliver handler as a warm Lambda container runs it, at one DELIVERY_CONCURRENCY."""

    def __init__(self, concurrency: int, environ: dict[str, str | None]) -> None:
        from chalicelib.delivery import Deliverer
        from chalicelib.settings import get_settings
        from userhub_sync.local.moto import patched_environ

        self.environ = {**environ, "DELIVERY_CONCURRENCY": str(concurrency)}
        with patched_environ(self.environ):
            settings = get_settings()
        assert settings.delivery_concurrency == concurrency
        self.deliverer = Deliverer(settings, sqs=NoSQS())
        self.concurrency = concurrency
        self.invocations = 0
        self.reoffered = 0  # records deliver gave back (a connection the overloaded fake dropped), offered again

    def run(self, records: list[dict[str, Any]], batch: int) -> None:
        import app
        from chalicelib import delivery
        from chalicelib.settings import get_settings
        from userhub_sync.local.event_source import LambdaContext
        from userhub_sync.local.moto import patched_environ

        delivery._deliverer = self.deliverer  # this concurrency's warm container
        with patched_environ(self.environ):  # the environment it was built for, or get_deliverer() replaces it
            settings = get_settings()  # equal to the deliverer's; make it the same object, as in a warm container
            assert settings == self.deliverer.settings
            self.deliverer.settings = settings
            for start in range(0, len(records), batch):
                pending = records[start : start + batch]
                for _ in range(REOFFERS + 1):  # as the queue would: a record deliver gives back comes again
                    response = app.deliver({"Records": pending}, LambdaContext("userhub-sync-bench-deliver", 60.0))
                    self.invocations += 1
                    back = {failure["itemIdentifier"] for failure in response.get("batchItemFailures") or []}
                    if not back:
                        break
                    self.reoffered += len(back)
                    pending = [record for record in pending if record["messageId"] in back]
                else:
                    raise RuntimeError(f"deliver kept giving records back: {str(response)[:200]}")
            assert delivery._deliverer is self.deliverer

    def run_for(self, records: list[dict[str, Any]], batch: int, seconds: float) -> float:
        """Invoke on consecutive batches until `seconds` have passed (or the records run out); events/s."""
        started = time.perf_counter()
        done = 0
        while done < len(records) and time.perf_counter() - started < seconds:
            self.run(records[done : done + batch], batch)
            done += len(records[done : done + batch])
        return done / (time.perf_counter() - started)

    def close(self) -> None:
        self.deliverer.loop.run_until_complete(self.deliverer.client.aclose())
        self.deliverer.loop.close()


class BareLoop:
    """Baseline (b): the same POSTs from one pooled httpx.AsyncClient, at most `concurrency` in flight.

    With `shard`, the pool is split into clients of at most `shard` connections, used in turn: (b′), which shows
    how much of (b) at high concurrency is httpcore's pool bookkeeping (O(connections²) per request in 1.0.9).
    With `direct` as well, each request goes straight to a pool's httpx transport with deliver's timeouts, as
    deliver's client sends it (no client layer: cookies, auth and redirect flows, URL merging): (b″), the best
    bare loop httpx allows.
    """

    def __init__(self, url: str, key: str, concurrency: int, shard: int | None = None, direct: bool = False) -> None:
        import httpx

        from chalicelib.userhub import API_VERSION, USER_AGENT

        self.concurrency = concurrency
        self.retried = 0
        self.loop = asyncio.new_event_loop()
        self.url = url
        self.auth = {"authorization": f"Bearer {key}"}
        shards = math.ceil(concurrency / shard) if shard else 1
        size = math.ceil(concurrency / shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=30)
        timeout = httpx.Timeout(5.0, connect=2.0)
        headers = {"user-agent": USER_AGENT, "userhub-api-version": API_VERSION}
        self.clients = [
            httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers)
            for _ in range(0 if direct else shards)
        ]
        self.transports = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards if direct else 0)]
        self.direct_headers = {**headers, "content-type": "application/json", **self.auth}
        self.direct_extensions = {"timeout": httpx.Timeout(5.0, connect=2.0, pool=7.0).as_dict()}

    async def _post(self, i: int, path: str) -> int:
        import httpx

        if not self.transports:
            response = await self.clients[i % len(self.clients)].post(path, json={"type": "SIGNIN"}, headers=self.auth)
            return response.status_code
        request = httpx.Request(
            "POST",
            self.url + path,
            content=b'{"type": "SIGNIN"}',
            headers=self.direct_headers,
            extensions=self.direct_extensions,
        )
        response = await self.transports[i % len(self.transports)].handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code

    async def _post_all(self, paths: list[str], seconds: float, batch: int | None) -> float:
        import httpx

        semaphore = asyncio.Semaphore(self.concurrency)
        started = time.perf_counter()
        deadline, done, last = started + seconds, 0, started
        step = batch or len(paths) or 1

        async def one(i: int, path: str) -> None:
            nonlocal done, last
            async with semaphore:
                if time.perf_counter() >= deadline:
                    return  # the measurement is over: the rest of the stream is not started
                try:
                    status = await self._post(i, path)
                except httpx.TransportError:  # the fake dropped a connection under load: once more, as deliver would
                    self.retried += 1
                    status = await self._post(i, path)
                if status != 200:
                    raise RuntimeError(f"bare loop got HTTP {status}")
                done, last = done + 1, time.perf_counter()

        for first in range(0, len(paths), step):  # with `batch`: each batch ends before the next starts, as in Lambda
            if time.perf_counter() >= deadline:
                break
            await asyncio.gather(*(one(i, p) for i, p in enumerate(paths[first : first + step], first)))
        return done / (last - started) if done else 0.0

    def run(self, paths: list[str], seconds: float = math.inf, batch: int | None = None) -> float:
        """Post the stream (until `seconds` have passed), whole or cut into batches; events/s."""
        return self.loop.run_until_complete(self._post_all(paths, seconds, batch))

    def close(self) -> None:
        for client in self.clients:
            self.loop.run_until_complete(client.aclose())
        for transport in self.transports:
            self.loop.run_until_complete(transport.aclose())
        self.loop.close()


class GuideLoop:
    """Baseline (a): the connection guide's inline call, warm: one POST per event, each waiting for the last."""

    def __init__(self, url: str, key: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=2.0, headers={"user-agent": GUIDE_USER_AGENT})
        self.auth = {"authorization": f"Bearer {key}"}

    def run(self, paths: list[str], seconds: float = math.inf) -> float:
        """One POST after another (until `seconds` have passed); events/s."""
        started = time.perf_counter()
        done = 0
        for path in paths:
            if time.perf_counter() - started >= seconds:
                break
            response = self.client.post(path, json={"type": "SIGNIN"}, headers=self.auth)
            if response.status_code != 200:
                raise RuntimeError(f"guide loop got HTTP {response.status_code}")
            done += 1
        return done / (time.perf_counter() - started)

    def close(self) -> None:
        self.client.close()


def run(options: Options) -> Section:
    """Measure events/s at each concurrency; rounds interleave subject and baselines."""
    from userhub_sync.local.moto import new_container, patched_environ
    from userhub_sync.scenarios.rig import stage_environ

    rounds = 2 if options.quick else 4
    seconds = 1.0 if options.quick else 2.0  # per measurement; ≥ 2 s in a full run
    section = Section("delivery", "1. Delivery throughput")
    key = "userhub_admin_bench_" + secrets.token_hex(8)
    with fake_userhub_process(LATENCY_MS, key) as url:
        # deliver never reaches SQS here (NoSQS): the stage's queues are names only
        environ = stage_environ(
            "userhub-sync-bench", connection_id=CONNECTION_ID, pool_id=POOL_ID, userhub_url=url, admin_key=key
        )
        with patched_environ(environ):
            new_container()
            results = _measure(url, key, environ, rounds, seconds, section, options)
        new_container()
    _report(section, results, rounds, seconds, options.output_dir / PLOT_NAME)
    return section


def deployed_defaults() -> tuple[int, int]:
    """(batch size, DELIVERY_CONCURRENCY) as deployed when the stage sets neither: app.py's and settings' defaults."""
    import app
    from chalicelib.settings import Settings

    return app.DELIVER_BATCH_SIZE, int(Settings.model_fields["delivery_concurrency"].default)


def _measure(
    url: str, key: str, environ: dict[str, str | None], rounds: int, seconds: float, section: Section, options: Options
) -> dict[str, Any]:
    tail_batch, tail_c = deployed_defaults()
    subjects = {c: DeliverSubject(c, environ) for c in CONCURRENCIES}
    bares = {c: BareLoop(url, key, c) for c in SINGLE_POOL_AT}
    sharded = {c: BareLoop(url, key, c, shard=SHARD) for c in SHARDED_AT}
    direct = {c: BareLoop(url, key, c, shard=SHARD, direct=True) for c in {*SHARDED_AT, tail_c}}
    guide = GuideLoop(url, key)
    counter = iter(range(10**9))

    def tag() -> str:
        return f"{next(counter):05d}"

    try:
        # warm every pool (a warm container, its adaptive limit grown), and take a first rate estimate
        rates: dict[str, float] = {}
        batches: dict[int, int] = {}
        for c in CONCURRENCIES:
            warm = max(20, 8 * c)
            subjects[c].run(make_records(warm, tag()), warm)
            if c in bares:
                rates[f"bare c={c}"] = bares[c].run(event_paths(warm, tag()))
                rates[f"deliver c={c}"] = rates[f"bare c={c}"]
            if c in sharded:
                rates[f"sharded c={c}"] = sharded[c].run(event_paths(warm, tag()))
            if c in direct:
                rates[f"direct c={c}"] = direct[c].run(event_paths(warm, tag()))
                rates[f"deliver c={c}"] = rates[f"direct c={c}"]
            # one invocation lasts about the whole measurement: these rows measure the concurrency, not the tail
            batches[c] = min(MAX_EVENT_SOURCE_BATCH, max(4 * c, int(rates[f"deliver c={c}"] * seconds)))
        rates["guide (a)"] = guide.run(event_paths(20, tag()))
        if tail_c not in CONCURRENCIES:
            rates[f"direct c={tail_c}"] = direct[tail_c].run(event_paths(8 * tail_c, tag()))
        rates["deliver tail"] = rates["direct batches"] = rates[f"direct c={tail_c}"]
        http_post(f"{url}/_fake/reset")
        log(f"   records per deliver invocation, by concurrency: {batches}; tail: {tail_batch} at c={tail_c}")

        def supply(name: str) -> int:
            """Inputs for twice the events the last rate predicts: a measurement stops on time, not on input."""
            return int(2 * rates[name] * seconds) + 64

        def measure(name: str, fn: Callable[[], float]) -> float:
            rates[name] = fn()
            return rates[name]

        plan: dict[str, Callable[[], float]] = {
            "guide (a)": lambda: measure(
                "guide (a)", lambda: guide.run(event_paths(supply("guide (a)"), tag()), seconds)
            )
        }
        for c in CONCURRENCIES:
            d, b, sh = f"deliver c={c}", f"bare c={c}", f"sharded c={c}"
            plan[d] = lambda c=c, d=d: measure(
                d, lambda: subjects[c].run_for(make_records(supply(d), tag()), batches[c], seconds)
            )
            if c in bares:
                plan[b] = lambda c=c, b=b: measure(b, lambda: bares[c].run(event_paths(supply(b), tag()), seconds))
            if c in sharded:
                plan[sh] = lambda c=c, sh=sh: measure(
                    sh, lambda: sharded[c].run(event_paths(supply(sh), tag()), seconds)
                )
            if c in direct:
                di = f"direct c={c}"
                plan[di] = lambda c=c, di=di: measure(
                    di, lambda: direct[c].run(event_paths(supply(di), tag()), seconds)
                )
        # the batch tail, at the deployed defaults: Lambda-sized batches, each waiting for the last
        plan["deliver tail"] = lambda: measure(
            "deliver tail",
            lambda: subjects[tail_c].run_for(make_records(supply("deliver tail"), tag()), tail_batch, seconds),
        )
        plan["direct batches"] = lambda: measure(
            "direct batches",
            lambda: direct[tail_c].run(event_paths(supply("direct batches"), tag()), seconds, tail_batch),
        )
        if tail_c not in CONCURRENCIES:
            plan[f"direct c={tail_c}"] = lambda: measure(
                f"direct c={tail_c}",
                lambda: direct[tail_c].run(event_paths(supply(f"direct c={tail_c}"), tag()), seconds),
            )
        measured: dict[str, list[float]] = {name: [] for name in plan}
        for r in range(rounds):
            if options.left() < 60:
                section.notes.append(f"stopped after {r} rounds: the run's time budget was nearly spent")
                break
            one = interleaved(1, {name: plan[name] for name in _round_order(list(plan), r, tail_c)})
            for name, values in one.items():
                measured[name] += values
            http_post(f"{url}/_fake/reset")  # keeps the fake's journal (and memory) small
            log("   round " + str(r + 1) + ": " + ", ".join(f"{k} {fmt(v[-1])}/s" for k, v in measured.items()))
        return {
            "measured": measured,
            "batches": batches,
            "tail": (tail_batch, tail_c),
            "invocations": {c: s.invocations for c, s in subjects.items()},
            "reoffered": sum(s.reoffered for s in subjects.values()),
            "retried": sum(b.retried for b in [*bares.values(), *sharded.values(), *direct.values()]),
        }
    finally:
        for subject in subjects.values():
            subject.close()
        for bare in [*bares.values(), *sharded.values(), *direct.values()]:
            bare.close()
        guide.close()


def _round_order(names: list[str], r: int, tail_c: int) -> list[str]:
    """Each concurrency's subject and baselines run back to back; their order rotates by round."""
    order = [names[0]]
    groups: dict[str, list[str]] = {}
    for name in names[1:]:
        group = f"c={tail_c}" if name in ("deliver tail", "direct batches") else name.split(" ", 1)[1]
        groups.setdefault(group, []).append(name)
    for group in groups.values():
        k = r % len(group)
        order += group[k:] + group[:k]
    return order


def _report(section: Section, results: dict[str, Any], rounds: int, seconds: float, plot: Path) -> None:
    measured: dict[str, list[float]] = results["measured"]
    batches: dict[int, int] = results["batches"]
    tail_batch, tail_c = results["tail"]
    guide = measured["guide (a)"]
    section.method = [
        f"Fake UserHub in its own process (`userhub-sync fake-userhub --latency-ms {LATENCY_MS:g}`), "
        "loopback, HTTP/1.1 keep-alive; the deliver handler and the baselines run in the benchmark process.",
        "Subject: `app.deliver(event, LambdaContext(60 s))` on synthetic Lambda SQS batches (unique message ids and "
        "usernames, ApproximateReceiveCount 1), the warm container's Deliverer with DELIVERY_CONCURRENCY=c and an "
        "SQS stand-in that fails the run if called at all (it never was). In the throughput rows one invocation "
        f"carries about a whole measurement's records (at most {MAX_EVENT_SOURCE_BATCH:,}, Lambda's largest batch), "
        "so they measure the concurrency; the batch tail is measured on its own, at the deployed batch size.",
        "(a) the connection guide's call: `httpx.Client(timeout=2).post(...)` one event after another, warm "
        "(keep-alive). The guide's real Lambda also pays one Lambda invocation per sign-in, which is not counted here.",
        "(b) a bare `httpx.AsyncClient` + `asyncio.Semaphore(c)` + `gather` posting the same requests (same URL, "
        "headers, body and pool limits as deliver's client) as one continuous stream, with no batch boundaries; "
        f"run at c = {', '.join(map(str, SINGLE_POOL_AT))} only (at 256 its one pool collapses, finding 1).",
        f"(b′) at c ≥ 16: the same loop with its pool split into clients of ≤ {SHARD} connections used in turn, as "
        "deliver's pool is.",
        f"(b″) at c ≥ 16: the same requests (same headers, body and timeouts as deliver's) sent straight to the "
        f"transports of pools of ≤ {SHARD} connections, without httpx's client layer, as deliver's client sends "
        "them: the best bare loop httpx allows on this machine, and the baseline of the high-concurrency target.",
        f"Batch tail: deliver on batches of {tail_batch} records at DELIVERY_CONCURRENCY={tail_c} (app.py's and "
        "settings' defaults), each invocation waiting for the last as Lambda's event source does, against (b″) at "
        f"the same concurrency as one continuous stream (the efficiency) and cut into batches of {tail_batch}.",
        f"{rounds} rounds; every round runs each subject for {seconds:g} s (events completed ÷ time) right next to "
        "its baselines, order rotating by round. Figures are medians over rounds; ratios are medians of the "
        "per-round ratios.",
    ]
    rows = [
        "| concurrency | records per invocation | deliver events/s | bare httpx (b) | bare, sharded pool (b′) | "
        "bare, sharded, straight to the transports (b″) | guide (a) | deliver ÷ (b) | deliver ÷ (b′) | "
        "deliver ÷ (b″) | deliver ÷ (a) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCIES:
        subject, bare = measured[f"deliver c={c}"], measured.get(f"bare c={c}") or []
        if not subject:
            continue
        sharded, best = measured.get(f"sharded c={c}") or [], measured.get(f"direct c={c}") or []
        to_bare = paired_ratio(subject, bare) if bare else None
        to_sharded = paired_ratio(subject, sharded) if sharded else None
        to_best = paired_ratio(subject, best) if best else None
        to_guide = paired_ratio(subject, guide[: len(subject)])
        if to_best is None and to_bare is not None:
            section.add(
                Figure(
                    f"deliver at concurrency {c}",
                    median(subject),
                    "events/s",
                    median(bare),
                    "bare httpx loop (b)",
                    to_bare,
                    "≥ 0.85 × (b)",
                    to_bare >= 0.85,
                )
            )
        elif to_best is not None:
            high = c in HIGH_AT
            section.add(
                Figure(
                    f"deliver at concurrency {c}",
                    median(subject),
                    "events/s",
                    median(best),
                    f"best bare loop: pools of {SHARD}, straight to the transports (b″)",
                    to_best,
                    "≥ 0.95 × (b″)" if high else "",
                    to_best >= 0.95 if high else None,
                )
            )
            if high and to_sharded is not None:
                section.add(
                    Figure(
                        f"deliver at concurrency {c}, against the bare loop through httpx's client",
                        median(subject),
                        "events/s",
                        median(sharded),
                        f"bare loop, pool in shards of {SHARD} (b′)",
                        to_sharded,
                        "≥ 0.95 × (b′)",
                        to_sharded >= 0.95,
                    )
                )
        if c == 16:
            section.add(
                Figure(
                    "deliver at concurrency 16 vs the guide's inline call",
                    median(subject),
                    "events/s",
                    median(guide),
                    "guide, sequential (a)",
                    to_guide,
                    "≥ 10 × (a)",
                    to_guide >= 10,
                )
            )
        rows.append(
            f"| {c} | {batches[c]} | {fmt(median(subject))} | {fmt(median(bare)) if bare else 'not run'} | "
            f"{fmt(median(sharded)) if sharded else '= (b)'} | {fmt(median(best)) if best else '–'} | "
            f"{fmt(median(guide))} | {f'{to_bare:.2f}×' if to_bare is not None else '–'} | "
            f"{f'{to_sharded:.2f}×' if to_sharded is not None else '–'} | "
            f"{f'{to_best:.2f}×' if to_best is not None else '–'} | {to_guide:.1f}× |"
        )
    tail, stream, cut = measured["deliver tail"], measured[f"direct c={tail_c}"], measured["direct batches"]
    if tail and stream:
        efficiency = paired_ratio(tail, stream)
        section.add(
            Figure(
                f"batch-tail efficiency: deliver on batches of {tail_batch} at concurrency {tail_c}",
                median(tail),
                "events/s",
                median(stream),
                "(b″), one continuous stream",
                efficiency,
                "≥ 0.95 (tail ≤ 5 %)",
                efficiency >= 0.95,
                note=f"{paired_ratio(tail, cut):.2f}× (b″) cut into the same batches ({fmt(median(cut))}/s)",
            )
        )
        rows.append(
            f"| {tail_c}, batch tail | {tail_batch} | {fmt(median(tail))} | | | {fmt(median(stream))} (stream); "
            f"{fmt(median(cut))} (cut into batches of {tail_batch}) | | | | {efficiency:.2f}× (stream); "
            f"{paired_ratio(tail, cut):.2f}× (cut) | |"
        )
    rows.append("")
    rows.append(
        "Every round, events/s: "
        + "; ".join(f"{name}: " + ", ".join(fmt(v) for v in values) for name, values in measured.items())
        + "."
    )
    section.tables.append("\n".join(rows))
    section.tables.append(f"![delivery throughput against concurrency]({plot.name})")
    _plot(measured, plot)
    section.notes.append(
        f"Invocations of deliver per concurrency (warm-up and batch-tail runs included): {results['invocations']}; "
        f"SQS calls made by deliver: {NoSQS.calls} (the stand-in fails any call; deliver makes one only to "
        "settle a record it gives back)."
    )
    if results["reoffered"] or results["retried"]:
        section.notes.append(
            f"The fake UserHub dropped connections under load: deliver gave back {results['reoffered']} records "
            f"(offered again, as the queue would) and the bare loops retried {results['retried']} requests once; "
            "both are in the times above."
        )
    for c in SHARDED_AT:
        sharded, bare = measured.get(f"sharded c={c}") or [], measured.get(f"bare c={c}") or []
        if sharded and bare and median(sharded) > 1.5 * median(bare):
            section.notes.append(
                f"At concurrency {c} the bare loop (b) is not this machine's ceiling: the same requests from pools of "
                f"≤ {SHARD} connections (b′) go {median(sharded) / median(bare):.1f}× faster. httpcore 1.0.9's pool "
                "does O(connections × idle connections) work on every request and response "
                "(`_assign_requests_to_connections`, encode/httpcore#1035); deliver's client shards its pool the "
                "same way (`chalicelib/userhub.py`), and so do (b′) and (b″)."
            )


def _plot(measured: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c for c in CONCURRENCIES if measured[f"deliver c={c}"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lines = [
        ("deliver", "o-", "deliver handler"),
        ("bare", "s--", "bare httpx async loop (b)"),
        ("sharded", "d-.", f"bare loop, pool in shards of {SHARD} (b′)"),
        ("direct", "x-", f"bare loop, shards of {SHARD}, straight to the transports (b″)"),
    ]
    for name, style, label in lines:
        at = [c for c in xs if measured.get(f"{name} c={c}")]
        if at:
            ax.plot(at, [median(measured[f"{name} c={c}"]) for c in at], style, label=label)
    ax.plot(xs, [median(measured["guide (a)"])] * len(xs), "^:", label="guide: one inline POST at a time (a)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (UserHub calls in flight)")
    ax.set_ylabel("events/s")
    ax.set_title(f"Delivery throughput, fake UserHub +{LATENCY_MS:g} ms, loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
