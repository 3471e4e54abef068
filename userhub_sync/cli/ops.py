"""Operator commands: `bootstrap`, `wire`, `status` and `dlq list|replay|purge`, all per `--stage`.

This file is only the command line (options, tables, exit codes); the work is in bootstrap.py, wire.py,
status.py and dlq.py so tests and other tools can call it directly. Exit codes are `opsutil.ExitCode`: 0 done,
1 error, 2 something needs attention (drift, missing resource, unhealthy with --check, DLQ messages left behind or
not seen), 3 the user pool changed beyond LambdaConfig, 4 a different trigger is in place (use --force), 64 a usage
error (nothing was done). Every error is one line on stderr, whatever the terminal width.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from chalicelib.sqs_limits import MAX_VISIBILITY_SECONDS
from userhub_sync.ops.util import (
    EXIT_CODES_HELP,
    ExitCode,
    OpsError,
    UsageProblem,
    console,
    error_code,
    format_duration,
    format_span,
    load_stage,
    parse_duration,
    print_error,
    to_jsonable,
)

F = TypeVar("F", bound=Callable[..., Any])

StageOpt = Annotated[str, typer.Option("--stage", "-s", help="Stage in .chalice/config.json (dev, prod, ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
STATUS_STYLE = {
    "ok": "green",
    "created": "cyan",
    "set": "cyan",
    "added": "cyan",
    "updated": "cyan",
    "fixed": "yellow",
    "drift": "red",
    "missing": "red",
    "warning": "yellow",
}


def _console(stderr: bool = False) -> Any:
    return console(stderr=stderr)


def _fail(message: str, code: int = ExitCode.ERROR) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def _see_help(message: str) -> str:
    from typer._click.globals import get_current_context  # typer vendors click

    context = get_current_context(silent=True)
    return f"{message} (see {context.command_path} --help)" if context is not None else message


def handle_errors(func: F) -> F:
    """One clear line and a non-zero exit for the errors an operator can act on; no tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        try:
            return func(*args, **kwargs)
        except UsageProblem as error:
            raise _fail(_see_help(str(error)), error.exit_code) from None
        except OpsError as error:
            raise _fail(str(error), error.exit_code) from None
        except NoCredentialsError:
            raise _fail("no AWS credentials found (profile, environment or instance role)") from None
        except NoRegionError:
            raise _fail("no AWS region configured: set AWS_DEFAULT_REGION") from None
        except ClientError as error:
            op = getattr(error, "operation_name", "AWS call")
            message = (error.response.get("Error") or {}).get("Message", "")
            raise _fail(f"{op} failed: {error_code(error)}: {message}".rstrip(": ")) from None
        except BotoCoreError as error:
            raise _fail(f"AWS: {error}") from None

    return wrapper  # type: ignore[return-value]


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=to_jsonable, indent=2))


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'magenta')}]{status}[/]"


def _pool_id(value: str | None) -> str | None:
    """Refused by its format before anything is read or changed (AWS's own pattern for a pool id)."""
    from userhub_sync.ops.bootstrap import POOL_ID_RE

    if value is not None and not POOL_ID_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not a user pool id (like us-east-1_AbC123)")
    return value


def _connection_id(value: str | None) -> str | None:
    from userhub_sync.ops.bootstrap import CONNECTION_RE

    if value is not None and not CONNECTION_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not a connection id (like conn_...)")
    return value


