"""The token bucket's contract, exactly: ≤ burst + rate·t in any window of t seconds, each wait the shortest that
keeps it, a refused `try_acquire` takes nothing, and a limit that went wrong is refused rather than becoming none.

A fake clock that moves only when slept (tests.support.FakeTime) makes every wait exact; nothing is timed.
"""

from __future__ import annotations

import pytest

from chalicelib.token_bucket import TokenBucket
from tests.support import FakeTime


class BoundedTime(FakeTime):
    """FakeTime that fails a test instead of looping forever when the bucket keeps sleeping without getting a token."""

    def sleep(self, seconds: float) -> None:
        assert len(self.slept) < 1000, "the bucket sleeps forever"
        super().sleep(seconds)


def bucket(rate: float | None, burst: float = 1.0, now: float = 1000.0) -> tuple[TokenBucket, BoundedTime]:
    fake = BoundedTime(now=now)
    return TokenBucket(rate, burst, clock=fake.clock, sleep=fake.sleep), fake


@pytest.mark.parametrize(("rate", "burst"), [(0, 1.0), (-1.0, 1.0), (-0.001, 5.0), (1.0, 0.999), (1.0, 0.0)])
def test_a_rate_at_or_below_zero_or_a_burst_below_one_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(rate, burst)


@pytest.mark.parametrize(("rate", "burst"), [(None, 1.0), (0.001, 1.0), (1.0, 1.0), (30.0, 5.0)])
def test_a_positive_rate_or_none_with_a_burst_of_at_least_one_is_accepted(rate: float | None, burst: float) -> None:
    made = TokenBucket(rate, burst)
    assert (made.rate, made.burst) == (rate, burst)


def test_no_rate_never_waits_whatever_is_taken() -> None:
    free, fake = bucket(None)
    assert free.acquire() == 0.0
    assert free.take(1000) == 0.0
    assert fake.slept == []


def test_the_first_burst_is_free_and_the_next_token_waits_exactly_one_over_the_rate() -> None:
    paced, fake = bucket(4.0, burst=3)
    assert [paced.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert fake.slept == []
    assert paced.acquire() == pytest.approx(0.25)
    assert fake.slept == [pytest.approx(0.25)]


def test_take_spaces_a_batch_at_the_rate_and_returns_the_total_wait() -> None:
    paced, fake = bucket(2.0)
    assert paced.take(5) == pytest.approx(2.0)  # one free, four at 0.5 s
    assert fake.slept == [pytest.approx(0.5)] * 4
    assert fake.now == pytest.approx(1002.0)


def test_take_of_nothing_takes_nothing() -> None:
    paced, fake = bucket(1.0)
    assert paced.take(0) == 0.0
    assert paced.acquire() == 0.0  # the burst token is still there
    assert fake.slept == []


def test_idle_time_refills_only_up_to_the_burst() -> None:
    paced, fake = bucket(10.0, burst=2)
    paced.take(2)
    fake.now += 3600  # an hour idle is worth 36,000 tokens, of which the bucket keeps two
    assert paced.take(2) == 0.0
    assert paced.acquire() == pytest.approx(0.1)


def test_partial_refill_shortens_the_wait() -> None:
    paced, fake = bucket(1.0)
    paced.acquire()
    fake.now += 0.75
    assert paced.acquire() == pytest.approx(0.25)


def test_a_whole_token_is_taken_without_sleeping() -> None:
    """Exactly one token (the start, or a refill to exactly one) is enough: no wait of zero seconds, no loop."""
    paced, fake = bucket(3.0)
    assert paced.acquire() == 0.0
    fake.now += 1 / 3  # a refill to one token, give or take a float's drift
    assert paced.acquire() == 0.0
    assert fake.slept == []


def test_try_acquire_takes_a_token_that_comes_exactly_at_its_timeout() -> None:
    paced, fake = bucket(2.0)
    assert paced.try_acquire(0.0) is True
    assert paced.try_acquire(0.5) is True  # the next token is due in exactly 0.5 s
    assert fake.slept == [pytest.approx(0.5)]


def test_a_refused_try_acquire_neither_sleeps_nor_takes_a_token() -> None:
    paced, fake = bucket(1.0)
    paced.acquire()
    fake.now += 0.5
    assert paced.try_acquire(0.49) is False
    assert fake.slept == []
    fake.now += 0.5  # the token the refused call did not take is here now
    assert paced.try_acquire(0.0) is True
    assert fake.slept == []


def test_try_acquire_with_a_token_at_hand_does_not_wait_and_takes_it() -> None:
    paced, fake = bucket(1.0, burst=2)
    assert paced.try_acquire(0.0) is True
    assert paced.try_acquire(0.0) is True
    assert paced.try_acquire(0.0) is False  # two taken: the burst is spent
    assert fake.slept == []


def test_try_acquire_sees_the_refill_since_the_last_take() -> None:
    paced, fake = bucket(1.0, burst=3)
    paced.take(3)
    fake.now += 2.5  # 2.5 tokens back, capped at the burst of 3
    assert [paced.try_acquire(0.0) for _ in range(3)] == [True, True, False]
    assert paced.try_acquire(0.5) is True
    assert fake.slept == [pytest.approx(0.5)]


def test_try_acquire_never_allows_more_than_the_burst_after_a_long_idle() -> None:
    paced, fake = bucket(5.0, burst=2)
    fake.now += 10_000
    assert [paced.try_acquire(0.0) for _ in range(3)] == [True, True, False]


def test_try_acquire_takes_a_token_at_hand_even_with_no_time_left() -> None:
    paced, fake = bucket(1.0, burst=2)
    assert paced.try_acquire(-1.0) is True  # a caller already past its deadline still gets a token at hand
    fake.now += 0.5  # 1.5 tokens
    assert paced.try_acquire(-1.0) is True
    assert paced.try_acquire(-1.0) is False and fake.slept == []


def test_try_acquire_counts_a_token_short_only_by_float_drift_as_whole() -> None:
    paced, fake = bucket(1.0, now=0.0)
    paced.acquire()
    fake.now = 1 - 1e-9  # exactly one token less the drift the bucket forgives
    assert paced.try_acquire(0.0) is True
    assert fake.slept == []
