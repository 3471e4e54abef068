"""`userhub-sync reconcile` and `recover-signins`: the scheduled job's two halves, run by hand with the same code.

`reconcile`: no Lambda here, so no deadline: the run never hands off, it keeps going (holding the run's lease in
15-minute slices, checkpointing as it renews) until the pool is scanned. It shares the lease, checkpoint and
snapshot with the deployed function, so running it while a scheduled run is in progress is safe: it reports that
run and exits. Exit codes: 0 done (or dry run), 1 error, 2 nothing done because another run holds the lease or the
run stopped.

`recover-signins`: the nightly reconcile enqueues the sign-ins post_auth could not at the start of each run; this
does the same right after an SQS outage, or looks (`--dry-run`) at what post_auth's recovery records hold. It
shares the watermark with the nightly run, so the two never skip a record between them. Exit codes: 0 done (or dry
run), 1 error, 2 some records were skipped (invalid, a `sub` Cognito no longer knows, or rejected by SQS; each is
logged).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from chalicelib.timefmt import utc_iso
from chalicelib.token_bucket import LIST_USERS_PER_SECOND
from userhub_sync.cli import options
from userhub_sync.cli.output import console, print_warning
from userhub_sync.ops.aws import aws_errors, client
from userhub_sync.ops.durations import parse_duration
from userhub_sync.ops.errors import ExitCode, OpsError
from userhub_sync.ops.stage import apply_stage, load_stage

if TYPE_CHECKING:
    from types_boto3_cognito_idp import CognitoIdentityProviderClient

    from chalicelib.reconcile import RunSummary

SUMMARY_ROWS = (
    ("status", "status"),
    ("run_id", "run"),
    ("scanned", "users scanned"),
    ("new", "new"),
    ("changed", "changed"),
    ("deleted", "deleted"),
    ("unchanged", "unchanged"),
    ("duplicates", "listed twice"),
    ("enqueued", "enqueued"),
    ("pages", "pages"),
    ("requests", "ListUsers requests"),
    ("throttles", "throttled"),
    ("restarts", "scan restarts"),
    ("invocations", "invocations"),
    ("seconds", "seconds"),
    ("users_per_second", "users/s"),
    ("requests_per_second", "requests/s"),
    ("rate_limit", "rate limit (req/s)"),
    ("baseline_damaged", "snapshot damaged (treated as missing)"),
)
RECOVERY_ROWS = (
    ("matched", "log events matched"),
    ("records", "recovery records"),
    ("enqueued", "enqueued"),
    ("would_enqueue", "would enqueue"),
    ("invalid", "invalid (skipped)"),
    ("unresolved", "unknown sub (skipped)"),
    ("rejected", "rejected by SQS (skipped)"),
)
JsonOut = Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show the JSON log lines too.")]


@contextmanager
def _log_level(verbose: bool) -> Iterator[None]:
    """The tables say it all; --verbose for the JSON log lines (warnings always show)."""
    logger = logging.getLogger("userhub_sync")
    level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _estimate_users(cognito: CognitoIdentityProviderClient, pool_id: str) -> int | None:
    """Cognito's estimate of the pool size, for the progress bar only (one UserPoolRead call)."""
    try:
        return int(cognito.describe_user_pool(UserPoolId=pool_id)["UserPool"].get("EstimatedNumberOfUsers") or 0)
    except aws_errors():
        return None


def summary_table(summary: RunSummary, title: str = "reconcile") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for field, label in SUMMARY_ROWS:
        value = getattr(summary, field)
        if value is not None:
            table.add_row(label, str(value))
    return table


def _print_listed(title: str, lines: list[str], show: int) -> None:
    out = console()
    out.print(title, style="bold")
    listed = lines if show <= 0 else lines[:show]
    for line in listed:
        out.print(f"  {line}", markup=False)
    if len(listed) < len(lines):
        out.print(f"  … and {len(lines) - len(listed)} more (--show 0 lists all)")


def _list_users_rate(value: float | None) -> float | None:
    """The bound RECONCILE_RATE_LIMIT has, as a usage error: above zero and within Cognito's ListUsers quota."""
    if value is not None and not 0 < value <= LIST_USERS_PER_SECOND:
        raise typer.BadParameter(f"must be above 0 and at most {LIST_USERS_PER_SECOND:g} (Cognito's ListUsers quota)")
    return value


