"""The retry schedule, in three numbers: attempt n waits base · 2^(n−1) · (1 + U(0, jitter)) seconds, never less than
UserHub's Retry-After, never more than `cap` (SQS's visibility timeout allows 12 h).

The wait happens in SQS, not in the function: `deliver` sets the message's visibility to the delay, so a message
can keep trying for a day without a scheduler, a database, or a sleeping Lambda.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from chalicelib.settings import Settings
from chalicelib.sqs_limits import MAX_VISIBILITY_SECONDS


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 30
    cap: float = MAX_VISIBILITY_SECONDS
    jitter: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_jitter)

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> int:
        """Whole seconds to wait after failed attempt `attempt` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 40)
        wait = self.base * (2**exponent) * (1 + (rng or random).uniform(0, self.jitter))
        if retry_after is not None:
            wait = max(wait, retry_after)
        return int(min(max(wait, 0), self.cap, MAX_VISIBILITY_SECONDS) + 0.999)

    def minimum_horizon(self, max_receive_count: int) -> float:
        """Seconds from the first attempt to the last allowed one, at the least (no jitter, no Retry-After)."""
        cap = min(self.cap, MAX_VISIBILITY_SECONDS)
        return sum(min(self.base * 2 ** (n - 1), cap) for n in range(1, max_receive_count))

    def longest_horizon(self, max_receive_count: int) -> float:
        """The same at the most without Retry-After (every wait at its largest jitter, rounded up as `delay` rounds):
        what the queue's retention must hold."""
        waits = (self.base * 2 ** min(n - 1, 40) * (1 + self.jitter) for n in range(1, max_receive_count))
        return float(sum(int(min(wait, self.cap, MAX_VISIBILITY_SECONDS) + 0.999) for wait in waits))
