"""The retry schedule: attempt n waits base · 2^(n−1) · (1 + U(0, jitter)) whole seconds, rounded up, at least
UserHub's Retry-After, at most `cap` and SQS's 12 h. A pure function of its inputs and the random draw."""

from __future__ import annotations

import random

import pytest

from chalicelib.delivery.policy import RetryPolicy
from chalicelib.settings import get_settings, reset_settings
from chalicelib.sqs_limits import MAX_VISIBILITY_SECONDS
from tests.support import stage_environ
from userhub_sync.local.moto import patched_environ


class Draw(random.Random):
    """A random source whose `uniform(a, b)` lands at a fixed fraction of the interval (and records the interval)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.intervals: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.intervals.append((a, b))
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(("attempt", "expected"), [(1, 30), (2, 60), (3, 120), (6, 960), (11, 30_720)])
def test_without_jitter_each_attempt_doubles_the_wait(attempt: int, expected: int) -> None:
    assert RetryPolicy(base=30, jitter=0).delay(attempt) == expected


def test_jitter_adds_up_to_its_fraction_of_the_wait() -> None:
    policy = RetryPolicy(base=40, jitter=0.25)
    lowest, highest = Draw(0.0), Draw(1.0)
    assert (policy.delay(2, rng=lowest), policy.delay(2, rng=highest)) == (80, 100)
    assert lowest.intervals == [(0, 0.25)]


def test_a_fraction_of_a_second_rounds_up_to_the_next_whole_second() -> None:
    policy = RetryPolicy(base=10, jitter=0.25)
    assert policy.delay(1, rng=Draw(0.5)) == 12  # 11.25 s
    assert policy.delay(1, rng=Draw(0.04)) == 11  # 10.1 s
    assert RetryPolicy(base=1, jitter=0).delay(1) == 1


def test_an_attempt_below_one_waits_as_the_first() -> None:
    policy = RetryPolicy(base=30, jitter=0)
    assert policy.delay(0) == policy.delay(-5) == policy.delay(1) == 30


def test_retry_after_is_a_floor_never_a_cut() -> None:
    policy = RetryPolicy(base=30, jitter=0)
    assert policy.delay(1, retry_after=600) == 600
    assert policy.delay(1, retry_after=600.2) == 601
    assert policy.delay(3, retry_after=5) == 120  # a shorter Retry-After does not shorten the backoff
    assert policy.delay(1, retry_after=0) == 30


def test_the_cap_bounds_every_wait_and_so_does_sqs() -> None:
    assert RetryPolicy(base=30, cap=900, jitter=0).delay(10) == 900
    assert RetryPolicy(base=30, cap=900, jitter=0).delay(1, retry_after=5000) == 900
    assert RetryPolicy(base=30, cap=10**9, jitter=0).delay(20) == MAX_VISIBILITY_SECONDS
    assert RetryPolicy(base=30, jitter=0.25).delay(10_000, rng=Draw(1.0)) == MAX_VISIBILITY_SECONDS


def test_a_base_of_zero_retries_at_once_unless_userhub_asks_to_wait() -> None:
    policy = RetryPolicy(base=0, jitter=0.25)
    assert policy.delay(5, rng=Draw(1.0)) == 0
    assert policy.delay(5, retry_after=7, rng=Draw(1.0)) == 7


def test_the_defaults_are_thirty_seconds_twelve_hours_and_a_quarter() -> None:
    assert RetryPolicy() == RetryPolicy(base=30, cap=43_200, jitter=0.25)


def test_the_settings_choose_base_cap_and_jitter() -> None:
    reset_settings()
    try:
        env = stage_environ(RETRY_BASE_SECONDS="7", RETRY_MAX_SECONDS="600", RETRY_JITTER="0.5")
        with patched_environ(env):
            assert RetryPolicy.from_settings(get_settings()) == RetryPolicy(base=7, cap=600, jitter=0.5)
    finally:
        reset_settings()


def test_the_horizons_sum_the_waits_before_the_last_attempt() -> None:
    policy = RetryPolicy(base=30, cap=100, jitter=0.5)
    assert policy.minimum_horizon(1) == 0  # one attempt: no wait
    assert policy.minimum_horizon(4) == 30 + 60 + 100  # the third wait is capped
    assert policy.longest_horizon(4) == 45 + 90 + 100
    assert RetryPolicy(base=30, cap=10**9, jitter=0).minimum_horizon(13) == 61_410 + 43_200  # SQS caps the 12th
