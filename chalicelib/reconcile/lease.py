"""Who may work on the run, and for how long.

The run record's `lease_until` says until when its holder may write it; an invocation finding a live lease skips,
one finding an expired lease adopts the run from its last checkpoint. A lease is as long as the invocation can
live (Lambda's remaining time plus slack), or a renewable 15-minute slice for a run with no deadline (the CLI).

`decide_claim` is the whole decision, with no I/O: the caller reads the record and the snapshot's ETag, and writes
the record the decision returns, conditionally on the ETag it read; if that write loses, someone else claimed first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from chalicelib.reconcile.errors import ReconcileError
from chalicelib.reconcile.records import ReconcileRequest, RunRecord
from chalicelib.timefmt import utc_iso

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


def lease_end(deadline: Deadline, now: float) -> float:
    """Until when a claim made now holds the lease: the invocation's whole life, or a renewable local slice."""
    if deadline.finite:
        return now + deadline.remaining() + LAMBDA_LEASE_SLACK_SECONDS
    return now + LOCAL_LEASE_SECONDS


@dataclass(frozen=True)
class Skip:
    """Nothing to do in this invocation. `discard`: a stale run whose checkpoint objects can go meanwhile."""

    reason: str
    discard: str | None = None


@dataclass(frozen=True)
class Continue:
    """This invocation is the continuation the run's previous invocation started (or Lambda's retry of it)."""

    record: RunRecord


@dataclass(frozen=True)
class Adopt:
    """The run's chain stopped or crashed and its lease expired: carry on from its last checkpoint."""

    record: RunRecord


@dataclass(frozen=True)
class Start:
    """A new run. `discard`: the run it replaces (stale, or not full when a full one is asked for)."""

    record: RunRecord
    discard: str | None = None


Claim = Skip | Continue | Adopt | Start


def decide_claim(
    record: RunRecord | None,
    baseline_etag: str | None,
    request: ReconcileRequest,
    now: float,
    *,
    record_key: str,
    pool_id: str,
    lease_until: float,
    run_id: str,
) -> Claim:
    """What an invocation does about the run record it found; the record to write comes with the claim.

    A record whose baseline is not the committed snapshot is stale (a snapshot was committed after it was written,
    e.g. a crash between commit and cleanup) and counts as no record. `record` is not modified.
    """
    discard = None
    if record is not None and record.baseline_etag != baseline_etag:
        discard, record = record.run_id, None
    continuation = request.continuation
    if continuation is not None:
        if continuation.checkpoint != record_key:
            raise ReconcileError(f"continuation names {continuation.checkpoint}, expected {record_key}")
        if record is None or record.run_id != continuation.run_id:
            return Skip(f"run {continuation.run_id} is finished or was superseded", discard)
        running = record.lease_until > now
        if record.invocation > continuation.invocation or (record.invocation == continuation.invocation and running):
            return Skip(f"invocation {continuation.invocation} of run {record.run_id} already ran")
        return Continue(_claimed(record, lease_until, invocation=continuation.invocation, chain=record.chain + 1))
    if record is not None and record.lease_until > now:
        return Skip(f"run {record.run_id} is in progress (lease until {utc_iso(record.lease_until)})")
    if record is not None and (record.full or not request.full):
        return Adopt(_claimed(record, lease_until, invocation=record.invocation + 1, chain=1))
    fresh = RunRecord(run_id=run_id, pool_id=pool_id, full=request.full, started_at=now, baseline_etag=baseline_etag)
    return Start(_claimed(fresh, lease_until, invocation=1, chain=1), discard or (record.run_id if record else None))


def _claimed(record: RunRecord, lease_until: float, *, invocation: int, chain: int) -> RunRecord:
    claimed = record.model_copy(
        deep=True, update={"invocation": invocation, "chain": chain, "lease_until": lease_until}
    )
    claimed.counters.invocations += 1
    return claimed
