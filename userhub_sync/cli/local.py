"""Commands that run the pipeline on this machine: `demo`, `chaos`, `outage`, `worker` and `fake-userhub`."""

from __future__ import annotations

import json
import os
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chalicelib.sqs_limits import MAX_EVENT_SOURCE_BATCH
from userhub_sync.cli.output import console, fail

if TYPE_CHECKING:
    from userhub_sync.scenarios.accounting import Report


class CaptureThrough(StrEnum):
    """`demo --capture-through` (scenarios.capture.CaptureRoute, without importing the scenarios at start-up)."""

    HANDLER = "handler"
    EVENTBRIDGE = "eventbridge"


SeedOpt = Annotated[
    int, typer.Option(help="Random seed (users, faults, and chaos's kill times; thread timing still varies).")
]
JsonOutOpt = Annotated[Path | None, typer.Option(help="Also write the JSON summary to this file.")]


def demo(
    signins: Annotated[int, typer.Option(min=1, max=5000, help="Sign-ins to send through post_auth.")] = 300,
    fault_rate: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of calls failing transiently.")] = 0.2,
    permanent: Annotated[int, typer.Option(min=0, help="Users UserHub rejects with 400 (they go to the DLQ).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed, for a repeatable run.")] = 7,
    rate_limit: Annotated[
        float, typer.Option(min=0.0, help="UserHub's calls a second before it answers 429 + Retry-After (0: none).")
    ] = 15.0,
    capture_through: Annotated[
        CaptureThrough,
        typer.Option(help="How the emulated CloudTrail events reach capture: handler, or moto's EventBridge rule."),
    ] = CaptureThrough.HANDLER,
) -> None:
    """Run the whole pipeline locally (moto + fake UserHub, faults injected); exit 0 only if nothing was lost."""
    from userhub_sync.local.moto import require_moto
    from userhub_sync.scenarios.accounting import print_report
    from userhub_sync.scenarios.capture import CaptureRoute
    from userhub_sync.scenarios.demo import run_demo

    require_moto()

    out = console()
    report = run_demo(
        signins=signins,
        fault_rate=fault_rate,
        permanent=permanent,
        seed=seed,
        console=out,
        rate_limit=rate_limit or None,
        capture_route=CaptureRoute(capture_through.value),
    )
    print_report(report, out)
    if not report.ok or report.dead_letters.dead_lettered != report.dead_letters.expected_dead:
        raise typer.Exit(1)


def chaos(
    signins: Annotated[int, typer.Option(min=1, help="Sign-ins to send through post_auth.")] = 2000,
    workers: Annotated[int, typer.Option(min=1, help="`userhub-sync worker` processes at a time.")] = 3,
    seed: SeedOpt = 7,
    max_kills: Annotated[int | None, typer.Option(min=0, help="SIGKILLs at most (default: signins / 40).")] = None,
    json_out: JsonOutOpt = None,
    log_dir: Annotated[Path | None, typer.Option(help="Keep every worker's stdout and stderr here.")] = None,
) -> None:
    """Sign-ins through SIGKILLed workers and a UserHub failing every way it can; exit 0 only if nothing was lost."""
    from userhub_sync.local.moto import require_moto
    from userhub_sync.scenarios.chaos import ChaosConfig, run_chaos

    require_moto()
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    config = ChaosConfig(signins=signins, workers=workers, seed=seed, max_kills=max_kills)
    _finish(run_chaos(config, log_dir=log_dir, progress=console(stderr=True).log), json_out)


def outage(
    signins: Annotated[int, typer.Option(min=1, help="Sign-ins to send through post_auth.")] = 500,
    outage_seconds: Annotated[float, typer.Option(min=1, help="How long UserHub answers 503 to everything.")] = 20.0,
    seed: SeedOpt = 7,
    json_out: JsonOutOpt = None,
) -> None:
    """UserHub down for a while: nothing lost or dead-lettered, backoff as RetryPolicy says, recovery on its own."""
    from userhub_sync.local.moto import require_moto
    from userhub_sync.scenarios.outage import OutageConfig, run_outage

    require_moto()
    config = OutageConfig(signins=signins, outage_seconds=outage_seconds, seed=seed)
    _finish(run_outage(config, progress=console(stderr=True).log), json_out)


