"""`userhub-sync dlq list|replay|purge`: the command line of ops/dlq.py (filters, progress, tables, exit codes)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chalicelib.sqs_limits import MAX_VISIBILITY_SECONDS
from userhub_sync.cli import options
from userhub_sync.cli.output import console, echo_json, fail, folded_table, handle_errors, print_error
from userhub_sync.ops import dlq
from userhub_sync.ops.aws import client, queue_arn, queue_url_or_none
from userhub_sync.ops.dlq_scan import parse_kind
from userhub_sync.ops.durations import format_duration, parse_duration
from userhub_sync.ops.errors import EXIT_CODES_HELP, ExitCode, OpsError, UsageProblem
from userhub_sync.ops.queues import queue_depths
from userhub_sync.ops.stage import StageContext, load_stage

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

app = typer.Typer(
    help="Inspect, replay or purge the stage's dead-letter queue.", epilog=EXIT_CODES_HELP, no_args_is_help=True
)

# the filters every dlq command takes, added to each by `with_filters`
FILTER_OPTIONS = {
    "reason": Annotated[str | None, typer.Option(help="Only messages whose failure reason contains this text.")],
    "status": Annotated[int | None, typer.Option(help="Only messages that failed with this HTTP status.")],
    "user": Annotated[str | None, typer.Option(help="Only this user's messages (exact username).")],
    "kind": Annotated[str | None, typer.Option(help="poison | permanent | exhausted | redriven (moved by SQS).")],
    "older_than": Annotated[
        str | None,
        typer.Option(callback=options.duration, help="Only messages first seen longer ago than this (90s, 1h, 2d)."),
    ],
    "newer_than": Annotated[
        str | None,
        typer.Option(callback=options.duration, help="Only messages first seen within this long (90s, 1h, 2d)."),
    ],
}
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


def with_filters(command: Callable[..., None]) -> Callable[..., None]:
    """`command` takes `filters: dlq.Filters`; the CLI shows the six FILTER_OPTIONS in its place."""
    signature = inspect.signature(command, eval_str=True)  # real annotations: typer reads Annotated options
    filter_parameters = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
        for name, annotation in FILTER_OPTIONS.items()
    ]
    parameters: list[inspect.Parameter] = []
    for name, parameter in signature.parameters.items():  # the filters where `filters` was, as --help shows them
        parameters.extend(filter_parameters if name == "filters" else [parameter])

    @functools.wraps(command)
    def wrapper(**given: Any) -> None:
        chosen = {name: given.pop(name) for name in FILTER_OPTIONS}
        command(filters=_filters(**chosen), **given)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    del wrapper.__wrapped__  # typer reads the signature above, not the command's
    return wrapper


def _filters(
    reason: str | None,
    status: int | None,
    user: str | None,
    kind: str | None,
    older_than: str | None,
    newer_than: str | None,
) -> dlq.Filters:
    try:
        return dlq.Filters(
            reason=reason,
            status=status,
            user=user,
            kind=parse_kind(kind) if kind else None,
            older_than=parse_duration(older_than) if older_than else None,
            newer_than=parse_duration(newer_than) if newer_than else None,
        )
    except (ValueError, OpsError) as error:  # a malformed filter is a usage error: nothing was received
        raise UsageProblem(str(error)) from None


@dataclass
class _Stage:
    """The stage a dlq command acts on: its names, an SQS client and its DLQ's URL."""

    ctx: StageContext
    sqs: SQSClient
    dlq_url: str

    @classmethod
    def load(cls, stage: str) -> _Stage:
        ctx = load_stage(stage)
        sqs = client("sqs")
        return cls(ctx, sqs, cls.queue_url(ctx, sqs, ctx.dead_letter_queue))

    @staticmethod
    def queue_url(ctx: StageContext, sqs: SQSClient, name: str) -> str:
        url = queue_url_or_none(sqs, name)
        if url is None:
            raise OpsError(f"queue {name} not found: run `userhub-sync bootstrap --stage {ctx.stage}`")
        return url


