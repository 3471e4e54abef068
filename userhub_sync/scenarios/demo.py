"""`userhub-sync demo`: the whole pipeline on this machine, with faults, and an account of every sign-in.

moto's server (real HTTP) stands in for SQS and SSM, the fake UserHub for the API. Sign-ins go through the real
`post_auth` handler, the local event source mapping feeds the real `deliver` handler, and at the end every
enqueued sign-in is matched against what the fake UserHub accepted or what sits in the DLQ (accounting.py). Anything
in neither place is lost, and the demo fails.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from contextlib import ExitStack

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.faults import Fault, FaultKind
from userhub_sync.ops.dlq import Filters, list_messages
from userhub_sync.scenarios.accounting import Report, Scenario, account
from userhub_sync.scenarios.rig import StageConfig, log_level
from userhub_sync.scenarios.traffic import Producer, usernames

POISON = ('{"v": 99, "note": "from a future version"}', "not json at all")


def run_demo(
    signins: int = 300, fault_rate: float = 0.2, permanent: int = 3, seed: int = 7, console: Console | None = None
) -> Report:
    import app
    from chalicelib import delivery

    console = console or Console()
    rng = random.Random(seed)
    report = Report(Scenario.DEMO, signins=signins)
    with ExitStack() as stack:
        stage = StageConfig(signins, seed, max_receive_count=8)
        rig = stage.open_rig(stack, "demo", USERHUB_READ_TIMEOUT="1", LOG_LEVEL="ERROR")
        sqs, queues = rig.sqs, rig.queues
        stack.enter_context(log_level(logging.ERROR))
        console.print(f"[bold]moto[/] on {rig.endpoint}, [bold]fake UserHub[/] on {rig.hub.url}")

        unique = usernames(max(signins * 2 // 3, 1), rng)
        users = unique + [rng.choice(unique) for _ in range(signins - len(unique))]  # a third sign in twice
        doomed = set(rng.sample(unique, min(permanent, len(unique))))
        for user in doomed:
            rig.hub.add_fault(
                Fault(
                    status=400,
                    code="INVALID_ARGUMENT",
                    reason="DEMO_REJECTED",
                    message="rejected",
                    match_external_id=user,
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
            producer = Producer(users, on_signin=lambda _: progress.advance(task))
            producer.run()  # in this thread: the progress bar follows it
            if producer.error is not None:
                raise producer.error
            for body in POISON:
                sqs.send_message(QueueUrl=queues.events_url, MessageBody=body)
            report.enqueued = sum(1 for s in producer.signins if s.enqueued)
            report.expected_dead = sum(1 for s in producer.signins if s.enqueued and s.user in doomed) + len(POISON)

            rig.hub.add_fault(Fault(status=503, probability=fault_rate * 0.6))
            rig.hub.add_fault(Fault(status=429, retry_after="2", probability=fault_rate * 0.2))
            rig.hub.add_fault(Fault(kind=FaultKind.LATENCY, latency_ms=1500, probability=fault_rate * 0.1))  # > 1 s
            rig.hub.add_fault(Fault(kind=FaultKind.DROP, probability=fault_rate * 0.1))
            source = LocalEventSource(sqs, queues.events_url, app.deliver, wait_seconds=1)
            settled = progress.add_task("messages settled by deliver", total=report.enqueued + len(POISON))
            started = time.monotonic()
            source.run(drain=True, on_batch=lambda _: progress.update(settled, completed=source.totals.deleted))
            report.seconds_to_drain = time.monotonic() - started
        rig.hub.clear_faults()

        dead = list_messages(sqs, queues.dlq_url, Filters(), visibility=60).messages
        report.dead_lettered = len(dead)
        report.retried = int(delivery.get_deliverer().metrics.totals.get("retry", 0))
        result = account(producer.signins, rig.hub.events(), Counter(m.username or "" for m in dead), rig.connection_id)
        report.delivered, report.duplicates = result.delivered, result.duplicates
        not_enqueued = [s.user for s in producer.signins if not s.enqueued]  # neither delivered nor in the DLQ
        report.lost_users = result.lost + not_enqueued
        report.lost = len(report.lost_users)
    return report
