"""Who may work on the run, and for how long.

The run record's `lease_until` says until when its holder may write it; an invocation finding a live lease skips,
one finding an expired lease adopts the run from its last checkpoint. A lease is as long as the invocation can
live (Lambda's remaining time plus slack), or a renewable 15-minute slice for a run with no deadline (the CLI).
"""

from __future__ import annotations

import math
from typing import Any

HANDOFF_GRACE_SECONDS = 300  # lease kept for the continuation to start; after that anyone may adopt the run
LAMBDA_LEASE_SLACK_SECONDS = 30
LOCAL_LEASE_SECONDS = 900  # a local run has no deadline: it holds the lease in 15-minute slices, checkpointing
LOCAL_RENEW_SECONDS = 300  # ... renewed (with a checkpoint) when less than this is left


class Deadline:
    """Seconds this invocation has left (Lambda's remaining time, or unlimited), and when to stop for a hand-off.

    The margin is capped at a quarter of the time the invocation started with, so a function whose timeout is not
    well above RECONCILE_TIME_MARGIN_SECONDS still makes progress instead of handing off empty-handed forever.
    """

    def __init__(self, context: Any = None, margin: float = 60.0) -> None:
        getter = getattr(context, "get_remaining_time_in_millis", None)
        self._getter = getter if callable(getter) else None
        self.margin = min(margin, self.remaining() / 4)

    @property
    def finite(self) -> bool:
        return self._getter is not None

    def remaining(self) -> float:
        return self._getter() / 1000 if self._getter else math.inf

    def low(self) -> bool:
        return self.remaining() < self.margin


def lease_until(deadline: Deadline, now: float) -> float:
    if deadline.finite:
        return now + deadline.remaining() + LAMBDA_LEASE_SLACK_SECONDS
    return now + LOCAL_LEASE_SECONDS
