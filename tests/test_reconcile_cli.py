"""`userhub-sync reconcile`: the handler's code run by hand, with a progress line, a summary table and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from chalicelib.reconcile import read_last_summary
from chalicelib.settings import reset_settings
from tests.test_reconcile import BUCKET, Harness, build_harness
from userhub_sync.cli import app

runner = CliRunner()


@pytest.fixture
def harness(aws) -> Iterator[Harness]:
    yield from build_harness()


def invoke(*args: str, **env: str | None):
    reset_settings()
    try:
        return runner.invoke(app, ["reconcile", *args], env=env)
    finally:
        reset_settings()


def test_dry_run_lists_by_category_then_a_real_run_enqueues(harness: Harness) -> None:
    names = harness.pool.seed(130)
    dry = invoke("--dry-run", "--show", "2")
    assert dry.exit_code == 0, dry.output
    assert "would enqueue CHANGED for 130 new user(s)" in dry.output and "… and 128 more" in dry.output
    assert harness.snapshot_etag() is None and read_last_summary(harness.s3, BUCKET) is None

    real = invoke("--json", "--rate", "25")
    assert real.exit_code == 0, real.output
    summary = json.loads(real.stdout)
    assert (summary["status"], summary["enqueued"], summary["rate_limit"]) == ("complete", 130, 25.0)
    assert read_last_summary(harness.s3, BUCKET).to_dict() == summary  # type: ignore[union-attr]
    assert len(harness.snapshot()) == len(names)

    harness.pool.change(names[:3])
    again = invoke("--dry-run", "--json")
    assert again.exit_code == 0
    planned = json.loads(again.stdout)["planned"]
    assert planned == {"changed": names[:3]}


def test_missing_variable_and_bad_rate_are_clear_errors(harness: Harness) -> None:
    missing = invoke(USER_POOL_ID=None)
    assert missing.exit_code == 1 and "USER_POOL_ID: required here but not set" in missing.output
    too_fast = invoke("--rate", "31")  # the option's own bounds: a usage error, before anything is read
    assert too_fast.exit_code == 64 and "--rate" in too_fast.output
    configured_too_fast = invoke(RECONCILE_RATE_LIMIT="31")  # the stage's variable: the settings' check
    assert configured_too_fast.exit_code == 1 and "RECONCILE_RATE_LIMIT" in configured_too_fast.output


def test_unknown_stage_is_a_clear_error(harness: Harness) -> None:
    result = invoke("--stage", "nope")
    assert result.exit_code == 1 and "stage 'nope' is not in .chalice/config.json" in result.output
