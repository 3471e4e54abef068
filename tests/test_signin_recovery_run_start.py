"""The nightly reconcile's recovery hook: it reads the log groups SIGNIN_RECOVERY_LOG_GROUPS names (before any it
could derive from the function's name), and in Lambda it stops starting new time slices once half the invocation is
spent, leaving the rest to the scan (the watermark keeps what was not done for the next run).

SQS, S3 and CloudWatch Logs are moto over HTTP; the recovery records are put into moto's log groups as Lambda would
ship them (see tests/test_signin_recovery.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chalicelib import signin_recovery as sr
from chalicelib.settings import get_settings, reset_settings
from tests.test_signin_recovery import MINUTE_MS, now_ms, put_lines, record_line
from userhub_sync.local.moto import patched_environ

BUCKET = "recovery-hook-test"
CONFIGURED = "/custom/post-auth-logs"


@pytest.fixture
def hook_env(aws) -> Iterator[Any]:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    with patched_environ({"SNAPSHOT_BUCKET": BUCKET, "SIGNIN_RECOVERY_LOG_GROUPS": CONFIGURED}):
        reset_settings()
        yield aws
    reset_settings()


def clients(aws: Any) -> sr.RecoveryClients:
    return sr.RecoveryClients(
        logs=boto3.client("logs"),
        sqs=aws.sqs,
        s3=boto3.client("s3"),
        cognito=lambda: boto3.client("cognito-idp"),
        queue_url=lambda: aws.queues.events_url,
    )


def queued(aws: Any) -> list[str]:
    found = []
    while got := aws.sqs.receive_message(QueueUrl=aws.queues.events_url, MaxNumberOfMessages=10).get("Messages"):
        found += [json.loads(m["Body"])["username"] for m in got]
        for m in got:
            aws.sqs.delete_message(QueueUrl=aws.queues.events_url, ReceiptHandle=m["ReceiptHandle"])
    return sorted(found)


class Context:
    """A Lambda context whose remaining time is read from a script (the hook's clock in Lambda)."""

    def __init__(self, function_name: str | None, remaining: list[int]) -> None:
        self.function_name = function_name
        self._remaining = remaining

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining.pop(0) if len(self._remaining) > 1 else self._remaining[0]


def test_the_configured_log_groups_are_read_rather_than_derived_ones(hook_env) -> None:
    derived = "/aws/lambda/userhub-sync-dev-post_auth"
    put_lines(CONFIGURED, [record_line("configured-user")], at_ms=now_ms() - 30 * MINUTE_MS)
    put_lines(derived, [record_line("derived-user")], at_ms=now_ms() - 30 * MINUTE_MS)
    context = Context("userhub-sync-dev-reconcile", [900_000])
    assert sr.recover_at_run_start(get_settings(), context, lambda: clients(hook_env)) == 1
    assert queued(hook_env) == ["configured-user"]


def test_in_lambda_recovery_stops_once_half_the_invocation_is_spent(hook_env) -> None:
    put_lines(CONFIGURED, [record_line("old-user")], at_ms=now_ms() - 30 * 60 * MINUTE_MS)
    context = Context("userhub-sync-dev-reconcile", [900_000, 449_999])  # below half at the first slice
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": "userhub-sync-dev-reconcile"}):
        assert sr.recover_at_run_start(get_settings(), context, lambda: clients(hook_env)) == 0
    assert queued(hook_env) == []


def test_in_lambda_with_time_to_spare_every_slice_is_recovered(hook_env) -> None:
    put_lines(CONFIGURED, [record_line("old-user")], at_ms=now_ms() - 30 * 60 * MINUTE_MS)
    put_lines(CONFIGURED, [record_line("new-user")], at_ms=now_ms() - 30 * MINUTE_MS)
    context = Context("userhub-sync-dev-reconcile", [900_000, 450_000])  # exactly half left: not below it
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": "userhub-sync-dev-reconcile"}):
        assert sr.recover_at_run_start(get_settings(), context, lambda: clients(hook_env)) == 2
    assert queued(hook_env) == ["new-user", "old-user"]


def test_outside_lambda_the_context_s_clock_is_ignored(hook_env) -> None:
    put_lines(CONFIGURED, [record_line("old-user")], at_ms=now_ms() - 30 * 60 * MINUTE_MS)
    context = Context("userhub-sync-dev-reconcile", [900_000, 1])  # a local stand-in's clock means nothing
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": None}):
        assert sr.recover_at_run_start(get_settings(), context, lambda: clients(hook_env)) == 1
    assert queued(hook_env) == ["old-user"]


def test_a_run_given_its_now_ends_its_window_there_and_leaves_the_ingestion_lag_unread(hook_env) -> None:
    end = now_ms() - 3 * 60 * MINUTE_MS
    put_lines(CONFIGURED, [record_line("before-end")], at_ms=end - 30 * MINUTE_MS)
    put_lines(CONFIGURED, [record_line("after-end")], at_ms=end + 30 * MINUTE_MS)
    report = sr.recover_signins(clients(hook_env), bucket=BUCKET, log_groups=[CONFIGURED], now_ms=end)
    assert report.end_ms == end and report.start_ms == end - sr.FIRST_RUN_LOOKBACK_MS
    assert queued(hook_env) == ["before-end"]
    assert report.watermark_after_ms == end - sr.INGESTION_LAG_MS
