"""The third stage of deliver, pure: given how a record's call went and what its queue allows, the one action taken.

Delivered → Delete; Poison, Rejected → DeadLetter at once; Transient, NotStarted → Delay, or DeadLetter
(exhausted) on the last receive the redrive policy allows or when the next attempt would miss the retention.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from chalicelib.dead_letter import DeadLetterInfo, FailureKind
from chalicelib.delivery.calls import DELIVERED, NOT_STARTED, Rejected, Transient
from chalicelib.delivery.plan import DELETE, DeadLetter, Delay, Limits, QueueFacts, plan
from chalicelib.delivery.policy import RetryPolicy
from chalicelib.delivery.records import Poison, Record
from chalicelib.messages import parse_message
from tests.support import message_body

NOW = 1_800_000_000.0
SENT = NOW - 600
LIMITS = Limits(RetryPolicy(base=30, cap=43_200, jitter=0), retention_margin=3600)
QUEUE = QueueFacts(max_receive_count=5, retention_seconds=4 * 86_400)
MESSAGE = parse_message(message_body("alice"))


def record(receive: int = 1, sent_at: float | None = SENT, message_id: str = "m-1") -> Record:
    return Record(message_id, "rh", message_body("alice"), receive, sent_at, "arn")


def decide(outcome, rec: Record | None = None, queue: QueueFacts = QUEUE, message=MESSAGE, limits: Limits = LIMITS):
    return plan(rec or record(), outcome, message, queue, limits, now=NOW, rng=random.Random(0))


def info(kind: FailureKind, reason: str, receive: int = 1, **fields: object) -> DeadLetterInfo:
    return DeadLetterInfo(
        kind=kind,
        reason=reason,
        attempts=receive,
        first_seen=datetime.fromtimestamp(SENT, UTC),
        failed_at=datetime.fromtimestamp(NOW, UTC),
        source_message_id="m-1",
        **fields,  # type: ignore[arg-type]
    )


def test_a_delivered_record_is_deleted() -> None:
    assert decide(DELIVERED) is DELETE


def test_poison_is_dead_lettered_at_once_with_its_reason_and_no_user() -> None:
    action = decide(Poison("body is not JSON: JSONDecodeError"), message=None)
    assert action == DeadLetter(info(FailureKind.POISON, "body is not JSON: JSONDecodeError"))


def test_a_rejection_is_dead_lettered_at_once_with_userhubs_answer() -> None:
    action = decide(Rejected("HTTP 400 INVALID_ARGUMENT: bad", 400, "INVALID_ARGUMENT", "USER_INVALID"))
    expected = info(
        FailureKind.PERMANENT,
        "USER_INVALID",
        status=400,
        code="INVALID_ARGUMENT",
        detail="HTTP 400 INVALID_ARGUMENT: bad",
        username="alice",
    )
    assert action == DeadLetter(expected)


def test_a_rejection_without_userhubs_reason_gives_its_text_as_the_reason() -> None:
    action = decide(Rejected("HTTP 404", 404))
    assert isinstance(action, DeadLetter) and action.info.reason == "HTTP 404" and action.info.code is None


def test_a_record_without_a_message_id_carries_none() -> None:
    action = decide(Poison("empty body"), rec=record(message_id=""), message=None)
    assert isinstance(action, DeadLetter) and action.info.source_message_id is None


@pytest.mark.parametrize(("receive", "seconds"), [(1, 30), (2, 60), (4, 240)])
def test_a_transient_failure_waits_the_schedules_delay_for_that_attempt(receive: int, seconds: int) -> None:
    assert decide(Transient("HTTP 503", 503), rec=record(receive)) == Delay(seconds, "HTTP 503")


def test_a_retry_after_longer_than_the_backoff_is_waited() -> None:
    assert decide(Transient("HTTP 429", 429, retry_after=900)) == Delay(900, "HTTP 429")


def test_a_record_never_started_comes_back_at_once() -> None:
    assert decide(NOT_STARTED, rec=record(3)) == Delay(0, "not started: the invocation ran low on time")


def test_the_last_allowed_receive_is_dead_lettered_as_exhausted_with_the_last_error() -> None:
    action = decide(Transient("HTTP 503 UNAVAILABLE: down", 503, "UNAVAILABLE"), rec=record(5))
    reason = "retries exhausted after 5 attempts: HTTP 503 UNAVAILABLE: down"
    detail = "HTTP 503 UNAVAILABLE: down"
    expected = info(FailureKind.EXHAUSTED, reason, 5, status=503, code="UNAVAILABLE", detail=detail, username="alice")
    assert action == DeadLetter(expected)
    assert isinstance(decide(Transient("x"), rec=record(4)), Delay)  # one receive before: still a retry
    assert isinstance(decide(Transient("x"), rec=record(9)), DeadLetter)  # past it (a lowered policy): too


def test_a_record_never_started_on_its_last_receive_says_so() -> None:
    action = decide(NOT_STARTED, rec=record(5))
    reason = "never attempted on its last allowed receive (5): the invocation ran out of time"
    assert action == DeadLetter(info(FailureKind.EXHAUSTED, reason, 5, username="alice"))


def test_a_next_attempt_that_would_start_inside_the_retention_margin_is_dead_lettered_now() -> None:
    queue = QueueFacts(max_receive_count=13, retention_seconds=7200)
    sent = NOW - 3600 + 30  # retention ends in 3630 s; minus the 3600 s margin: 30 s left
    in_time = decide(Transient("HTTP 503", 503), rec=record(1, sent), queue=queue)
    assert in_time == Delay(30, "HTTP 503")  # starts exactly at the last moment: kept
    late = decide(Transient("HTTP 503", 503), rec=record(2, sent), queue=queue)
    assert isinstance(late, DeadLetter) and late.info.kind is FailureKind.EXHAUSTED
    assert late.info.reason == (
        "its next attempt (2027-01-15T08:01:00Z) would start after the events queue's retention of 2:00:00 ends "
        "(2027-01-15T09:00:30Z, less a 3600 s margin), where SQS would delete it unseen; last error: HTTP 503"
    )
    assert (late.info.status, late.info.detail) == (503, "HTTP 503")


def test_without_a_known_retention_or_sent_time_only_the_receive_count_limits() -> None:
    waits_long = Transient("HTTP 429", 429, retry_after=40_000)
    no_retention = QueueFacts(max_receive_count=13, retention_seconds=None)
    assert decide(waits_long, rec=record(1, NOW - 86_000), queue=no_retention) == Delay(40_000, "HTTP 429")
    short = QueueFacts(max_receive_count=13, retention_seconds=3600)
    assert decide(waits_long, rec=record(1, None), queue=short) == Delay(40_000, "HTTP 429")