def _duration(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    return value


# ================================================================================================ bootstrap
def bootstrap_command(
    stage: StageOpt,
    user_pool_id: Annotated[
        str | None, typer.Option(callback=_pool_id, help="Cognito user pool id; written as USER_POOL_ID.")
    ] = None,
    connection_id: Annotated[
        str | None,
        typer.Option(
            callback=_connection_id, help="UserHub connection id (conn_...); written as USERHUB_CONNECTION_ID."
        ),
    ] = None,
    max_receive_count: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1000,
            help="Receives before SQS dead-letters a message (default: the stage's MAX_RECEIVE_COUNT, else 13 ≈ 29 h).",
        ),
    ] = None,
    allow_short_retry: Annotated[bool, typer.Option(help="Accept a retry horizon under 24 h.")] = False,
    events_retention: Annotated[
        str | None,
        typer.Option(
            callback=_duration,
            help="How long the events queue keeps a message (4d, 6d, ...; at most 14d). Default: the stage's "
            "EVENTS_RETENTION_SECONDS, else 4d. The whole retry schedule plus RETENTION_MARGIN_SECONDS must fit.",
        ),
    ] = None,
    kms_key: Annotated[
        str | None,
        typer.Option(
            help="Customer-managed KMS key (id, alias or ARN) for the queues, bucket and parameter; default: "
            "SQS-managed SSE, SSE-S3 and alias/aws/ssm."
        ),
    ] = None,
    fix: Annotated[bool, typer.Option(help="Correct drifted settings (default: only report them).")] = False,
    check: Annotated[
        bool, typer.Option(help="Read-only: create, change and write nothing; exit 2 if not ready.")
    ] = False,
    skip_key: Annotated[
        bool, typer.Option(help="Do not create or change the Admin key parameter (only check that it exists).")
    ] = False,
    create_stage: Annotated[bool, typer.Option(help="Add the stage to config.json if it is not there.")] = False,
    from_stage: Annotated[str, typer.Option(help="With --create-stage: copy settings from this stage.")] = "dev",
    as_json: JsonOpt = False,
) -> None:
    """Create or check the stage's queues, DLQ, snapshot bucket and Admin key parameter; write config and policies.

    The Admin key is read from USERHUB_ADMIN_KEY or a hidden prompt, never from an argument (shell history).
    Idempotent: a second run reports "ok" and changes nothing. Run it before `chalice deploy --stage S`.
    """
    from userhub_sync.ops import bootstrap as bs
    from userhub_sync.ops.stage import StageError, find_project_dir, read_config, write_config

    admin_key = os.environ.get("USERHUB_ADMIN_KEY") or None  # the shell's, read before the stage's are applied
    project = find_project_dir()
    if create_stage and not check:
        try:
            config = read_config(project)
        except StageError as error:
            raise _fail(str(error)) from None
        if stage not in (config.get("stages") or {}):
            config.setdefault("stages", {})[stage] = bs.new_stage_block(config, stage, from_stage)
            write_config(config, project)
            if not as_json:
                _console().print(f"added stage [bold]{stage}[/bold] to .chalice/config.json (from {from_stage})")
    ctx = load_stage(stage, project)

    def ask() -> str:
        return typer.prompt(
            f"UserHub Admin API key for stage {stage} (input hidden)", hide_input=True, default="", show_default=False
        )

    opts = bs.BootstrapOptions(
        max_receive_count=max_receive_count,
        allow_short_retry=allow_short_retry,
        events_retention=int(parse_duration(events_retention)) if events_retention else None,
        kms_key=kms_key,
        fix=fix,
        check=check,
        user_pool_id=user_pool_id,
        connection_id=connection_id,
        admin_key=admin_key,
        ask_key=None if check else ask,
        skip_key=skip_key,
    )
    result = bs.bootstrap(ctx, opts)
    if as_json:
        _echo_json(
            {
                "stage": result.stage,
                "account": result.account,
                "region": result.region,
                "max_receive_count": result.max_receive_count,
                "retry_horizon_seconds": result.retry_horizon_seconds,
                "visibility_timeout": result.visibility_timeout,
                "retention": result.retention.to_dict(),
                "needs_attention": result.needs_attention,
                "steps": [step.__dict__ for step in result.steps],
            }
        )
    else:
        out = _console()
        table = Table(title=f"bootstrap {stage} ({result.account}, {result.region})")
        for column in ("resource", "name", "status", "detail"):
            table.add_column(column, overflow="fold")
        for step in result.steps:
            table.add_row(step.resource, step.name, _styled(step.status), step.detail)
        out.print(table)
        horizon = result.retry_horizon_seconds
        hours = f" ({horizon / 3600:.1f} h)" if horizon >= 3600 else ""
        out.print(
            f"retry horizon: at least {format_span(horizon)}{hours} with maxReceiveCount "
            f"{result.max_receive_count}; visibility timeout {result.visibility_timeout} s (6 × deliver's timeout)"
        )
        out.print(f"retention: {result.retention.describe()}", markup=False)
        if result.needs_attention:
            hint = "rerun without --check" if check else "rerun with --fix to correct drift"
            out.print(f"[yellow]needs attention[/yellow]: {hint}")
        else:
            out.print(
                f"[green]ok[/green]: next, `chalice deploy --stage {stage}`, then `userhub-sync wire --stage {stage}`"
            )
    if result.needs_attention:
        raise typer.Exit(ExitCode.ATTENTION)


