"""`userhub-sync demo`: the whole pipeline on this machine, with faults, and an account of every sign-in.

moto's server (real HTTP) stands in for SQS and SSM, the fake UserHub for the API. Sign-ins go through the real
`post_auth` handler, the local event source mapping feeds the real `deliver` handler, and at the end every
enqueued message is matched against what the fake UserHub accepted or what sits in the DLQ. Anything in neither
place is lost, and the demo fails.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.fake_userhub import FakeUserHub, Fault
from userhub_sync.local.faults import FaultKind
from userhub_sync.local.moto import MotoServer, aws_environ, patched_environ
from userhub_sync.ops.queues import QueueSpec, ensure_queues

POOL_ID = "us-east-1_DemoPool1"
CONNECTION_ID = "conn_demo"
DEMO_KEY = "userhub_admin_demo_" + uuid.uuid4().hex  # made up per run; lives only in the local moto SSM


@dataclass
class DemoReport:
    signed_in: int = 0
    enqueued: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    expected_dead: int = 0
    poison: int = 0
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    lost_ids: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("signed in", str(self.signed_in)),
            ("enqueued by post_auth", str(self.enqueued)),
            ("delivered to UserHub", str(self.delivered)),
            ("retried (transient failures)", str(self.retried)),
            ("dead-lettered (permanent 4xx + poison)", f"{self.dead_lettered} (expected {self.expected_dead})"),
            ("duplicate deliveries", str(self.duplicates)),
            ("lost", str(self.lost)),
            ("time to drain", f"{self.seconds:.1f} s"),
        ]


def _usernames(count: int, rng: random.Random) -> list[str]:
    """Realistic Cognito usernames: subs, emails with plus tags, federated ids, spaces and non-ASCII."""
    shapes = [
        lambda i: str(uuid.UUID(int=rng.getrandbits(128))),
        lambda i: f"user{i}+tag@example.com",
        lambda i: f"Google_{rng.randrange(10**20)}",
        lambda i: f"José Müller {i}",
        lambda i: f"auth0|{i:06d}",
        lambda i: f"a/b?c#d%{i}",
    ]
    return [shapes[i % len(shapes)](i) for i in range(count)]


def signin_event(username: str, pool: str = POOL_ID) -> dict[str, Any]:
    return {
        "version": "1",
        "triggerSource": "PostAuthentication_Authentication",
        "region": "us-east-1",
        "userPoolId": pool,
        "userName": username,
        "callerContext": {"awsSdkVersion": "aws-sdk-js-3", "clientId": "demo-client"},
        "request": {"userAttributes": {"sub": str(uuid.uuid4()), "email_verified": "true"}, "newDeviceUsed": False},
        "response": {},
    }


def run_demo(
    signins: int = 300, fault_rate: float = 0.2, permanent: int = 3, seed: int = 7, console: Console | None = None
) -> DemoReport:
    console = console or Console()
    rng = random.Random(seed)
    report = DemoReport(signed_in=signins)
    with MotoServer() as moto, FakeUserHub(admin_keys=[DEMO_KEY], seed=seed) as hub:
        env = aws_environ(moto.endpoint)
        env.update(
            {
                "USERHUB_API_URL": hub.url,
                "USERHUB_CONNECTION_ID": CONNECTION_ID,
                "USERHUB_ADMIN_KEY_PARAMETER": "/userhub-sync/demo/admin-key",
                "USERHUB_ADMIN_KEY": None,
                "USERHUB_ADMIN_KEY_SECRET_ID": None,
                "EVENTS_QUEUE_NAME": "userhub-sync-demo-events",
                "EVENTS_QUEUE_URL": None,
                "DEAD_LETTER_QUEUE_NAME": "userhub-sync-demo-dlq",
                "USER_POOL_ID": POOL_ID,
                "RETRY_BASE_SECONDS": "1",  # production: 30 s; short so the demo drains in seconds
                "RETRY_MAX_SECONDS": "4",
                "USERHUB_READ_TIMEOUT": "1",
                "USERHUB_SYNC_METRICS": "off",
                "LOG_LEVEL": "ERROR",
            }
        )
        with patched_environ(env):
            return _run(console, rng, report, hub, signins, fault_rate, permanent)


def _run(
    console: Console,
    rng: random.Random,
    report: DemoReport,
    hub: FakeUserHub,
    signins: int,
    fault_rate: float,
    permanent: int,
) -> DemoReport:
    import boto3

    import app
    from chalicelib import delivery, post_auth
    from chalicelib.settings import reset_settings

    reset_settings()
    delivery.reset_deliverer()
    post_auth.queue.reset()  # a fresh container: new client, new queue URL
    sqs = boto3.client("sqs")
    boto3.client("ssm").put_parameter(Name="/userhub-sync/demo/admin-key", Value=DEMO_KEY, Type="SecureString")
    state = ensure_queues(
        sqs, QueueSpec("userhub-sync-demo-events", "userhub-sync-demo-dlq", max_receive_count=8, visibility_timeout=30)
    )
    console.print(f"[bold]moto[/] on {state.events_url.rsplit('/', 2)[0]}, [bold]fake UserHub[/] on {hub.url}")

    users = _usernames(max(signins * 2 // 3, 1), rng)
    doomed = set(rng.sample(users, min(permanent, len(users))))
    for user in doomed:
        hub.add_fault(
            Fault(
                status=400, code="INVALID_ARGUMENT", reason="DEMO_REJECTED", message="rejected", match_external_id=user
            )
        )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("sign-ins through post_auth", total=signins)
        sent: list[tuple[str, float]] = []
        enqueued_before = post_auth.metrics.totals.get("enqueued", 0)
        for i in range(signins):
            user = users[i] if i < len(users) else rng.choice(users)  # a third sign in twice
            event = signin_event(user)
            assert app.post_auth(event, None) is event  # Cognito gets its event back, unchanged
            sent.append((user, time.time()))
            progress.advance(task)
        report.enqueued = int(post_auth.metrics.totals.get("enqueued", 0) - enqueued_before)
        report.expected_dead = sum(1 for user, _ in sent if user in doomed)
        sqs.send_message(QueueUrl=state.events_url, MessageBody='{"v": 99, "note": "from a future version"}')
        sqs.send_message(QueueUrl=state.events_url, MessageBody="not json at all")
        report.poison, report.expected_dead = 2, report.expected_dead + 2

        hub.add_fault(Fault(status=503, probability=fault_rate * 0.6))
        hub.add_fault(Fault(status=429, retry_after="2", probability=fault_rate * 0.2))
        hub.add_fault(
            Fault(kind=FaultKind.LATENCY, latency_ms=1500, probability=fault_rate * 0.1)
        )  # over the 1 s timeout
        hub.add_fault(Fault(kind=FaultKind.DROP, probability=fault_rate * 0.1))
        source = LocalEventSource(sqs, state.events_url, app.deliver, wait_seconds=1)
        deliver = progress.add_task("messages settled by deliver", total=report.enqueued + report.poison)
        started = time.monotonic()
        source.run(drain=True, on_batch=lambda r: progress.update(deliver, completed=source.totals.deleted))
        report.seconds = time.monotonic() - started
    hub.clear_faults()
    return _account(report, sent, hub, sqs, state.dlq_url, delivery.get_deliverer())


def _account(
    report: DemoReport, sent: list[tuple[str, float]], hub: FakeUserHub, sqs: Any, dlq_url: str, deliverer: Any
) -> DemoReport:
    """Match every enqueued sign-in to an accepted UserHub event after it, or to a DLQ message."""
    accepted: dict[str, list[float]] = {}
    for event in hub.events():
        if event.type == "SIGNIN":
            accepted.setdefault(event.external_id, []).append(event.ts)
    dead_users: list[str] = []
    dead_total = 0
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=60, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            break
        dead_total += len(messages)
        for message in messages:
            try:
                dead_users.append(json.loads(message["Body"])["username"])
            except (ValueError, KeyError, TypeError):
                pass
    report.dead_lettered = dead_total
    report.retried = int(deliverer.metrics.totals.get("retry", 0))
    delivered = 0
    for user, ts in sent:
        if any(t >= ts for t in accepted.get(user, [])):
            delivered += 1
        elif user in dead_users:
            dead_users.remove(user)
        else:
            report.lost_ids.append(user)
    report.delivered = delivered
    report.lost = len(report.lost_ids)
    per_user: dict[str, int] = {}
    for user, _ in sent:
        per_user[user] = per_user.get(user, 0) + 1
    # more accepted calls for a user than sign-ins of that user can only be redeliveries
    report.duplicates = sum(max(len(accepted.get(user, [])) - n, 0) for user, n in per_user.items())
    return report


def print_report(report: DemoReport, console: Console) -> None:
    table = Table(title="userhub-sync demo", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in report.rows():
        style = "bold red" if name == "lost" and report.lost else ("bold green" if name == "lost" else None)
        table.add_row(name, value, style=style)
    console.print(table)
    if report.lost:
        console.print(f"[red]lost users:[/] {report.lost_ids[:20]}")
