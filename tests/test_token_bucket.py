"""The one token bucket: `try_acquire` takes a token only if it comes in time, and never over the rate."""

from __future__ import annotations

from chalicelib.token_bucket import TokenBucket
from tests.support import FakeTime


def test_try_acquire_waits_for_a_token_only_within_its_timeout() -> None:
    fake = FakeTime(now=0.0)
    bucket = TokenBucket(2.0, clock=fake.clock, sleep=fake.sleep)
    assert bucket.try_acquire(timeout=0) is True  # the burst of one
    assert bucket.try_acquire(timeout=0.1) is False and fake.slept == []  # the next comes in 0.5 s
    assert bucket.try_acquire(timeout=1.0) is True and fake.slept == [0.5]
    taken = sum(bucket.try_acquire(timeout=10) for _ in range(10))
    assert taken == 10 and 4.9 < fake.now - 0.5 < 5.1  # ten more at 2/s: five seconds


def test_no_rate_is_no_wait() -> None:
    fake = FakeTime(now=0.0)
    assert all(TokenBucket(None, clock=fake.clock, sleep=fake.sleep).try_acquire(0) for _ in range(100))
    assert fake.slept == []
