"""The operator commands' failures and exit codes: one table, shown by `--help` and docs/OPERATIONS.md.

Invariant: 2 always means "needs attention" and 64 always means "the command line is wrong, nothing was done", so a
monitor can tell drift from a typo by the code alone.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code of the operator commands."""

    OK = 0
    ERROR = 1
    ATTENTION = 2
    POOL_CHANGED = 3
    TRIGGER_CONFLICT = 4
    USAGE = 64  # EX_USAGE in sysexits.h


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "done, or already as it should be",
    ExitCode.ERROR: "error: missing stage or resource, AWS refused a call, no credentials or region",
    ExitCode.ATTENTION: "needs attention: drift, not healthy (--check), messages left behind or not seen",
    ExitCode.POOL_CHANGED: "wire: UpdateUserPool changed pool settings other than LambdaConfig",
    ExitCode.TRIGGER_CONFLICT: "wire: the pool has a different trigger; nothing was changed (--force replaces it)",
    ExitCode.USAGE: "usage: unknown command or option, missing or malformed value; nothing was done",
}
EXIT_CODES_HELP = "\n\n".join(["Exit codes:", *(f"{code:<2} {text}" for code, text in EXIT_CODE_MEANINGS.items())])


class OpsError(Exception):
    """A failure the operator can act on; the CLI prints the message (no traceback) and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageProblem(OpsError):
    """Options that are well-formed one by one but cannot go together: a usage error (exit 64), nothing done."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)
