"""Backlog drain: several deliver containers empty a day's backlog against a UserHub that allows R calls a second.

- containers: `userhub-sync worker --drain` processes (Lambda's SQS event source played locally, one warm deliver
  each), as many as a bounded mapping would run;
- UserHub: the fake in its own process, in its rate-limit mode (a token bucket of R a second, 429 with Retry-After
  beyond it);
- SQS: `bench/sqs_standin.py`, because moto's SQS does work proportional to the queue's depth on every call and could
  not hold 20,000 messages (what the stand-in keeps of SQS is in its docstring);
- the same backlog twice in one run: with adaptive concurrency (the default) and without (the earlier behaviour,
  `ADAPTIVE_CONCURRENCY=false`), every other setting at its production default (retries from 30 s).
Figures per run: accepted calls/s ÷ R over the drain, the share of 429s among all calls, lost (neither delivered nor
in the DLQ), duplicates, and the time to drain against the ideal backlog ÷ R.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, Options, Section, log, stop_process
from chalicelib.sqs_limits import deliver_batch_size

RATE = 200.0  # calls a second UserHub allows
LATENCY_MS = 25.0  # UserHub's own answer time, as in the delivery benchmark
CONTAINERS = 4
CONCURRENCY = 16
PLOT_NAME = "drain_timeline.png"
POOL_ID = "us-east-1_BenchDrain1"
CONNECTION_ID = "conn_benchdrain"
DRAIN_LIMIT_SECONDS = 600.0  # the run without adaptivity may not drain in this time: it says so, with what is left


@dataclass
class Drain:
    label: str
    backlog: int
    seconds: float = 0.0
    drained: bool = False
    calls: int = 0
    accepted: int = 0
    limited: int = 0
    delivered_users: int = 0
    dead_lettered: int = 0
    left: int = 0  # still in the queue when the time ran out
    batch_size: int = 0  # records per deliver invocation: app.py's BatchSize in the workers' environment
    span: float = 0.0  # seconds from the first accepted call to the last
    timeline: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.backlog - self.delivered_users - self.dead_lettered - self.left

    @property
    def duplicates(self) -> int:
        return self.accepted - self.delivered_users

    def rate_ratio(self, rate: float) -> float:
        """Accepted calls a second from UserHub's first accepted call to its last, ÷ R (the containers' start-up
        is in the time to drain, not here)."""
        return self.accepted / self.span / rate if self.span else 0.0

    @property
    def limited_share(self) -> float:
        return self.limited / self.calls if self.calls else 0.0


def _fake(rate: float, key: str) -> tuple[subprocess.Popen[str], str]:
    from userhub_sync.local.fake_userhub import command

    proc = subprocess.Popen(
        command(admin_keys=[key], rate_limit=rate, latency_ms=LATENCY_MS),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("fake UserHub listening on "):
        stop_process(proc)
        raise RuntimeError(f"the fake UserHub did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.loads(answer.read())


def drain_once(label: str, backlog: int, *, adaptive: bool, rate: float = RATE) -> Drain:
    import boto3

    from bench.sqs_standin import StandInSqs
    from userhub_sync.local.moto import aws_environ, patched_environ
    from userhub_sync.scenarios.rig import stage_environ

    result = Drain(label, backlog)
    sqs_standin = StandInSqs()
    server = sqs_standin.serve()
    key = "userhub_admin_bench_" + secrets.token_hex(8)
    fake, userhub_url = _fake(rate, key)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        environ = {
            **stage_environ(
                "userhub-sync-drain",
                connection_id=CONNECTION_ID,
                pool_id=POOL_ID,
                userhub_url=userhub_url,
                admin_key=key,
            ),
            **aws_environ(sqs_standin.endpoint),
            "DELIVERY_CONCURRENCY": str(CONCURRENCY),
            "ADAPTIVE_CONCURRENCY": "true" if adaptive else "false",
            "RETRY_BASE_SECONDS": "30",
            "LOG_LEVEL": "WARNING",
            "USERHUB_SYNC_METRICS": "off",
        }
        with patched_environ(environ):
            sqs = boto3.client("sqs")
            dlq_url = sqs.create_queue(QueueName="userhub-sync-drain-dlq")["QueueUrl"]
            redrive = {
                "maxReceiveCount": "13",
                "deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:" + dlq_url.rsplit("/", 1)[1],
            }
            url = sqs.create_queue(
                QueueName="userhub-sync-drain-events",
                Attributes={"VisibilityTimeout": "360", "RedrivePolicy": json.dumps(redrive)},
            )["QueueUrl"]
            for start in range(0, backlog, 10):
                entries = [
                    {
                        "Id": str(n),
                        "MessageBody": json.dumps(
                            {
                                "v": 1,
                                "id": uuid.uuid4().hex,
                                "type": "SIGNIN",
                                "user_pool_id": POOL_ID,
                                "username": f"drain-{start + n:06d}",
                                "connection_id": CONNECTION_ID,
                                "event_time": "2026-11-29T00:00:00Z",
                                "source": "post_auth",
                            }
                        ),
                    }
                    for n in range(min(10, backlog - start))
                ]
                sqs.send_message_batch(QueueUrl=url, Entries=entries)
            log(f"   {label}: {backlog:,} messages queued; {CONTAINERS} containers start")
            child_env = {k: v for k, v in os.environ.items()}
            # what the workers hand deliver: app.py's rule, read from the workers' environment
            result.batch_size = deliver_batch_size(
                child_env.get("DELIVER_BATCH_SIZE"), child_env.get("DELIVERY_CONCURRENCY")
            )
            started = time.monotonic()
            for _ in range(CONTAINERS):
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "userhub_sync.cli",
                            "worker",
                            "--drain",
                            "--wait-seconds",
                            "1",
                        ],
                        cwd=ROOT,
                        env=child_env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for worker in workers:
                try:
                    worker.wait(timeout=max(1.0, DRAIN_LIMIT_SECONDS - (time.monotonic() - started)))
                except subprocess.TimeoutExpired:
                    break
            result.seconds = time.monotonic() - started
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            left = int(attributes["ApproximateNumberOfMessages"]) + int(
                attributes["ApproximateNumberOfMessagesNotVisible"]
            )
            result.left = left
            result.drained = left == 0
            dead = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
            result.dead_lettered = int(dead["ApproximateNumberOfMessages"]) + int(
                dead["ApproximateNumberOfMessagesNotVisible"]
            )
        result.timeline = [tuple(row) for row in _get(userhub_url + "/_fake/timeline")]
        result.calls = sum(calls for _, calls, _ in result.timeline)
        result.limited = sum(limited for _, _, limited in result.timeline)
        events = _get(userhub_url + "/_fake/events")
        result.accepted = len(events)
        stamps = [event["ts"] for event in events]
        result.span = max(stamps) - min(stamps) if stamps else 0.0
        result.delivered_users = len({event["external_id"] for event in events})
    finally:
        for worker in workers:
            stop_process(worker)
        stop_process(fake)
        server.shutdown()
    return result


def run(options: Options) -> Section:
    section = Section("drain", "6. Backlog drain against a rate-limited UserHub")
    backlog = 5_000 if options.quick else 20_000
    runs = [
        drain_once("adaptive", backlog, adaptive=True),
        drain_once("without adaptivity", backlog, adaptive=False),
    ]
    ideal = backlog / RATE
    rows = [
        "| run | drained in | ÷ (backlog ÷ R) | accepted/s ÷ R | calls | 429s | 429 share | left | lost | duplicates |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for drain in runs:
        rows.append(
            f"| {drain.label} | {drain.seconds:.1f} s{'' if drain.drained else ' (not drained)'} | "
            f"{drain.seconds / ideal:.2f}× | {drain.rate_ratio(RATE):.2f} | {drain.calls:,} | {drain.limited:,} | "
            f"{drain.limited_share:.1%} | {drain.left:,} | {drain.lost} | {drain.duplicates} |"
        )
    section.tables.append("\n".join(rows))
    adaptive, fixed = runs
    adaptive_ratio, fixed_ratio = adaptive.rate_ratio(RATE), fixed.rate_ratio(RATE)
    section.figures += [
        Figure(
            "adaptive: accepted calls/s ÷ R over the drain",
            adaptive.accepted / adaptive.span if adaptive.span else None,
            "calls/s",
            RATE,
            "R, the fake's limit",
            adaptive_ratio,
            "≥ 0.9",
            adaptive_ratio >= 0.9,
            note=f"without adaptivity: {fixed_ratio:.2f}",
        ),
        Figure(
            "adaptive: share of 429s among all calls",
            adaptive.limited_share * 100,
            "%",
            target="≤ 5 %",
            met=adaptive.limited_share <= 0.05,
            note=f"without adaptivity: {fixed.limited_share:.1%}",
        ),
        Figure(
            "adaptive: time to drain ÷ ideal (backlog ÷ R)",
            adaptive.seconds,
            "s",
            ideal,
            "backlog ÷ R",
            adaptive.seconds / ideal,
            note=f"without adaptivity: {fixed.seconds / ideal:.2f}×" + ("" if fixed.drained else " (not drained)"),
        ),
        Figure(
            "adaptive: lost",
            adaptive.lost,
            "messages",
            target="0",
            met=adaptive.lost == 0 and fixed.lost == 0,
            note=f"duplicates {adaptive.duplicates}; without adaptivity: lost {fixed.lost}, "
            f"duplicates {fixed.duplicates}, {fixed.left:,} still queued at the end",
        ),
    ]
    section.method = [
        f"{backlog:,} SIGNIN messages queued before the containers start; {CONTAINERS} `userhub-sync worker --drain` "
        f"processes, each deliver at DELIVERY_CONCURRENCY={CONCURRENCY} on batches of app.py's batch size "
        f"({runs[0].batch_size} records, as the deployed mapping hands them); the fake UserHub in its own process "
        f"allows R = {RATE:g} calls/s (a token bucket "
        "with a burst of one second, 429 with "
        "Retry-After: 1 beyond it). Ideal drain: backlog ÷ R = "
        f"{ideal:.0f} s. Retries use the production schedule (30 s base, 13 receives).",
        "SQS is the in-memory stand-in of bench/sqs_standin.py (visibility, receive counts, redrive, long polling).",
        "accepted/s ÷ R counts from UserHub's first accepted call to its last (the fake's burst of one second lets "
        "it pass 1.0 slightly); the time to drain counts from the containers' start, their start-up included.",
        f"The plot ({PLOT_NAME}) shows calls/s and 429s/s over the drain, from the fake's per-second journal.",
    ]
    _plot(runs, options.output_dir / PLOT_NAME)
    return section


def _plot(runs: list[Drain], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), sharex=True)
    for axis, drain in zip(axes, runs, strict=True):
        per_second = {second: (calls, limited) for second, calls, limited in drain.timeline}
        seconds = list(range(max(per_second, default=0) + 1))  # seconds without a call are zeros, not gaps
        axis.plot(seconds, [per_second.get(s, (0, 0))[0] for s in seconds], label="calls/s", linewidth=1)
        axis.plot(seconds, [per_second.get(s, (0, 0))[1] for s in seconds], label="429s/s", linewidth=1)
        axis.axhline(RATE, color="grey", linestyle=":", label=f"R = {RATE:g}/s")
        axis.set_title(f"{drain.label}: drained in {drain.seconds:.0f} s, {drain.limited_share:.1%} 429s")
        axis.set_ylabel("per second")
        axis.legend(loc="upper right")
    axes[-1].set_xlabel("seconds since the first call")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