# ================================================================================================ wire
def wire_command(
    stage: StageOpt,
    user_pool_id: Annotated[
        str | None, typer.Option(callback=_pool_id, help="Pool to wire (default: the stage's USER_POOL_ID).")
    ] = None,
    post_confirmation: Annotated[
        bool,
        typer.Option(
            "--post-confirmation", help="Also set PostConfirmation to the post_confirmation function (SIGNUP events)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace a different trigger already set on the pool.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would change; change nothing.")] = False,
    skip_esm: Annotated[
        bool,
        typer.Option(help="Leave the event source mapping alone (e.g. the CloudFormation template already sets it)."),
    ] = False,
    post_auth_arn: Annotated[
        str | None, typer.Option(help="post_auth's ARN, if not deployed by chalice deploy.")
    ] = None,
    post_confirmation_arn: Annotated[str | None, typer.Option(help="post_confirmation's ARN (same reason).")] = None,
    deliver_arn: Annotated[str | None, typer.Option(help="deliver's ARN (same reason).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """After `chalice deploy`: ReportBatchItemFailures, Cognito's invoke permission, the PostAuthentication trigger.

    The pool is updated from its own DescribeUserPool output (only what UpdateUserPool accepts), so nothing else
    is reset; it is described again afterwards and any other change fails the command (exit 3). Idempotent.
    """
    from userhub_sync.ops import wire as w

    ctx = load_stage(stage)
    arns = {"post_auth": post_auth_arn, "post_confirmation": post_confirmation_arn, "deliver": deliver_arn}
    try:
        result = w.wire(
            ctx,
            user_pool_id=user_pool_id,
            post_confirmation=post_confirmation,
            force=force,
            dry_run=dry_run,
            skip_esm=skip_esm,
            arns=arns,
        )
    except w.PoolChangedError as error:
        _print_wire(error.result, as_json, stage)
        if not as_json:
            table = Table(title="user pool settings changed by UpdateUserPool (expected: LambdaConfig only)")
            for column in ("setting", "before", "after"):
                table.add_column(column, overflow="fold")
            for change in error.result.unexpected:
                table.add_row(change.path, repr(change.before), repr(change.after))
            _console().print(table)
        raise _fail(str(error), error.exit_code) from None
    _print_wire(result, as_json, stage)


def _print_wire(result: Any, as_json: bool, stage: str) -> None:
    if as_json:
        _echo_json(
            {
                "stage": stage,
                "ok": result.ok,
                "steps": [s.__dict__ for s in result.steps],
                "unexpected_changes": [c.__dict__ for c in result.unexpected],
            }
        )
        return
    table = Table(title=f"wire {stage}")
    for column in ("what", "status", "detail"):
        table.add_column(column, overflow="fold")
    for step in result.steps:
        table.add_row(step.what, _styled(step.status), step.detail)
    _console().print(table)


# ================================================================================================ status
def status_command(
    stage: StageOpt,
    as_json: JsonOpt = False,
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
    from userhub_sync.ops import status as st

    ctx = load_stage(stage)
    report = st.gather(ctx, peek=peek, sample_seconds=sample_seconds)
    if as_json:
        _echo_json(report)
    else:
        _print_status(report)
    if check and not report["healthy"]:
        raise typer.Exit(ExitCode.ATTENTION)


def _print_status(report: dict[str, Any]) -> None:
    out = _console()
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


# ================================================================================================ dlq
dlq_app = typer.Typer(
    help="Inspect, replay or purge the stage's dead-letter queue.", epilog=EXIT_CODES_HELP, no_args_is_help=True
)

ReasonOpt = Annotated[str | None, typer.Option(help="Only messages whose failure reason contains this text.")]
StatusOpt = Annotated[int | None, typer.Option("--status", help="Only messages that failed with this HTTP status.")]
UserOpt = Annotated[str | None, typer.Option(help="Only this user's messages (exact username).")]
KindOpt = Annotated[str | None, typer.Option(help="poison | permanent | exhausted | redriven (moved by SQS).")]
OlderOpt = Annotated[
    str | None, typer.Option(callback=_duration, help="Only messages first seen longer ago than this (90s, 1h, 2d).")
]
NewerOpt = Annotated[
    str | None, typer.Option(callback=_duration, help="Only messages first seen within this long (90s, 1h, 2d).")
]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="At most this many messages.")]
WaitOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=20,
        help="Long-poll seconds per receive; 0 short-polls (faster, "
        "but on a large queue a receive may miss messages and end the scan early).",
    ),
]


def _filters(
    reason: str | None, status: int | None, user: str | None, kind: str | None, older: str | None, newer: str | None
) -> Any:
    from userhub_sync.ops.dlq import Filters

    try:
        return Filters(
            reason=reason,
            status=status,
            user=user,
            kind=kind,
            older_than=parse_duration(older) if older else None,
            newer_than=parse_duration(newer) if newer else None,
        )
    except (ValueError, OpsError) as error:  # a malformed filter is a usage error: nothing was received
        raise UsageProblem(str(error)) from None


def _queue(ctx: Any, name: str) -> tuple[Any, str, str]:
    from userhub_sync.ops.util import client

    sqs = client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except Exception as error:
        if error_code(error) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise OpsError(f"queue {name} not found: run `userhub-sync bootstrap --stage {ctx.stage}`") from None
        raise
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs, url, arn


@dlq_app.command("list")
@handle_errors
def dlq_list(
    stage: StageOpt,
    reason: ReasonOpt = None,
    status: StatusOpt = None,
    user: UserOpt = None,
    kind: KindOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: LimitOpt = None,
    visibility: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_VISIBILITY_SECONDS,
            help="Seconds each listed message stays hidden while the list is built; all are made visible again at "
            "the end, so a replay started after the list sees them at once.",
        ),
    ] = 30,
    show_body: Annotated[bool, typer.Option(help="Include the raw message body (JSON output).")] = False,
    wait_seconds: WaitOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """List DLQ messages with their failure (kind, status, code, reason, attempts, first seen, age)."""
    from userhub_sync.ops import dlq

    ctx = load_stage(stage)
    sqs, url, _ = _queue(ctx, ctx.dead_letter_queue)
    filters = _filters(reason, status, user, kind, older_than, newer_than)
    listing = dlq.list_messages(sqs, url, filters, limit=limit, visibility=visibility, wait=wait_seconds)
    if as_json:
        _echo_json(
            {
                "queue": ctx.dead_letter_queue,
                "scanned": listing.scanned,
                "matched": len(listing.messages),
                "not_released": listing.not_released,
                "messages": [m.to_dict(show_body) for m in listing.messages],
            }
        )
    else:
        _print_listing(ctx.dead_letter_queue, listing)
    if listing.not_released:
        print_error(
            f"{listing.not_released} listed message(s) could not be made visible again: they stay hidden for up "
            f"to {visibility} s, and a replay started before then will not see them"
        )
        raise typer.Exit(ExitCode.ATTENTION)


def _print_listing(queue: str, listing: Any) -> None:
    table = Table(title=f"{queue}: {len(listing.messages)} of {listing.scanned} message(s)")
    for column in ("message id", "user", "kind", "status", "code", "reason", "attempts", "first seen", "age"):
        table.add_column(column, overflow="fold")
    for m in listing.messages:
        table.add_row(
            m.message_id,
            m.username or "-",
            m.kind,
            str(m.status or "-"),
            m.code or "-",
            (m.reason or "-")[:120],
            str(m.attempts or "-"),
            m.first_seen.strftime("%Y-%m-%d %H:%M:%S") if m.first_seen else "-",
            format_duration(m.age()),
        )
    _console().print(table)


@dlq_app.command("replay")
@handle_errors
def dlq_replay(
    stage: StageOpt,
    reason: ReasonOpt = None,
    status: StatusOpt = None,
    user: UserOpt = None,
    kind: KindOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: LimitOpt = None,
    rate: Annotated[float, typer.Option(help="Messages per second at most (0: no limit).")] = 50.0,
    dry_run: Annotated[bool, typer.Option(help="Count what would be replayed; send and delete nothing.")] = False,
    include_poison: Annotated[bool, typer.Option(help="Also resend bodies that do not parse (as they are).")] = False,
    native: Annotated[
        bool,
        typer.Option(help="Use SQS's StartMessageMoveTask (no filters, no source rewrite; not supported by moto)."),
    ] = False,
    wait_seconds: WaitOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Send DLQ messages back to the events queue (source "replay"); delete each only once its send is confirmed."""
    from userhub_sync.ops import dlq

    ctx = load_stage(stage)
    sqs, dlq_url, dlq_arn = _queue(ctx, ctx.dead_letter_queue)
    _, events_url, events_arn = _queue(ctx, ctx.events_queue)
    filters = _filters(reason, status, user, kind, older_than, newer_than)
    if native:
        if filters.active or limit or include_poison or dry_run:
            raise UsageProblem(
                "--native moves the whole DLQ: it cannot be combined with filters, --limit, "
                "--include-poison or --dry-run"
            )
        handle = dlq.native_move(dlq_arn, events_arn, rate)
        if as_json:
            _echo_json({"native": True, "task_handle": handle})
        else:
            _console().print(f"started SQS message move task {handle} ({ctx.dead_letter_queue} → {ctx.events_queue})")
        return
    from userhub_sync.ops.queues import queue_depths

    depth = queue_depths(sqs, dlq_url)["visible"]
    if as_json:
        report = dlq.replay(
            sqs,
            dlq_url,
            events_url,
            filters,
            include_poison=include_poison,
            dry_run=dry_run,
            rate=rate,
            limit=limit,
            wait=wait_seconds,
        )
        _echo_json({"queue": ctx.dead_letter_queue, "destination": ctx.events_queue, **report.to_dict()})
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            transient=False,
        ) as progress:
            task = progress.add_task("dry run" if dry_run else "replaying", total=max(depth, 1))
            report = dlq.replay(
                sqs,
                dlq_url,
                events_url,
                filters,
                include_poison=include_poison,
                dry_run=dry_run,
                rate=rate,
                limit=limit,
                wait=wait_seconds,
                progress=lambda n: progress.advance(task, n),
            )
            progress.update(task, total=max(report.scanned, 1), completed=report.scanned)
        out = _console()
        verb = "would replay" if dry_run else "replayed"
        out.print(
            f"{verb} {report.replayed}, skipped {report.skipped} "
            f"({report.skipped_poison} poison), failed {report.failed} "
            f"(scanned {report.scanned})"
        )
        if report.duplicates_removed:
            out.print(f"removed {report.duplicates_removed} already-replayed message(s) offered again")
        for failure in report.failures[:20]:
            out.print(f"[red]not sent[/red] {failure['message_id']}: {failure['error']} (still in the DLQ)")
        if report.not_deleted:
            out.print(
                f"[yellow]warning[/yellow]: {report.not_deleted} message(s) were sent but could not be "
                "deleted from the DLQ; a later replay would send them again"
            )
        if report.unseen:
            out.print("[yellow]warning[/yellow]: ", end="")
            out.print(report.unseen_message(), markup=False)
    if report.failed or report.not_deleted or report.unseen:
        raise typer.Exit(ExitCode.ATTENTION)


@dlq_app.command("purge")
@handle_errors
def dlq_purge(
    stage: StageOpt,
    reason: ReasonOpt = None,
    status: StatusOpt = None,
    user: UserOpt = None,
    kind: KindOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait_seconds: WaitOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Delete DLQ messages for good: all of them (PurgeQueue), or with filters only the matching ones."""
    from userhub_sync.ops import dlq
    from userhub_sync.ops.queues import queue_depths

    ctx = load_stage(stage)
    sqs, url, _ = _queue(ctx, ctx.dead_letter_queue)
    filters = _filters(reason, status, user, kind, older_than, newer_than)
    depth = queue_depths(sqs, url)["visible"]
    what = "the messages matching the filters" if filters.active else f"all ~{depth} message(s)"
    if not yes and not typer.confirm(f"Delete {what} from {ctx.dead_letter_queue}? This cannot be undone"):
        raise _fail("aborted; nothing deleted")
    report = dlq.purge(sqs, url, filters, approximate_depth=depth, wait=wait_seconds)
    if as_json:
        _echo_json({"queue": ctx.dead_letter_queue, **report.__dict__})
    else:
        approx = "~" if report.approximate else ""
        _console().print(
            f"deleted {approx}{report.deleted} message(s) from {ctx.dead_letter_queue}"
            + (f" (scanned {report.scanned})" if report.mode == "filtered" else "")
        )
    if report.failed:
        raise typer.Exit(ExitCode.ATTENTION)


# ================================================================================================ registration
def user_hash_command(
    username: Annotated[str, typer.Argument(help="The username whose log lines you look for.")],
    stage: StageOpt,
) -> None:
    """Print how the stage's log lines show USERNAME: its keyed hash with LOG_USERNAMES=hashed, else the name."""
    from chalicelib.observability import log_user

    load_stage(stage)
    if os.environ.get("LOG_USERNAMES", "plain") == "hashed" and len(os.environ.get("LOG_USERNAME_KEY", "")) < 16:
        raise OpsError(f"stage {stage} sets LOG_USERNAMES=hashed but LOG_USERNAME_KEY is unset or under 16 characters")
    typer.echo(log_user(username))


def register(app: typer.Typer) -> None:
    """Add bootstrap, wire, status, user-hash and the dlq group to the CLI."""
    app.command("bootstrap", epilog=EXIT_CODES_HELP)(handle_errors(bootstrap_command))
    app.command("wire", epilog=EXIT_CODES_HELP)(handle_errors(wire_command))
    app.command("status", epilog=EXIT_CODES_HELP)(handle_errors(status_command))
    app.command("user-hash", epilog=EXIT_CODES_HELP)(handle_errors(user_hash_command))
    app.add_typer(dlq_app, name="dlq")
