"""A token bucket: at most `rate` takes a second on average, bursts of at most `burst`; in any window of t seconds,
at most burst + rate·t. Shared by everything that paces calls to an AWS quota (Cognito's ListUsers, 30 requests/s
per account, is shared by reconcile, capture resolution and the customer's own tools)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst ≥ 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, timeout: float | None = None) -> bool:
        """Take one token, sleeping until there is one; False (nothing taken) if that would take over `timeout` s."""
        with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                delay = (1 - self._tokens) / self.rate
                if timeout is not None and delay > timeout:
                    return False
                self._sleep(delay)
                if timeout is not None:
                    timeout -= delay