def reconcile_command(
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            "-s",
            help="Stage in .chalice/config.json (dev, prod, ...); variables already set in the shell win.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what would be enqueued, by category; enqueue nothing and write nothing."),
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Enqueue every user, not only new, changed and deleted ones.")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            callback=_list_users_rate,
            help="ListUsers requests per second (overrides "
            "RECONCILE_RATE_LIMIT; at most 30, shared with your own calls).",
        ),
    ] = None,
    show: Annotated[int, typer.Option("--show", help="With --dry-run: usernames listed per category (0: all).")] = 50,
    json_output: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Scan the pool and enqueue CHANGED for new, changed and deleted users (the scheduled job, by hand)."""
    import boto3

    from chalicelib import reconcile
    from chalicelib.reconcile import Category, RunStatus
    from chalicelib.settings import get_settings, reset_settings

    apply_stage(stage, function="reconcile")
    if rate is not None:
        os.environ["RECONCILE_RATE_LIMIT"] = repr(rate)
    os.environ.setdefault("USERHUB_SYNC_METRICS", "off")  # EMF lines are for CloudWatch, not a terminal
    reset_settings()
    settings = get_settings()
    pool_id = settings.require("USER_POOL_ID")
    settings.require("SNAPSHOT_BUCKET")
    cognito = reconcile.make_cognito_client()
    deps = reconcile.Deps(cognito=cognito, s3=boto3.client("s3"), sqs=boto3.client("sqs"))
    request = reconcile.ReconcileRequest(full=full, dry_run=dry_run)
    with (
        _log_level(verbose),
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "pages {task.fields[pages]} · throttled {task.fields[throttles]} · enqueued {task.fields[enqueued]}"
            ),
            TimeElapsedColumn(),
            console=console(stderr=True),
            disable=json_output,
            transient=False,
        ) as progress,
    ):
        task = progress.add_task("scanning", total=_estimate_users(cognito, pool_id), pages=0, throttles=0, enqueued=0)

        def on_progress(counters: reconcile.Counters, phase: str) -> None:
            progress.update(
                task,
                completed=counters.scanned,
                description=phase,
                pages=counters.pages,
                throttles=counters.throttles,
                enqueued=counters.enqueued,
            )

        try:
            result = reconcile.run_reconcile(request, deps=deps, settings=settings, progress=on_progress)
        except reconcile.ReconcileError as error:
            raise OpsError(f"reconcile failed: {error}") from None

    summary = result.summary
    if json_output:
        shown = summary.to_dict()
        typer.echo(json.dumps({**shown, "planned": result.planned} if dry_run else shown))
    else:
        if dry_run:
            for category in Category:
                names = result.planned.get(category) or []
                if names:
                    lines = [f"{category}\t{name}" for name in names]
                    _print_listed(f"would enqueue CHANGED for {len(names)} {category} user(s):", lines, show)
        title = "reconcile (dry run: nothing enqueued, nothing written)" if dry_run else "reconcile"
        console().print(summary_table(summary, title))
    if result.status is RunStatus.SKIPPED:
        raise OpsError(f"nothing done: {summary.reason}", ExitCode.ATTENTION)
    if result.status not in (RunStatus.COMPLETE, RunStatus.DRY_RUN):
        raise OpsError(f"run ended as '{result.status}'", ExitCode.ATTENTION)


def _when(ms: int | None) -> str:
    return "-" if ms is None else utc_iso(ms / 1000)


def recover_signins_command(
    stage: options.StageOpt,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            callback=options.duration,
            help="Look back this far (90m, 6h, 2d) instead of from the watermark. The watermark moves only if this "
            "window starts at or before it.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be enqueued; enqueue nothing, move no watermark.")
    ] = False,
    show: Annotated[int, typer.Option("--show", help="With --dry-run: messages listed (0: all).")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
    verbose: Verbose = False,
) -> None:
    """Enqueue again the sign-ins post_auth could not (its recovery records in CloudWatch Logs)."""
    from chalicelib import signin_recovery as recovery

    ctx = load_stage(stage)
    os.environ.setdefault("USERHUB_SYNC_METRICS", "off")  # EMF lines are for CloudWatch, not a terminal
    try:
        since_ms = None
        if since is not None:
            since_ms = int((datetime.now(UTC).timestamp() - parse_duration(since)) * 1000)
        # the names `chalice deploy` gives the trigger functions, unless the stage lists its log groups
        groups = recovery.trigger_log_groups(ctx.var("SIGNIN_RECOVERY_LOG_GROUPS"), ctx.function_name("reconcile"))
    except (ValueError, recovery.RecoveryError) as error:
        raise OpsError(str(error)) from None
    assert groups is not None  # always derivable from the stage's own function names
    sqs = client("sqs")

    def queue_url() -> str:
        return sqs.get_queue_url(QueueName=ctx.events_queue)["QueueUrl"]

    clients = recovery.RecoveryClients(
        logs=client("logs"), sqs=sqs, s3=client("s3"), cognito=lambda: client("cognito-idp"), queue_url=queue_url
    )
    with _log_level(verbose):
        try:
            report = recovery.recover_signins(
                clients, bucket=ctx.bucket, log_groups=groups, since_ms=since_ms, dry_run=dry_run
            )
        except recovery.RecoveryError as error:
            raise OpsError(f"recovery failed: {error}") from None

    summary = report.summary()
    if json_output:
        planned = [json.loads(m.to_body()) for m in report.planned]
        typer.echo(json.dumps({**summary, "planned": planned} if dry_run else summary))
    else:
        if dry_run and report.planned:
            lines = [f"{m.type.value}  {m.username}  {m.event_time.isoformat()}" for m in report.planned]
            _print_listed(f"would enqueue {len(report.planned)} message(s):", lines, show)
        title = "recover-signins (dry run: nothing enqueued)" if dry_run else "recover-signins"
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("", justify="right", overflow="fold")
        table.add_row("window", f"{_when(report.start_ms)} → {_when(report.end_ms)}")
        for key, label in RECOVERY_ROWS:
            if summary.get(key) is not None:
                table.add_row(label, str(summary[key]))
        table.add_row("watermark", f"{_when(report.watermark_before_ms)} → {_when(report.watermark_after_ms)}")
        for group in groups:
            table.add_row("log group", group + (" (not created yet)" if group in report.missing_groups else ""))
        console().print(table)
    if report.skipped:
        print_warning(f"{report.skipped} record(s) skipped (see the log lines above; --verbose for all)")
        raise typer.Exit(ExitCode.ATTENTION)
