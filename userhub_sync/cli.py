"""`userhub-sync`: the operators' command line. Each command lives in its own module; this file only wires them."""

from __future__ import annotations

import typer

from userhub_sync import ops_cli, reconcile_cli, recover_cli, run_cli

app = typer.Typer(
    name="userhub-sync",
    help="Keep UserHub in step with a Cognito user pool: bootstrap, wire, watch, replay, run locally.",
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