def _finish(report: Report, json_out: Path | None) -> None:
    """The table on stderr, the JSON summary on stdout (and in `json_out`); exit 1 unless the run was clean."""
    from userhub_sync.scenarios.accounting import print_report

    print_report(report, console(stderr=True))
    summary = json.dumps(report.summary(), indent=2, default=str, ensure_ascii=False)
    typer.echo(summary)
    if json_out:
        json_out.write_text(summary + "\n")
    if not report.ok:
        raise typer.Exit(1)


def worker(
    stage: Annotated[
        str | None, typer.Option("--stage", "-s", help="Read this stage's variables from .chalice/config.json.")
    ] = None,
    drain: Annotated[bool, typer.Option(help="Stop once nothing is visible or in flight.")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_EVENT_SOURCE_BATCH,
            help="Records per invocation, at most Lambda's 10,000; default: deliver's BatchSize (DELIVER_BATCH_SIZE).",
        ),
    ] = None,
    wait_seconds: Annotated[int, typer.Option(min=0, max=20, help="Long-poll wait per receive.")] = 5,
    function_timeout: Annotated[float, typer.Option(min=1, help="The invocation time budget deliver sees (s).")] = 60.0,
) -> None:
    """Run `deliver` against the stage's events queue outside Lambda, with Lambda's SQS semantics."""
    import boto3

    from chalicelib.settings import get_settings
    from chalicelib.sqs_limits import deliver_batch_size
    from userhub_sync.local.event_source import BatchResult, LocalEventSource
    from userhub_sync.ops.aws import aws_errors
    from userhub_sync.ops.stage import apply_stage

    apply_stage(stage, "deliver")
    try:  # read as app.py reads it, once the stage's variables are in the environment
        batch_size = batch_size or deliver_batch_size(
            os.environ.get("DELIVER_BATCH_SIZE"), os.environ.get("DELIVERY_CONCURRENCY")
        )
    except ValueError as error:
        raise fail(str(error)) from None
    import app  # after apply_stage: app.py reads the stage's variables at import, as in Lambda

    settings = get_settings()
    sqs = boto3.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=settings.events_queue_name)["QueueUrl"]
    except aws_errors() as error:
        raise fail(f"cannot reach the events queue: {error}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    source = LocalEventSource(
        sqs, url, app.deliver, batch_size=batch_size, wait_seconds=wait_seconds, function_timeout=function_timeout
    )
    out = console()
    out.print(f"worker polling {url} (batch {batch_size}); Ctrl-C to stop")

    def show(result: BatchResult) -> None:
        if result.received:
            note = f" ({result.error})" if result.error else ""
            out.print(f"batch: {result.received} received, {result.deleted} done, {result.failed} to retry{note}")

    try:
        totals = source.run(drain=drain, should_stop=stop.is_set, on_batch=show)
    except KeyboardInterrupt:
        totals = source.totals
    out.print(f"total: {totals.received} received, {totals.deleted} done, {totals.failed} retried later")


def fake_userhub(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one; the URL is printed).")] = 8765,
    admin_key: Annotated[
        list[str] | None, typer.Option(help="Accepted Admin key (repeatable; default userhub_admin_test).")
    ] = None,
    latency_ms: Annotated[float, typer.Option(min=0, help="Added latency per request.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for probabilistic faults, for a repeatable run.")] = None,
    verbose: Annotated[bool, typer.Option(help="Log each request line (never headers, so never a key).")] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option(min=0.1, help="Answer event calls beyond this many a second with 429 and Retry-After."),
    ] = None,
) -> None:
    """The local UserHub stand-in used by demo, tests and benchmarks (faults via POST /_fake/faults); Ctrl-C stops."""
    from userhub_sync.local.fake_userhub import DEFAULT_ADMIN_KEY, FakeUserHub

    hub = FakeUserHub(
        host,
        port,
        admin_keys=admin_key or [DEFAULT_ADMIN_KEY],
        latency_ms=latency_ms,
        seed=seed,
        verbose=verbose,
        rate_limit=rate_limit,
    ).bind()
    typer.echo(f"fake UserHub listening on {hub.url}")
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
