"""`userhub-sync demo`, run as a user runs it (small size): it must account for every sign-in and exit 0."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from userhub_sync.cli import app
from userhub_sync.scenarios import demo
from userhub_sync.scenarios.accounting import Report


def test_demo_accounts_for_every_signin_and_captured_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # the demo prints a table, not its Report: a spy (nothing mocked, the real run_demo runs) keeps the Report
    reports: list[Report] = []
    real = demo.run_demo

    def keeping_the_report(**kwargs: Any) -> Report:
        reports.append(real(**kwargs))
        return reports[-1]

    monkeypatch.setattr(demo, "run_demo", keeping_the_report)
    # a low UserHub rate limit, so that even 60 sign-ins meet 429s
    argv = ["demo", "--signins", "60", "--permanent", "2", "--fault-rate", "0.3", "--rate-limit", "7"]
    result = CliRunner().invoke(app, argv)
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
    rate_limited, _injected = lines["UserHub 429s (rate limit 7.0/s; injected)"].split("; ")
    assert int(rate_limited) > 0
    # five admin changes through the CloudTrail emulator, each accepted by UserHub as CHANGED for its user, and
    # an admin call Cognito refused, which captured nothing
    assert lines["admin changes captured"] == "5 (1 failed call, not captured)"
    assert lines["captured changes delivered as CHANGED"] == "5"
    assert lines["admin call → UserHub CHANGED"].startswith("p50 ")
    # the demo opens its run like chaos and outage, so its summary carries what moto did (scenario_run)
    summary = reports[0].summary()
    moto = summary["notes"]
    assert isinstance(moto["moto_errors_retried"], int) and isinstance(moto["moto_double_receives"], int)
    assert (
        lines["moto's own errors / double receives"]
        == f"{moto['moto_errors_retried']} / {moto['moto_double_receives']}"
    )
    assert summary["seconds_total"] >= summary["seconds_to_drain"] > 0


def test_demo_help_documents_options() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--signins", "--fault-rate", "--permanent", "--seed", "--rate-limit", "--capture-through"):
        assert option in result.output
