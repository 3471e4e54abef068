"""`userhub-sync recover-signins --stage S`: re-enqueue the sign-ins post_auth could not, on demand.

The nightly reconcile does the same at the start of each run; this is for right after an SQS outage, or to look
(`--dry-run`) at what post_auth's recovery records hold. It shares the watermark with the nightly run, so the two
never skip a record between them. Exit codes: 0 done (or dry run), 1 error, 2 some records were skipped (invalid,
a `sub` Cognito no longer knows, or rejected by SQS; each is logged).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from userhub_sync.ops.util import OpsError, client, load_stage, parse_duration

ROWS = (
    ("matched", "log events matched"),
    ("records", "recovery records"),
    ("enqueued", "enqueued"),
    ("would_enqueue", "would enqueue"),
    ("invalid", "invalid (skipped)"),
    ("unresolved", "unknown sub (skipped)"),
    ("rejected", "rejected by SQS (skipped)"),
)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def recover_signins_command(
    stage: Annotated[str, typer.Option("--stage", "-s", help="Stage in .chalice/config.json (dev, prod, ...).")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Look back this far (90m, 6h, 2d) instead of from the watermark. The watermark moves only if this "
            "window starts at or before it.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be enqueued; enqueue nothing, move no watermark.")
    ] = False,
    show: Annotated[int, typer.Option("--show", help="With --dry-run: messages listed (0: all).")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the JSON log lines too.")] = False,
) -> None:
    """Enqueue again the sign-ins post_auth could not (its recovery records in CloudWatch Logs)."""
    from chalicelib import signin_recovery as sr

    ctx = load_stage(stage)
    os.environ.setdefault("USERHUB_SYNC_METRICS", "off")  # EMF lines are for CloudWatch, not a terminal
    try:
        since_ms = None
        if since is not None:
            since_ms = int((datetime.now(UTC).timestamp() - parse_duration(since)) * 1000)
        groups = sr.trigger_log_groups(
            ctx.var("SIGNIN_RECOVERY_LOG_GROUPS"), ctx.function_name("reconcile")
        )  # names as `chalice deploy` gives them
    except (ValueError, sr.RecoveryError) as error:
        raise OpsError(str(error)) from None
    assert groups is not None  # always derivable from the stage's own function names
    sqs = client("sqs")

    def queue_url() -> str:
        return sqs.get_queue_url(QueueName=ctx.events_queue)["QueueUrl"]

    clients = sr.RecoveryClients(
        logs=client("logs"), sqs=sqs, s3=client("s3"), cognito=lambda: client("cognito-idp"), queue_url=queue_url
    )
    logger = logging.getLogger("userhub_sync")
    level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)  # skipped records still show (warnings)
    try:
        report = sr.recover_signins(clients, bucket=ctx.bucket, log_groups=groups, since_ms=since_ms, dry_run=dry_run)
    except sr.RecoveryError as error:
        raise OpsError(f"recovery failed: {error}") from None
    finally:
        logger.setLevel(level)

    summary = report.summary()
    if json_output:
        planned = [json.loads(m.to_body()) for m in report.planned]
        typer.echo(json.dumps({**summary, "planned": planned} if dry_run else summary))
    else:
        out = Console(highlight=False)
        if dry_run and report.planned:
            out.print(f"would enqueue {len(report.planned)} message(s):", style="bold")
            listed = report.planned if show <= 0 else report.planned[:show]
            for message in listed:
                out.print(f"  {message.type.value}  {message.username}  {message.event_time.isoformat()}", markup=False)
            if len(listed) < len(report.planned):
                out.print(f"  … and {len(report.planned) - len(listed)} more (--show 0 lists all)")
        title = "recover-signins (dry run: nothing enqueued)" if dry_run else "recover-signins"
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("", justify="right", overflow="fold")
        table.add_row("window", f"{_when(report.start_ms)} → {_when(report.end_ms)}")
        for key, label in ROWS:
            if summary.get(key) is not None:
                table.add_row(label, str(summary[key]))
        table.add_row("watermark", f"{_when(report.watermark_before_ms)} → {_when(report.watermark_after_ms)}")
        for group in groups:
            table.add_row("log group", group + (" (not created yet)" if group in report.missing_groups else ""))
        out.print(table)
    if report.skipped:
        Console(stderr=True, highlight=False).print(
            f"warning: {report.skipped} record(s) skipped (see the log lines above; --verbose for all)",
            style="yellow",
        )
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add `recover-signins` to the CLI."""
    from userhub_sync.cli.ops import handle_errors

    app.command("recover-signins")(handle_errors(recover_signins_command))