@app.command("list")
@handle_errors
@with_filters
def dlq_list(
    stage: options.StageOpt,
    filters: dlq.Filters,
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
    as_json: options.JsonOpt = False,
) -> None:
    """List DLQ messages with their failure (kind, status, code, reason, attempts, first seen, age)."""
    loaded = _Stage.load(stage)
    ctx = loaded.ctx
    listing = dlq.list_messages(
        loaded.sqs, loaded.dlq_url, filters, limit=limit, visibility=visibility, wait=wait_seconds
    )
    if as_json:
        echo_json(
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


def _print_listing(queue: str, listing: dlq.Listing) -> None:
    table = folded_table(
        f"{queue}: {len(listing.messages)} of {listing.scanned} message(s)",
        ("message id", "user", "kind", "status", "code", "reason", "attempts", "first seen", "age"),
    )
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
    console().print(table)


@app.command("replay")
@handle_errors
@with_filters
def dlq_replay(
    stage: options.StageOpt,
    filters: dlq.Filters,
    limit: LimitOpt = None,
    rate: Annotated[float, typer.Option(min=0, help="Messages per second at most (0: no limit).")] = 50.0,
    dry_run: options.DryRunOpt = False,
    include_poison: Annotated[bool, typer.Option(help="Also resend bodies that do not parse (as they are).")] = False,
    native: Annotated[
        bool,
        typer.Option(help="Use SQS's StartMessageMoveTask (no filters, no source rewrite; not supported by moto)."),
    ] = False,
    wait_seconds: WaitOpt = 1,
    as_json: options.JsonOpt = False,
) -> None:
    """Send DLQ messages back to the events queue (source "replay"); delete each only once its send is confirmed."""
    loaded = _Stage.load(stage)
    ctx, sqs, dlq_url = loaded.ctx, loaded.sqs, loaded.dlq_url
    events_url = _Stage.queue_url(ctx, sqs, ctx.events_queue)
    if native:
        if filters.active or limit or include_poison or dry_run:
            raise UsageProblem(
                "--native moves the whole DLQ: it cannot be combined with filters, --limit, "
                "--include-poison or --dry-run"
            )
        handle = dlq.native_move(queue_arn(sqs, dlq_url), queue_arn(sqs, events_url), rate)
        if as_json:
            echo_json({"native": True, "task_handle": handle})
        else:
            console().print(f"started SQS message move task {handle} ({ctx.dead_letter_queue} → {ctx.events_queue})")
        return
    depth = queue_depths(sqs, dlq_url).visible
    replay = functools.partial(
        dlq.replay,
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
    if as_json:
        report = replay()
        echo_json({"queue": ctx.dead_letter_queue, "destination": ctx.events_queue, **report.to_dict()})
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=False,
        ) as progress:
            task = progress.add_task("dry run" if dry_run else "replaying", total=max(depth, 1))
            report = replay(progress=lambda n: progress.advance(task, n))
            progress.update(task, total=max(report.scanned, 1), completed=report.scanned)
        _print_replay(report)
    if report.failed or report.not_deleted or report.unseen:
        raise typer.Exit(ExitCode.ATTENTION)


def _print_replay(report: dlq.ReplayReport) -> None:
    out = console()
    verb = "would replay" if report.dry_run else "replayed"
    out.print(
        f"{verb} {report.replayed}, skipped {report.skipped} "
        f"({report.skipped_poison} poison), failed {report.failed} "
        f"(scanned {report.scanned})"
    )
    if report.duplicates_removed:
        out.print(f"removed {report.duplicates_removed} already-replayed message(s) offered again")
    for failure in report.failures[:20]:
        out.print(f"[red]not sent[/red] {failure.message_id}: {failure.error} (still in the DLQ)")
    if report.not_deleted:
        out.print(
            f"[yellow]warning[/yellow]: {report.not_deleted} message(s) were sent but could not be "
            "deleted from the DLQ; a later replay would send them again"
        )
    if report.unseen:
        out.print("[yellow]warning[/yellow]: ", end="")
        out.print(report.unseen_message(), markup=False)


@app.command("purge")
@handle_errors
@with_filters
def dlq_purge(
    stage: options.StageOpt,
    filters: dlq.Filters,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait_seconds: WaitOpt = 1,
    as_json: options.JsonOpt = False,
) -> None:
    """Delete DLQ messages for good: all of them (PurgeQueue), or with filters only the matching ones."""
    loaded = _Stage.load(stage)
    ctx, sqs, url = loaded.ctx, loaded.sqs, loaded.dlq_url
    depth = queue_depths(sqs, url).visible
    what = "the messages matching the filters" if filters.active else f"all ~{depth} message(s)"
    if not yes and not typer.confirm(f"Delete {what} from {ctx.dead_letter_queue}? This cannot be undone"):
        raise fail("aborted; nothing deleted")
    report = dlq.purge(sqs, url, filters, approximate_depth=depth, wait=wait_seconds)
    if as_json:
        echo_json({"queue": ctx.dead_letter_queue, **report.to_dict()})
    else:
        approx = "~" if report.approximate else ""
        console().print(
            f"deleted {approx}{report.deleted} message(s) from {ctx.dead_letter_queue}"
            + (f" (scanned {report.scanned})" if report.mode == dlq.PurgeMode.FILTERED else "")
        )
    if report.failed:
        raise typer.Exit(ExitCode.ATTENTION)
