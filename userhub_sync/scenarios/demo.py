"""`userhub-sync demo`: the whole pipeline on this machine, with faults, and an account of every sign-in and change.

moto's server (real HTTP) stands in for SQS, SSM, S3 and Cognito, the fake UserHub for the API. Sign-ins go through
the real `post_auth` handler, a reconcile run through the real `reconcile`, the local event source mapping feeds the
real `deliver` handler, against a UserHub that fails transiently and rate-limits (429 with Retry-After beyond
`rate_limit` calls a second). At the end every enqueued sign-in is matched against what the fake UserHub accepted or
what sits in the DLQ (accounting.py). Then an admin changes users in moto's Cognito, and the CloudTrail emulator
plays what AWS would deliver to `capture` (capture.py): each change must reach UserHub as CHANGED. Anything in
neither place is lost, and the demo fails.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from userhub_sync.local.event_source import LambdaContext, LocalEventSource
from userhub_sync.local.fake_userhub import RATE_LIMITED
from userhub_sync.local.faults import Fault, FaultKind
from userhub_sync.local.moto import new_container, patched_environ
from userhub_sync.ops.dlq import Filters, list_messages
from userhub_sync.scenarios.accounting import Report, Scenario, account
from userhub_sync.scenarios.capture import USERS, CaptureRoute, create_pool, delivery_for, make_changes
from userhub_sync.scenarios.rig import StageConfig, log_level, scenario_run
from userhub_sync.scenarios.traffic import Producer, usernames

POISON = ('{"v": 99, "note": "from a future version"}', "not json at all")
RATE_LIMIT = 15.0  # UserHub's calls a second in the demo: above it, 429 with Retry-After
REJECTED = Fault(status=400, code="INVALID_ARGUMENT", reason="DEMO_REJECTED", message="rejected")  # for good


def transient_faults(fault_rate: float) -> list[Fault]:
    """Everyone's share of trouble: 503s, 429s asking for 1 s, answers slower than the 1 s read timeout, drops."""
    return [
        Fault(status=503, probability=fault_rate * 0.6),
        Fault(status=429, retry_after="1", probability=fault_rate * 0.2),
        Fault(kind=FaultKind.LATENCY, latency_ms=1500, probability=fault_rate * 0.1),
        Fault(kind=FaultKind.DROP, probability=fault_rate * 0.1),
    ]


