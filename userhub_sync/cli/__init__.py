"""`userhub-sync`: the operators' command line. Each command lives in its own module; this file only wires them.

Invariant: a usage error (unknown command or option, a missing or malformed value) is one line on stderr and exit
64 (EX_USAGE), never 2, which means "needs attention"; a monitor can tell a typo from drift. Exit codes:
`opsutil.ExitCode`, shown by `--help`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click here
from typer.core import TyperGroup

from userhub_sync.cli import local as run_cli
from userhub_sync.cli import ops as ops_cli
from userhub_sync.cli import reconcile as reconcile_cli
from userhub_sync.cli import recover as recover_cli
from userhub_sync.ops.util import EXIT_CODES_HELP, ExitCode, print_error


def usage_line(error: UsageError) -> str:
    """`no such option: --stgae (Possible options: ...) (see userhub-sync bootstrap --help)`: one line."""
    message = " ".join(error.format_message().splitlines()).strip().rstrip(".")
    message = message[:1].lower() + message[1:]
    if error.ctx is not None:
        message += f" (see {error.ctx.command_path} --help)"
    return message


class OperatorGroup(TyperGroup):
    """Typer's group, with click's errors reported as one line and the documented exit codes."""

    def main(
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
run_cli.register(app)
ops_cli.register(app)
reconcile_cli.register(app)
recover_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
