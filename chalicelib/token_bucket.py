"""A token bucket: the one pace for every call that spends an AWS quota (Cognito's ListUsers, 30 requests/s per
account, is shared by reconcile, capture resolution and the customer's own tools; DLQ replay paces its sends)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LIST_USERS_PER_SECOND = 30.0  # Cognito's UserList quota, per account and Region, shared with every other caller


class TokenBucket:
    """At most `rate` tokens a second, in bursts of at most `burst`: in any window of t seconds, ≤ burst + rate·t.

    `rate=None` is no limit, said explicitly: a rate ≤ 0 is refused, so a limit that went wrong never silently
    becomes no limit. Safe to share between threads.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (rate is not None and rate <= 0) or burst < 1:
            raise ValueError("rate must be > 0 (None: no limit) and burst ≥ 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds waited."""
        return self.take(1)

    def take(self, count: int) -> float:
        """Take `count` tokens one after another (a batch of `count` requests); returns the seconds waited."""
        if self.rate is None:
            return 0.0
        waited = 0.0
        with self._lock:
            for _ in range(count):
                waited += self._take_one(self.rate)
        return waited

    def _take_one(self, rate: float) -> float:
        waited = 0.0
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1 - 1e-9:  # float drift must not leave a wait too small to move the clock
                self._tokens -= 1
                return waited
            delay = (1 - self._tokens) / rate
            self._sleep(delay)
            waited += delay

    def try_acquire(self, timeout: float) -> bool:
        """Take one token if one comes within `timeout` seconds (sleeping for it); otherwise take nothing."""
        if self.rate is None:
            return True
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            if tokens < 1 - 1e-9 and (1 - tokens) / self.rate > timeout:
                return False
            self._take_one(self.rate)
            return True
