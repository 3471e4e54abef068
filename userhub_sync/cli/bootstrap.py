"""`userhub-sync bootstrap`: the command line of ops/bootstrap.py (options, the table, the exit code)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from userhub_sync.cli import options
from userhub_sync.cli.output import console, echo_json, folded_table, styled
from userhub_sync.ops.durations import format_span, parse_duration
from userhub_sync.ops.errors import ExitCode
from userhub_sync.ops.stage import find_project_dir, load_stage, read_config, write_config


def _setting(
    help: str,
    variable: str,
    fallback: str | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
    callback: Callable[[str | None], str | None] | None = None,
) -> Any:
    """An option that overrides one of the stage's settings: its help names the setting and what applies without
    either, in the same words for every such option."""
    default = f"the stage's {variable}, else {fallback}" if fallback else f"the stage's {variable}"
    return typer.Option(min=min, max=max, callback=callback, help=f"{help} Default: {default}.")


def bootstrap_command(
    stage: options.StageOpt,
    user_pool_id: options.PoolIdOpt = None,
    connection_id: Annotated[
        str | None,
        typer.Option(
            callback=options.connection_id,
            help="UserHub connection id (conn_...); written as USERHUB_CONNECTION_ID.",
        ),
    ] = None,
    max_receive_count: Annotated[
        int | None,
        _setting("Receives before SQS dead-letters a message.", "MAX_RECEIVE_COUNT", "13 ≈ 29 h", min=1, max=1000),
    ] = None,
    allow_short_retry: Annotated[bool, typer.Option(help="Accept a retry horizon under 24 h.")] = False,
    events_retention: Annotated[
        str | None,
        _setting(
            "How long the events queue keeps a message (4d, 6d, ...; at most 14d); the whole retry schedule plus "
            "RETENTION_MARGIN_SECONDS must fit.",
            "EVENTS_RETENTION_SECONDS",
            "4d",
            callback=options.duration,
        ),
    ] = None,
    kms_key: Annotated[
        str | None,
        _setting(
            "Customer-managed KMS key (id, alias or ARN) for the queues, bucket and parameter, written as KMS_KEY_ARN.",
            "KMS_KEY_ARN",
            "SQS-managed SSE, SSE-S3 and alias/aws/ssm",
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None,
        _setting(
            "The fleet bound: at most this many deliver containers (the SQS mapping's MaximumConcurrency), written "
            "as DELIVER_MAX_CONCURRENCY.",
            "DELIVER_MAX_CONCURRENCY",
            "5",
            min=2,
            max=1000,
        ),
    ] = None,
    alarm_oldest_age: Annotated[
        str | None,
        _setting(
            "Alarm when the events queue's oldest message is older than this (30m, 2h, ...).",
            "ALARM_OLDEST_AGE_SECONDS",
            "1h",
            callback=options.duration,
        ),
    ] = None,
    alarm_429_percent: Annotated[
        float | None,
        _setting(
            "Alarm when over this share (%) of UserHub calls is answered 429 for 15 minutes.",
            "ALARM_429_PERCENT",
            "10",
            min=0.1,
            max=100,
        ),
    ] = None,
    alarm_reconcile_hours: Annotated[
        int | None,
        _setting(
            "Alarm when no reconcile run completed in this many hours.", "ALARM_RECONCILE_HOURS", "26", min=2, max=168
        ),
    ] = None,
    alarm_action: Annotated[
        list[str] | None, _setting("An SNS topic ARN the alarms notify (repeatable).", "ALARM_ACTIONS")
    ] = None,
    create_trail: Annotated[
        bool,
        typer.Option(
            help="If no CloudTrail trail feeds capture in this Region, create <app>-<stage>-capture (write management "
            "events, logs in a new bucket that expires them after 30 days). See docs/OPERATIONS.md for the cost."
        ),
    ] = False,
    fix: Annotated[bool, typer.Option(help="Correct drifted settings (default: only report them).")] = False,
    check: Annotated[
        bool, typer.Option(help="Read-only: create, change and write nothing; exit 2 if not ready.")
    ] = False,
    skip_key: Annotated[
        bool, typer.Option(help="Do not create or change the Admin key parameter (only check that it exists).")
    ] = False,
    create_stage: Annotated[bool, typer.Option(help="Add the stage to config.json if it is not there.")] = False,
    from_stage: Annotated[str, typer.Option(help="With --create-stage: copy settings from this stage.")] = "dev",
    as_json: options.JsonOpt = False,
) -> None:
    """Create or check the stage's queues, DLQ, bucket, Admin key parameter, alarms and dashboard; write config and
    policies.

    The Admin key is read from USERHUB_ADMIN_KEY or a hidden prompt, never from an argument (shell history).
    Idempotent: a second run reports "ok" and changes nothing. Run it before `chalice deploy --stage S`.
    """
    from userhub_sync.ops.bootstrap import BootstrapOptions, bootstrap, new_stage_block

    admin_key = os.environ.get("USERHUB_ADMIN_KEY") or None  # the shell's, read before the stage's are applied
    project = find_project_dir()
    if create_stage and not check:
        config = read_config(project)
        if stage not in (config.get("stages") or {}):
            config.setdefault("stages", {})[stage] = new_stage_block(config, stage, from_stage)
            write_config(config, project)
            if not as_json:
                console().print(f"added stage [bold]{stage}[/bold] to .chalice/config.json (from {from_stage})")
    ctx = load_stage(stage, project)

    def ask() -> str:
        return typer.prompt(
            f"UserHub Admin API key for stage {stage} (input hidden)", hide_input=True, default="", show_default=False
        )

    opts = BootstrapOptions(
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
        max_concurrency=max_concurrency,
        alarm_oldest_age=int(parse_duration(alarm_oldest_age)) if alarm_oldest_age else None,
        alarm_429_percent=alarm_429_percent,
        alarm_reconcile_hours=alarm_reconcile_hours,
        alarm_actions=alarm_action or None,
        create_trail=create_trail,
    )
    result = bootstrap(ctx, opts)
    if as_json:
        echo_json(result.to_dict())
    else:
        out = console()
        table = folded_table(
            f"bootstrap {stage} ({result.account}, {result.region})", ("resource", "name", "status", "detail")
        )
        for step in result.steps:
            table.add_row(step.resource, step.name, styled(step.status), step.detail)
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
