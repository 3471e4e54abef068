"""`userhub-sync wire`: the command line of ops/wire.py (options, the tables, exit codes 3 and 4)."""

from __future__ import annotations

from typing import Annotated

import typer

from userhub_sync.cli import options
from userhub_sync.cli.output import console, echo_json, fail, folded_table, styled
from userhub_sync.ops.stage import load_stage
from userhub_sync.ops.wire import PoolChangedError, WireResult, wire


def wire_command(
    stage: options.StageOpt,
    user_pool_id: options.PoolIdOpt = None,
    post_confirmation: Annotated[
        bool,
        typer.Option(
            "--post-confirmation", help="Also set PostConfirmation to the post_confirmation function (SIGNUP events)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace a different trigger already set on the pool.")] = False,
    dry_run: options.DryRunOpt = False,
    skip_esm: Annotated[
        bool,
        typer.Option(help="Leave the event source mapping alone (e.g. the CloudFormation template already sets it)."),
    ] = False,
    keep_platform_logs: Annotated[
        bool,
        typer.Option(
            help="Leave the trigger functions' LoggingConfig alone: Lambda keeps writing START/END/REPORT lines "
            "for each sign-in (about $4.50 a month per million sign-ins a day)."
        ),
    ] = False,
    post_auth_arn: Annotated[
        str | None, typer.Option(help="post_auth's ARN, if not deployed by chalice deploy.")
    ] = None,
    post_confirmation_arn: Annotated[str | None, typer.Option(help="post_confirmation's ARN (same reason).")] = None,
    deliver_arn: Annotated[str | None, typer.Option(help="deliver's ARN (same reason).")] = None,
    as_json: options.JsonOpt = False,
) -> None:
    """After `chalice deploy`: ReportBatchItemFailures, Cognito's invoke permission, the PostAuthentication trigger,
    and no START/END/REPORT lines for the trigger functions (their LoggingConfig).

    The pool is updated from its own DescribeUserPool output (only what UpdateUserPool accepts), so nothing else
    is reset; it is described again afterwards and any other change fails the command (exit 3). Idempotent.
    """
    ctx = load_stage(stage)
    arns = {"post_auth": post_auth_arn, "post_confirmation": post_confirmation_arn, "deliver": deliver_arn}
    try:
        result = wire(
            ctx,
            user_pool_id=user_pool_id,
            post_confirmation=post_confirmation,
            force=force,
            dry_run=dry_run,
            skip_esm=skip_esm,
            keep_platform_logs=keep_platform_logs,
            arns=arns,
        )
    except PoolChangedError as error:
        _print(error.result, as_json, stage)
        if not as_json:
            table = folded_table(
                "user pool settings changed by UpdateUserPool (expected: LambdaConfig only)",
                ("setting", "before", "after"),
            )
            for change in error.result.unexpected:
                table.add_row(change.path, repr(change.before), repr(change.after))
            console().print(table)
        raise fail(str(error), error.exit_code) from None
    _print(result, as_json, stage)


def _print(result: WireResult, as_json: bool, stage: str) -> None:
    if as_json:
        echo_json(result.to_dict(stage))
        return
    table = folded_table(f"wire {stage}", ("what", "status", "detail"))
    for step in result.steps:
        table.add_row(step.what, styled(step.status), step.detail)
    console().print(table)
