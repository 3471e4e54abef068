"""`userhub-sync status` and `user-hash`: is the stage healthy, and how do its log lines show a user."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from userhub_sync.cli import options
from userhub_sync.cli.output import console, echo_json, folded_table
from userhub_sync.ops.durations import format_duration
from userhub_sync.ops.errors import ExitCode, OpsError
from userhub_sync.ops.stage import load_stage
from userhub_sync.ops.status import LastReconcile, ReconcileHealth, StatusReport, gather


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
            "wiring is in place and the mapping is enabled with the fleet bound, no backlog waits with nothing "
            "consuming it, the last reconcile did not fail, no alarm is in ALARM and capture is live (where deployed)."
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
        echo_json(report.to_dict())
    else:
        _print(report)
    if check and not report.healthy:
        raise typer.Exit(ExitCode.ATTENTION)


def _mark(ok: bool, bad: str) -> str:
    return "[green]ok[/green]" if ok else f"[red]{bad}[/red]"


def _print(report: StatusReport) -> None:
    out = console()
    queues = folded_table(
        f"status {report.stage}", ("queue", "visible", "in flight", "delayed", "oldest", "age source")
    )
    for queue in (report.events_queue, report.dead_letter_queue):
        if not queue.exists:
            queues.add_row(queue.name, "[red]missing[/red]", "", "", "", "run bootstrap")
            continue
        queues.add_row(
            queue.name,
            str(queue.depths.visible),
            str(queue.depths.in_flight),
            str(queue.depths.delayed),
            format_duration(queue.oldest_age_seconds),
            queue.oldest_age_source,
        )
    out.print(queues)
    if report.retention:
        out.print(f"retention: {_mark(report.retention.ok, 'too short')}: ", end="")
        out.print(report.retention.describe(), markup=False)
    if report.backlog:
        out.print(f"backlog: {_mark(report.backlog.ok, 'stalled')}: ", end="")
        out.print(report.backlog.detail, markup=False)
    _print_reconcile(report.last_reconcile)
    table = Table(title="wiring")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    if not report.wiring.deployed:
        table.add_row("deployed", "[red]no[/red]", report.wiring.detail or "")
    for name, item in report.wiring.checks().items():
        table.add_row(name, "[green]yes[/green]" if item.ok else "[red]no[/red]", item.describe())
    out.print(table)
    _print_alarms(report)
    _print_capture(report)
    out.print("[green]healthy[/green]" if report.healthy else "[yellow]needs attention[/yellow]")


def _print_alarms(report: StatusReport) -> None:
    out = console()
    if report.alarms_error:
        out.print(f"alarms: could not be read ({report.alarms_error})", markup=False)
        return
    table = folded_table("alarms", ("alarm", "state", "reason"))
    colour = {"OK": "green", "ALARM": "red", "missing": "yellow"}
    for alarm in report.alarms:
        shown = f"[{colour[alarm.state]}]{alarm.state}[/]" if alarm.state in colour else alarm.state
        table.add_row(alarm.name, shown, alarm.reason)
    out.print(table)


def _print_capture(report: StatusReport) -> None:
    capture = report.capture
    if capture is None:
        return
    out = console()
    verdict = "[green]live[/green]" if capture.live else ("[red]not live[/red]" if capture.expected else "not live")
    out.print(f"capture: {verdict}" + ("" if capture.expected else " (capture function not deployed: not judged)"))
    out.print(f"  trail: {capture.trail.trail or 'none'}: {capture.trail.detail}", markup=False)
    out.print(f"  rule {capture.rule}: {capture.rule_state}", markup=False)
    age = capture.last_event_age_seconds
    shown = (
        f"{format_duration(age)} ago ({capture.last_event_source})" if age is not None else capture.last_event_source
    )
    out.print(f"  last captured event: {shown}", markup=False)


def _print_reconcile(last: LastReconcile) -> None:
    out = console()
    if last.status == ReconcileHealth.FAILING:
        out.print("last reconcile: [red]failing[/red]")
        out.print(f"  {last.detail}", style="red", markup=False)
    elif last.status == ReconcileHealth.OK and last.summary is not None:
        shown = ", ".join(f"{k}={v}" for k, v in last.summary.items() if not isinstance(v, dict | list))
        out.print(f"last reconcile: {shown}", markup=False)
        if last.detail:
            out.print(f"  {last.detail}", markup=False)
    else:
        out.print(f"last reconcile: {last.status} ({last.detail or ''})", markup=False)


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
