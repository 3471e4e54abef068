"""Commands that run the pipeline on this machine: `demo`, `worker` and `fake-userhub`."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from userhub_sync.cli.output import console, fail


def demo(
    signins: Annotated[int, typer.Option(min=1, max=5000, help="Sign-ins to send through post_auth.")] = 300,
    fault_rate: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of calls failing transiently.")] = 0.2,
    permanent: Annotated[int, typer.Option(min=0, help="Users UserHub rejects with 400 (they go to the DLQ).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed, for a repeatable run.")] = 7,
) -> None:
    """Run the whole pipeline locally (moto + fake UserHub, faults injected); exit 0 only if nothing was lost."""
    from userhub_sync.scenarios.demo import print_report, run_demo

    out = console()
    report = run_demo(signins=signins, fault_rate=fault_rate, permanent=permanent, seed=seed, console=out)
    print_report(report, out)
    if report.lost or report.dead_lettered != report.expected_dead:
        raise typer.Exit(1)


def worker(
    stage: Annotated[str | None, typer.Option(help="Read this stage's variables from .chalice/config.json.")] = None,
    drain: Annotated[bool, typer.Option(help="Stop once nothing is visible or in flight.")] = False,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=100, help="Records per invocation; default: app.py's BatchSize.")
    ] = None,
    wait_seconds: Annotated[int, typer.Option(min=0, max=20, help="Long-poll wait per receive.")] = 5,
    function_timeout: Annotated[float, typer.Option(min=1, help="The invocation time budget deliver sees (s).")] = 60.0,
) -> None:
    """Run `deliver` against the stage's events queue outside Lambda, with Lambda's SQS semantics."""
    import boto3

    import app
    from chalicelib.settings import get_settings
    from userhub_sync.local.event_source import BatchResult, LocalEventSource
    from userhub_sync.ops.stage import apply_stage

    apply_stage(stage, "deliver")
    settings = get_settings()
    sqs = boto3.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=settings.events_queue_name)["QueueUrl"]
    except Exception as error:
        raise fail(f"cannot reach the events queue: {error}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    batch_size = batch_size or min(app.DELIVER_BATCH_SIZE, 100)
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
) -> None:
    """The local UserHub stand-in used by demo, tests and benchmarks (faults via POST /_fake/faults); Ctrl-C stops."""
    from userhub_sync.local.fake_userhub import DEFAULT_ADMIN_KEY, FakeUserHub

    hub = FakeUserHub(
        host, port, admin_keys=admin_key or [DEFAULT_ADMIN_KEY], latency_ms=latency_ms, seed=seed, verbose=verbose
    ).bind()
    typer.echo(f"fake UserHub listening on {hub.url}")
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