def run_demo(
    signins: int = 300,
    fault_rate: float = 0.2,
    permanent: int = 3,
    seed: int = 7,
    console: Console | None = None,
    rate_limit: float | None = RATE_LIMIT,
    capture_route: CaptureRoute = CaptureRoute.HANDLER,
) -> Report:
    import boto3

    import app
    from chalicelib import delivery

    console = console or Console()
    stage = StageConfig(signins, seed, max_receive_count=8)
    with scenario_run(Scenario.DEMO, stage, progress=console.print, USERHUB_READ_TIMEOUT="1", LOG_LEVEL="ERROR") as run:
        stack, rig, report, rng = run.stack, run.rig, run.report, run.rng
        sqs, queues = rig.sqs, rig.queues
        stack.enter_context(log_level(logging.ERROR))
        run.say(f"[bold]moto[/] on {rig.endpoint}, [bold]fake UserHub[/] on {rig.hub.url}")
        pool_id = create_pool(f"demo-{rig.env['EVENTS_QUEUE_NAME']}")  # capture and reconcile need a real pool
        stack.enter_context(patched_environ({"USER_POOL_ID": pool_id}))
        new_container()
        boto3.client("s3").create_bucket(Bucket=rig.env["SNAPSHOT_BUCKET"] or "")

        unique = usernames(max(signins * 2 // 3, 1), rng)
        users = unique + [rng.choice(unique) for _ in range(signins - len(unique))]  # a third sign in twice
        doomed = set(rng.sample(unique, min(permanent, len(unique))))
        for user in doomed:
            rig.hub.add_fault(dataclasses.replace(REJECTED, match_external_id=user))
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
            report.traffic.enqueued = sum(1 for s in producer.signins if s.enqueued)
            doomed_signins = sum(1 for s in producer.signins if s.enqueued and s.user in doomed)
            report.dead_letters.expected_dead = doomed_signins + len(POISON)

            for fault in transient_faults(fault_rate):
                rig.hub.add_fault(fault)
            rig.hub.set_rate_limit(rate_limit)  # bursts of one second's worth, then 429 + Retry-After
            # the nightly run, alongside (its sub→username map takes 256 S3 writes): the pool's users as CHANGED,
            # and the map a captured delete needs
            nightly = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="reconcile"))
            context = LambdaContext(f"{rig.env['EVENTS_QUEUE_NAME']}-reconcile", 900)
            reconciled = nightly.submit(app.reconcile, {}, context)
            source = LocalEventSource(sqs, queues.events_url, app.deliver, wait_seconds=1)
            total = report.traffic.enqueued + len(POISON) + len(USERS)  # a first run sends every user
            settled = progress.add_task("messages settled by deliver", total=total)
            lowest = float("inf")

            def on_batch(_: object) -> None:
                nonlocal lowest
                progress.update(settled, completed=source.totals.deleted)
                lowest = min(lowest, delivery.get_deliverer().caller.flow.limit)

            started = time.monotonic()
            source.run(drain=True, on_batch=on_batch)
            summary = reconciled.result()
            if summary.get("status") != "complete":
                report.problems.append(f"reconcile did not complete: {summary}")
            if source.backlog():  # what the run enqueued after the queue first looked empty
                source.run(drain=True, on_batch=on_batch)
            report.seconds_to_drain = time.monotonic() - started

            # an admin's changes, captured as AWS would deliver them, while deliver keeps polling
            changes = progress.add_task("admin changes captured, to UserHub", total=None)
            stop = threading.Event()
            poller = threading.Thread(target=source.run, kwargs={"should_stop": stop.is_set}, daemon=True)
            poller.start()
            try:
                captured = make_changes(
                    pool_id,
                    rig.hub,
                    delivery_for(capture_route, f"{rig.env['EVENTS_QUEUE_NAME']}-capture"),
                    rig.connection_id,
                )
            finally:
                stop.set()
                poller.join()
            progress.update(changes, total=len(captured.changes), completed=captured.delivered)
            if source.backlog():  # whatever the changes left behind (a retry after a fault)
                source.run(drain=True)
        rig.hub.clear_faults()
        rig.hub.set_rate_limit(None)

        dead = list_messages(sqs, queues.dlq_url, Filters(), visibility=60).messages
        report.dead_letters.dead_lettered = len(dead)
        report.traffic.retried = int(delivery.get_deliverer().metrics.totals.get("retry", 0))
        result = account(producer.signins, rig.hub.events(), Counter(m.username or "" for m in dead), rig.connection_id)
        report.take(result)
        not_enqueued = [s.user for s in producer.signins if not s.enqueued]  # neither delivered nor in the DLQ
        report.outcome.lost_users += not_enqueued + captured.lost
        report.outcome.lost = len(report.outcome.lost_users)
        journal = [e for e in rig.hub.journal() if e.verb == "event"]
        report.notes["rate_limit"] = rate_limit
        report.notes["rate_limited"] = sum(1 for e in journal if e.status == RATE_LIMITED and e.fault is None)
        report.notes["injected_429"] = sum(1 for e in journal if e.status == RATE_LIMITED and e.fault is not None)
        report.notes["lowest_concurrency_limit"] = lowest
        report.notes["capture_route"] = capture_route.value
        report.capture.captured = len(captured.changes)
        report.capture.captured_delivered = captured.delivered
        report.capture.capture_seconds = [round(c.seconds, 3) for c in captured.changes if c.seconds is not None]
        report.capture.capture_failed_calls = captured.failed_calls
        if captured.emitted_for_failed:
            report.problems.append(f"{captured.emitted_for_failed} capture event(s) emitted for a failed call")
        report.problems += captured.delivery_errors
    return report
