"""The command line as a monitor or a cron job meets it: usage errors, exit codes, one-line errors in pipes.

A usage error exits 64 with one line on stderr, distinct from 2 ("needs attention"); every exit code is documented
once (docs/OPERATIONS.md) and in `--help`; every option an error message names exists; and off a terminal nothing
is wrapped at 80 columns (checked with the real console script, stdout and stderr as pipes).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, bootstrap, cli, create_pool, make_project
from userhub_sync.ops.errors import ExitCode

SCRIPT = Path(sys.executable).parent / "userhub-sync"
OPS_MODULES = sorted(
    p.relative_to(REPO).as_posix() for folder in ("cli", "ops") for p in (REPO / "userhub_sync" / folder).glob("*.py")
)


@pytest.mark.parametrize(
    ("args", "expected", "command"),
    [
        (["bootstrap", "--stgae", "dev"], "error: no such option: --stgae", "bootstrap"),
        (["staus", "--stage", "dev"], "error: no such command 'staus'", ""),
        (["dlq", "list"], "error: missing option '--stage'", "dlq list"),
        (["dlq", "list", "--stage", "dev", "--limit", "0"], "error: invalid value for '--limit'", "dlq list"),
        (
            ["status", "--stage", "dev", "--sample-seconds", "soon"],
            "error: invalid value for '--sample-seconds'",
            "status",
        ),
        # ListUsers allows 30 a second per account; a rate Cognito cannot give was exit 1, after loading the stage
        (["reconcile", "--stage", "dev", "--rate", "40"], "error: invalid value for '--rate'", "reconcile"),
        (["reconcile", "--stage", "dev", "--rate", "0"], "error: invalid value for '--rate'", "reconcile"),
        (["dlq", "replay", "--stage", "dev", "--rate", "-1"], "error: invalid value for '--rate'", "dlq replay"),
        (
            ["recover-signins", "--stage", "dev", "--since", "soon"],
            "error: invalid value for '--since'",
            "recover-signins",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_64(project, args, expected, command):
    result = cli(*args)
    assert result.exit_code == ExitCode.USAGE == 64, result.output
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr  # no box, one line
    assert result.stderr.rstrip().endswith(f"(see {' '.join(['userhub-sync', command]).strip()} --help)")
    assert result.stdout == ""


def test_a_monitor_can_tell_a_typo_from_drift(project):
    bootstrap(create_pool())
    assert cli("status", "--stage", "dev", "--check").exit_code == 2  # not wired: needs attention
    assert cli("status", "--stage", "dev", "--chek").exit_code == 64  # a typo


@pytest.mark.parametrize("command", [["demo"], ["chaos"], ["outage"]])
def test_without_moto_the_local_commands_say_what_to_install(command, monkeypatch):
    """The operators' install leaves moto's server out (the `local` extra). moto is installed here, so its absence
    is simulated: a None entry in sys.modules makes Python treat the package as not importable."""
    monkeypatch.setitem(sys.modules, "moto", None)
    result = cli(*command)
    assert result.exit_code == 1, result.output
    assert "pip install '.[local]' in the userhub-sync checkout" in result.stderr and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1


def test_every_exit_code_is_documented_once_and_in_help():
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    table = text.split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = [int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)]
    assert documented == sorted(code.value for code in ExitCode)
    assert text.count("| exit code | meaning |") == 1
    for args in ([], ["bootstrap"], ["status"], ["dlq"]):
        shown = cli(*args, "--help")
        assert shown.exit_code == 0
        for code in ExitCode:
            assert re.search(rf"^\W*{code.value}\s+\S", shown.stdout, flags=re.MULTILINE), (args, code)


def _cli_options() -> set[str]:
    from typer.main import get_command

    from userhub_sync.cli import app

    found: set[str] = set()

    def walk(command) -> None:
        for param in command.params:
            found.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(get_command(app))
    return found


def _option_mentions() -> set[tuple[str, str]]:
    """`--option` words in the operator modules' messages (string literals and f-strings, not docstrings), except
    in other tools' command lines (`aws ...`, `chalice ...`)."""
    mentions = set()
    for module in OPS_MODULES:
        tree = ast.parse((REPO / module).read_text())
        skip: set[int] = set()
        texts: list[str] = []
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                skip.add(id(body[0].value))  # a docstring
            if isinstance(node, ast.JoinedStr):
                skip.update(id(v) for v in node.values)
                texts.append("".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values))
        texts += [
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
        ]
        for text in texts:
            if re.search(r"\b(aws|chalice) [a-z]", text):
                continue
            mentions.update((module, option) for option in re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
    return mentions


def test_messages_name_only_options_that_exist():
    options = _cli_options() | {"--help"}
    missing = {(module, option) for module, option in _option_mentions() if option not in options}
    assert not missing, missing
    assert "--project-dir" not in options


def test_outside_a_project_the_error_says_what_to_do(tmp_path, monkeypatch, moto_server):
    monkeypatch.chdir(tmp_path)
    result = cli("status", "--stage", "dev")
    assert result.exit_code == 1
    assert "config.json not found: run this from the project directory" in result.stderr
    assert "--project-dir" not in result.output


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, stdout and stderr as pipes, no COLUMNS: what cron and CI see."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_errors_and_tables_are_not_wrapped_in_a_pipe(tmp_path, monkeypatch, moto_server):
    deep = tmp_path / ("a-directory-with-a-rather-long-name-" * 3) / "where-cron-happens-to-run"
    deep.mkdir(parents=True)
    missing = _run("status", "--stage", "dev", cwd=deep)
    assert missing.returncode == 1
    assert len(missing.stderr) > 120  # far longer than the 80 columns rich assumes without a terminal
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert missing.stderr.startswith(f"error: {deep / '.chalice' / 'config.json'} not found")

    usage = _run("dlq", "replay", "--stage", "dev", "--older-than", "a-fortnight-or-thereabouts-give-or-take", cwd=deep)
    assert usage.returncode == 64
    assert usage.stderr.count("\n") == 1 and "(see userhub-sync dlq replay --help)" in usage.stderr

    # a table cell longer than 80 columns stays on one line (moto over HTTP, as in the other tests)
    project = make_project(tmp_path / "p", monkeypatch, moto_server)
    bootstrap(create_pool())
    table = _run("status", "--stage", "dev", cwd=project)
    assert table.returncode == 0, table.stderr
    hint = "function userhub-sync-dev-post_auth not found: run `chalice deploy --stage dev` first │"
    assert any(hint in line for line in table.stdout.splitlines()), table.stdout
    assert "--post-auth-arn" not in table.stdout  # a wire option: status has none to offer
