"""`userhub-sync status` and `user-hash`: is the stage healthy, and how do its log lines show a user."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.table import Table

from userhub_sync.cli import options
from userhub_sync.cli.output import console, echo_json
from userhub_sync.ops.durations import format_duration
from userhub_sync.ops.errors import ExitCode, OpsError
from userhub_sync.ops.stage import load_stage
from userhub_sync.ops.status import gather


def status_command(
    stage: options.StageOpt,
    as_json: options.JsonOpt = False,
    peek: Annotated[
        bool,
        typer.Option(
            help="If CloudWatch has no age, receive ≤ 10 messages (VisibilityTimeout=0) to estimate it. Each peek "
            "counts as a receive, bringing those messages one step closer to the DLQ."
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            help="Exit 2 unless the queues exist, the DLQ is empty, the retry schedule fits the retention, the "
            "wiring is in place and the mapping is enabled, no backlog waits with nothing consuming it, and the last "
            "reconcile did not fail."
        ),
    ] = False,
    sample_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="When messages wait, none is in flight and the mapping is enabled, count the queue again after "
            "this long: a backlog that grew meanwhile is not being consumed (0: do not sample).",
        ),
    ] = 5.0,
) -> None:
    """Queue depth, in flight, DLQ depth, oldest age, retention fit, last reconcile, wiring and the mapping's state."""
    ctx = load_stage(stage)
    report = gather(ctx, peek=peek, sample_seconds=sample_seconds)
    if as_json:
        echo_json(report)
    else:
        _print(report)
    if check and not report["healthy"]:
        raise typer.Exit(ExitCode.ATTENTION)


def _print(report: dict[str, Any]) -> None:
    out = console()
    queues = Table(title=f"status {report['stage']}")
    for column in ("queue", "visible", "in flight", "delayed", "oldest", "age source"):
        queues.add_column(column, overflow="fold")
    for label in ("events_queue", "dead_letter_queue"):
        q = report[label]
        if not q.get("exists"):
            queues.add_row(q["name"], "[red]missing[/red]", "", "", "", "run bootstrap")
            continue
        queues.add_row(
            q["name"],
            str(q["visible"]),
            str(q["in_flight"]),
            str(q["delayed"]),
            format_duration(q.get("oldest_age_seconds")),
            q.get("oldest_age_source", ""),
        )
    out.print(queues)
    retention = report.get("retention")
    if retention:
        mark = "[green]ok[/green]" if retention["ok"] else "[red]too short[/red]"
        out.print(f"retention: {mark}: ", end="")
        out.print(retention["detail"], markup=False)
    backlog = report.get("backlog")
    if backlog:
        mark = "[green]ok[/green]" if backlog["ok"] else "[red]stalled[/red]"
        out.print(f"backlog: {mark}: ", end="")
        out.print(backlog["detail"], markup=False)
    rec = report["last_reconcile"]
    if rec["status"] == "failing":
        out.print("last reconcile: [red]failing[/red]")
        out.print(f"  {rec['detail']}", style="red", markup=False)
    elif rec["status"] == "ok":
        summary = rec["summary"]
        shown = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list))
        out.print(f"last reconcile: {shown}", markup=False)
        if rec.get("detail"):
            out.print(f"  {rec['detail']}", markup=False)
    else:
        out.print(f"last reconcile: {rec['status']} ({rec.get('detail', '')})", markup=False)
    wiring = report["wiring"]
    table = Table(title="wiring")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    if not wiring.get("deployed", True):
        table.add_row("deployed", "[red]no[/red]", wiring.get("detail", ""))
    for name in ("event_source_mapping", "trigger", "permission"):
        if name in wiring:
            item = wiring[name]
            detail = item.get("detail") or ", ".join(f"{k}={v}" for k, v in item.items() if k != "ok")
            table.add_row(name, "[green]yes[/green]" if item["ok"] else "[red]no[/red]", detail)
    out.print(table)
    out.print("[green]healthy[/green]" if report["healthy"] else "[yellow]needs attention[/yellow]")


def user_hash_command(
    username: Annotated[str, typer.Argument(help="The username whose log lines you look for.")],
    stage: options.StageOpt,
) -> None:
    """Print how the stage's log lines show USERNAME: its keyed hash with LOG_USERNAMES=hashed, else the name."""
    from chalicelib.observability import log_user

    load_stage(stage)
    if os.environ.get("LOG_USERNAMES", "plain") == "hashed" and len(os.environ.get("LOG_USERNAME_KEY", "")) < 16:
        raise OpsError(f"stage {stage} sets LOG_USERNAMES=hashed but LOG_USERNAME_KEY is unset or under 16 characters")
    typer.echo(log_user(username))
