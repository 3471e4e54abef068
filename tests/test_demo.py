"""`userhub-sync demo`, run as a user runs it (small size): it must account for every sign-in and exit 0."""

from __future__ import annotations

from typer.testing import CliRunner

from userhub_sync.cli import app


def test_demo_accounts_for_every_signin() -> None:
    result = CliRunner().invoke(app, ["demo", "--signins", "60", "--permanent", "2", "--fault-rate", "0.3"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.output.splitlines()
        if line.count("│") == 3
    }
    assert lines["signed in"] == "60"
    assert lines["enqueued by post_auth"] == "60"
    assert lines["lost"] == "0"
    dead, expected = lines["dead-lettered (permanent 4xx + poison)"].split(" (expected ")
    assert dead == expected.rstrip(")")
    assert int(dead) >= 3  # two poison bodies and at least one sign-in of a rejected user
    assert int(lines["retried (transient failures)"]) > 0


def test_demo_help_documents_options() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--signins", "--fault-rate", "--permanent", "--seed"):
        assert option in result.output
