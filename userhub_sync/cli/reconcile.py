"""`userhub-sync reconcile --stage S`: the scheduled reconcile, run by hand with the very same code.

No Lambda here, so no deadline: the run never hands off, it keeps going (holding the run's lease in 15-minute
slices, checkpointing as it renews) until the pool is scanned. It shares the lease, checkpoint and snapshot with the
deployed function, so running it while a scheduled run is in progress is safe: it reports that run and exits.
Exit codes: 0 done (or dry run), 1 error, 2 nothing done because another run holds the lease or the run stopped.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from userhub_sync.ops.util import console, print_error

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


def _fail(message: str, code: int = 1) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def _estimate_users(cognito: Any, pool_id: str) -> int | None:
    """Cognito's estimate of the pool size, for the progress bar only (one UserPoolRead call)."""
    try:
        return int(cognito.describe_user_pool(UserPoolId=pool_id)["UserPool"].get("EstimatedNumberOfUsers") or 0)
    except Exception:
        return None


def summary_table(summary: dict[str, Any], title: str = "reconcile") -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for key, label in SUMMARY_ROWS:
        if summary.get(key) is not None:
            table.add_row(label, str(summary[key]))
    return table


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
            help="ListUsers requests per second (overrides "
            "RECONCILE_RATE_LIMIT; at most 30, shared with your own calls).",
        ),
    ] = None,
    show: Annotated[int, typer.Option("--show", help="With --dry-run: usernames listed per category (0: all).")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the JSON log lines too.")] = False,
) -> None:
    """Scan the pool and enqueue CHANGED for new, changed and deleted users (the scheduled job, by hand)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from chalicelib.settings import ConfigError, get_settings, reset_settings
    from userhub_sync.ops.stage import StageError, apply_stage

    try:
        apply_stage(stage, function="reconcile")
        if rate is not None:
            os.environ["RECONCILE_RATE_LIMIT"] = repr(rate)
        os.environ.setdefault("USERHUB_SYNC_METRICS", "off")  # EMF lines are for CloudWatch, not a terminal
        reset_settings()
        settings = get_settings()
        pool_id = settings.require("USER_POOL_ID")
        settings.require("SNAPSHOT_BUCKET")
    except (StageError, ConfigError) as error:
        raise _fail(str(error)) from None

    import boto3

    from chalicelib import reconcile

    err = console(stderr=True)
    out = console()
    logger = logging.getLogger("userhub_sync")
    level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)  # the table says it all; --verbose for the JSON
    try:
        cognito = reconcile.make_cognito_client()
        deps = reconcile.Deps(cognito=cognito, s3=boto3.client("s3"), sqs=boto3.client("sqs"))
        request = reconcile.ReconcileRequest(full=full, dry_run=dry_run)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "pages {task.fields[pages]} · throttled {task.fields[throttles]} · enqueued {task.fields[enqueued]}"
            ),
            TimeElapsedColumn(),
            console=err,
            disable=json_output,
            transient=False,
        ) as progress:
            task = progress.add_task(
                "scanning", total=_estimate_users(cognito, pool_id), pages=0, throttles=0, enqueued=0
            )

            def on_progress(counters: reconcile.Counters, phase: str) -> None:
                progress.update(
                    task,
                    completed=counters.scanned,
                    description=phase,
                    pages=counters.pages,
                    throttles=counters.throttles,
                    enqueued=counters.enqueued,
                )

            result = reconcile.run_reconcile(request, deps=deps, settings=settings, progress=on_progress)
    except reconcile.ReconcileError as error:
        raise _fail(f"reconcile failed: {error}") from None
    except ClientError as error:
        details = error.response.get("Error") or {}
        raise _fail(f"{error.operation_name} failed: {details.get('Code')}: {details.get('Message', '')}") from None
    except BotoCoreError as error:
        raise _fail(f"AWS: {error}") from None
    finally:
        logger.setLevel(level)

    summary = result.summary
    if json_output:
        typer.echo(json.dumps({**summary, "planned": result.planned} if dry_run else summary))
    else:
        if dry_run:
            for category in reconcile.CATEGORIES:
                names = result.planned.get(category) or []
                if not names:
                    continue
                out.print(f"would enqueue CHANGED for {len(names)} {category} user(s):", style="bold")
                listed = names if show <= 0 else names[:show]
                for name in listed:
                    out.print(f"  {category}\t{name}", markup=False)
                if len(listed) < len(names):
                    out.print(f"  … and {len(names) - len(listed)} more (--show 0 lists all)")
        out.print(
            summary_table(summary, "reconcile (dry run: nothing enqueued, nothing written)" if dry_run else "reconcile")
        )
    if result.status == "skipped":
        raise _fail(f"nothing done: {summary.get('reason')}", code=2)
    if result.status not in ("complete", "dry_run"):
        raise _fail(f"run ended as {result.status!r}", code=2)


def register(app: typer.Typer) -> None:
    """Add `reconcile` to the CLI."""
    app.command("reconcile")(reconcile_command)
