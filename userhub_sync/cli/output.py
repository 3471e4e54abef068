"""How every command speaks: rich tables on stdout, `error: ...` as one line on stderr, JSON on request.

Invariant: whatever goes wrong in a command that an operator can act on (an OpsError, a missing setting, AWS
refusing a call, no credentials) ends as exactly one `error:` line on stderr and a documented exit code, never a
traceback; and nothing wraps when the output is a pipe.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from chalicelib.timefmt import utc_iso
from userhub_sync.ops.aws import error_code
from userhub_sync.ops.errors import ExitCode, OpsError, UsageProblem

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

PIPE_WIDTH = 200  # table width when the output is not a terminal and COLUMNS is not set
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


def console(stderr: bool = False) -> Console:
    """A rich console that never breaks a line it cannot see the end of.

    Off a terminal (cron, CI, a pipe) rich cannot detect a width and wraps at 80 columns, which splits error lines
    and table cells for whatever reads them. There, plain lines are never wrapped and tables get $COLUMNS or
    PIPE_WIDTH columns.
    """
    from rich.console import Console

    made = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if made.is_terminal:
        return made
    try:
        width = int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    except ValueError:
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=max(width, 40))


def folded_table(title: str, columns: Iterable[str]) -> Table:
    """A table whose long cells (ARNs, ids, reasons) wrap within their column instead of being cut with "…"."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def print_error(message: str) -> None:
    """`error: <message>` as exactly one line on stderr (no markup is read from the message, nothing wraps)."""
    _print_line("error: ", "red", message)


def print_warning(message: str) -> None:
    """`warning: <message>` as exactly one line on stderr."""
    _print_line("warning: ", "yellow", message)


def _print_line(label: str, style: str, message: str) -> None:
    from rich.text import Text

    console(stderr=True).print(Text(label, style=style) + Text(" ".join(str(message).splitlines())), soft_wrap=True)


def fail(message: str, code: int = ExitCode.ERROR) -> typer.Exit:
    """Print the error line; the caller raises what this returns (so the type checker sees the exit)."""
    print_error(message)
    return typer.Exit(code)


def see_help(message: str) -> str:
    """A usage problem's message, pointing at the running command's `--help`."""
    from typer._click.globals import get_current_context  # typer vendors click

    context = get_current_context(silent=True)
    return f"{message} (see {context.command_path} --help)" if context is not None else message


def handle_errors(func: F) -> F:
    """One clear line and a non-zero exit for the errors an operator can act on; no tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        from chalicelib.settings import ConfigError

        try:
            return func(*args, **kwargs)
        except UsageProblem as error:
            raise fail(see_help(str(error)), error.exit_code) from None
        except OpsError as error:
            raise fail(str(error), error.exit_code) from None
        except ConfigError as error:  # names the variable, never its value
            raise fail(str(error)) from None
        except NoCredentialsError:
            raise fail("no AWS credentials found (profile, environment or instance role)") from None
        except NoRegionError:
            raise fail("no AWS region configured: set AWS_DEFAULT_REGION") from None
        except ClientError as error:
            op = getattr(error, "operation_name", "AWS call")
            message = (error.response.get("Error") or {}).get("Message", "")
            raise fail(f"{op} failed: {error_code(error)}: {message}".rstrip(": ")) from None
        except BotoCoreError as error:
            raise fail(f"AWS: {error}") from None

    return wrapper  # type: ignore[return-value]


def to_jsonable(value: Any) -> Any:
    """json.dumps default: datetimes as ISO strings, paths as strings."""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=to_jsonable, indent=2))


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'magenta')}]{status}[/]"
