"""Options more than one command takes, and the checks that refuse a malformed value before any AWS call."""

from __future__ import annotations

from typing import Annotated

import typer

from userhub_sync.ops.durations import parse_duration
from userhub_sync.ops.stage import CONNECTION_RE, POOL_ID_RE

StageOpt = Annotated[str, typer.Option("--stage", "-s", help="Stage in .chalice/config.json (dev, prod, ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DryRunOpt = Annotated[bool, typer.Option(help="Show what would be done; change nothing.")]


def pool_id(value: str | None) -> str | None:
    """Refused by its format before anything is read or changed (AWS's own pattern for a pool id)."""
    if value is not None and not POOL_ID_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not a user pool id (like us-east-1_AbC123)")
    return value


PoolIdOpt = Annotated[
    str | None,
    typer.Option(
        callback=pool_id, help="Cognito user pool id, like us-east-1_AbC123 (default: the stage's USER_POOL_ID)."
    ),
]


def connection_id(value: str | None) -> str | None:
    if value is not None and not CONNECTION_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not a connection id (like conn_...)")
    return value


def duration(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    return value
