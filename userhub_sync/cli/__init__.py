"""`userhub-sync`: the operators' command line. One module per command group; this file only wires them.

Invariant: a usage error (unknown command or option, a missing or malformed value) is one line on stderr and exit
64 (EX_USAGE), never 2, which means "needs attention"; a monitor can tell a typo from drift. Exit codes:
`ops.errors.ExitCode`, shown by `--help`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click here
from typer.core import TyperGroup

from userhub_sync.cli import dlq, local
from userhub_sync.cli.bootstrap import bootstrap_command
from userhub_sync.cli.output import handle_errors, print_error
from userhub_sync.cli.reconcile import reconcile_command, recover_signins_command
from userhub_sync.cli.status import status_command, user_hash_command
from userhub_sync.cli.wire import wire_command
from userhub_sync.ops.errors import EXIT_CODES_HELP, ExitCode


def usage_line(error: UsageError) -> str:
    """`no such option: --stgae (Possible options: ...) (see userhub-sync bootstrap --help)`: one line."""
    message = " ".join(error.format_message().splitlines()).strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    if error.ctx is not None:
        message += f" (see {error.ctx.command_path} --help)"
    return message


class OperatorGroup(TyperGroup):
    """Typer's group, with click's errors reported as one line and the documented exit codes."""

    def main(  # type: ignore[override]  # click's overloads; this keeps its runtime signature
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError:  # the help is already on stdout
            sys.exit(ExitCode.USAGE)
        except UsageError as error:
            print_error(usage_line(error))
            sys.exit(ExitCode.USAGE)
        except ClickException as error:
            print_error(error.format_message())
            sys.exit(error.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(ExitCode.ERROR)
        sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else ExitCode.OK)


app = typer.Typer(
    name="userhub-sync",
    cls=OperatorGroup,
    help="Keep UserHub in step with a Cognito user pool: bootstrap, wire, watch, replay, run locally.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for name, command in (
    ("bootstrap", bootstrap_command),
    ("wire", wire_command),
    ("status", status_command),
    ("user-hash", user_hash_command),
    ("reconcile", reconcile_command),
    ("recover-signins", recover_signins_command),
):
    app.command(name, epilog=EXIT_CODES_HELP)(handle_errors(command))
app.add_typer(dlq.app, name="dlq")
app.command("demo")(handle_errors(local.demo))
app.command("chaos")(handle_errors(local.chaos))
app.command("outage")(handle_errors(local.outage))
app.command("worker")(handle_errors(local.worker))
app.command("fake-userhub")(local.fake_userhub)


def main() -> None:
    app()
