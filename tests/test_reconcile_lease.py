"""`decide_claim`, the lease decision, as a table: every branch, with the record each claim would write."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.reconcile import ReconcileError, ReconcileRequest
from chalicelib.reconcile.lease import Adopt, Claim, Continue, Skip, Start, decide_claim
from chalicelib.reconcile.records import Continuation, Counters, RunRecord

NOW = 1_767_236_400.0  # 2026-01-01T03:00:00Z
LEASE = NOW + 930.0  # what the caller computed for this invocation
KEY = "reconcile/pool/run.json"
SNAPSHOT = '"committed"'


def found(**changes: Any) -> RunRecord:
    """The run record an earlier invocation of run r1 wrote: its third invocation, second of its chain."""
    fields: dict[str, Any] = {
        "run_id": "r1",
        "pool_id": "pool",
        "started_at": NOW - 3600,
        "baseline_etag": SNAPSHOT,
        "invocation": 3,
        "chain": 2,
        "lease_until": NOW - 1,  # expired
        "counters": Counters(invocations=3, scanned=1800),
        **changes,
    }
    return RunRecord(**fields)


def continuation(invocation: int = 4, run_id: str = "r1", checkpoint: str = KEY) -> ReconcileRequest:
    return ReconcileRequest(continuation=Continuation(run_id=run_id, checkpoint=checkpoint, invocation=invocation))


def outcome(claim: Claim) -> tuple[Any, ...]:
    """The claim as comparable values: its kind, then the reason (skip) or the record it would write."""
    if isinstance(claim, Skip):
        return ("skip", claim.reason, claim.discard)
    record = claim.record
    kind = {Continue: "continue", Adopt: "adopt", Start: "start"}[type(claim)]
    discard = claim.discard if isinstance(claim, Start) else None
    return (
        kind,
        discard,
        record.run_id,
        record.full,
        record.baseline_etag,
        record.invocation,
        record.chain,
        record.counters.invocations,
        record.counters.scanned,
        record.lease_until,
    )


def started(full: bool = False, baseline: str | None = SNAPSHOT, discard: str | None = None) -> tuple[Any, ...]:
    """A new run: first invocation, nothing scanned yet."""
    return ("start", discard, "new", full, baseline, 1, 1, 1, 0, LEASE)


def carried_on(kind: str, invocation: int, chain: int, full: bool = False) -> tuple[Any, ...]:
    """Run r1 again, its counters kept and this invocation counted."""
    return (kind, None, "r1", full, SNAPSHOT, invocation, chain, 4, 1800, LEASE)


def skipped(reason: str, discard: str | None = None) -> tuple[Any, ...]:
    return ("skip", reason, discard)


LIVE = NOW + 300
STALE = '"older"'  # the record's baseline: a snapshot has been committed since it was written
GONE = "run r1 is finished or was superseded"
RAN = "invocation 4 of run r1 already ran"
NORMAL, FULL = ReconcileRequest(), ReconcileRequest(full=True)


@pytest.mark.parametrize(
    ("record", "baseline", "request_", "expected"),
    [
        pytest.param(None, SNAPSHOT, NORMAL, started(), id="no run: start"),
        pytest.param(None, None, NORMAL, started(baseline=None), id="first run ever: start without a baseline"),
        pytest.param(None, SNAPSHOT, FULL, started(full=True), id="no run, full: start a full run"),
        pytest.param(
            found(lease_until=LIVE),
            SNAPSHOT,
            NORMAL,
            skipped("run r1 is in progress (lease until 2026-01-01T03:05:00Z)"),
            id="a live lease: skip",
        ),
        pytest.param(found(), SNAPSHOT, NORMAL, carried_on("adopt", 4, 1), id="an expired lease: adopt"),
        pytest.param(
            found(full=True), SNAPSHOT, NORMAL, carried_on("adopt", 4, 1, full=True), id="an expired full run: adopt"
        ),
        pytest.param(found(), SNAPSHOT, FULL, started(full=True, discard="r1"), id="an expired run, full: start over"),
        pytest.param(
            found(baseline_etag=STALE, lease_until=LIVE),
            SNAPSHOT,
            NORMAL,
            started(discard="r1"),
            id="a stale record, even leased: start, discarding it",
        ),
        pytest.param(
            found(lease_until=LIVE),
            SNAPSHOT,
            continuation(4),
            carried_on("continue", 4, 3),
            id="continuation: continue",
        ),
        pytest.param(
            found(invocation=4),
            SNAPSHOT,
            continuation(4),
            carried_on("continue", 4, 3),
            id="Lambda retrying a continuation that crashed: continue",
        ),
        pytest.param(
            found(invocation=4, lease_until=LIVE),
            SNAPSHOT,
            continuation(4),
            skipped(RAN),
            id="a duplicate of a running continuation: skip",
        ),
        pytest.param(found(invocation=5), SNAPSHOT, continuation(4), skipped(RAN), id="a late continuation: skip"),
        pytest.param(None, SNAPSHOT, continuation(4), skipped(GONE), id="a continuation of a finished run: skip"),
        pytest.param(
            found(run_id="r2"), SNAPSHOT, continuation(4), skipped(GONE), id="a continuation of a superseded run: skip"
        ),
        pytest.param(
            found(baseline_etag=STALE),
            SNAPSHOT,
            continuation(4),
            skipped(GONE, discard="r1"),
            id="a continuation finding a stale record: skip, discarding it",
        ),
    ],
)
def test_decide_claim(
    record: RunRecord | None, baseline: str | None, request_: ReconcileRequest, expected: tuple[Any, ...]
) -> None:
    before = record.model_dump() if record else None
    claim = decide_claim(
        record, baseline, request_, NOW, record_key=KEY, pool_id="pool", lease_until=LEASE, run_id="new"
    )
    assert outcome(claim) == expected
    assert (record.model_dump() if record else None) == before, "the record found is never modified"
    if not isinstance(claim, Skip):
        assert claim.record.pool_id == "pool"
        assert claim.record.started_at == (NOW if isinstance(claim, Start) else NOW - 3600)


def test_a_continuation_naming_another_checkpoint_is_refused() -> None:
    with pytest.raises(ReconcileError, match="continuation names reconcile/other/run.json, expected " + KEY):
        decide_claim(
            found(),
            SNAPSHOT,
            continuation(checkpoint="reconcile/other/run.json"),
            NOW,
            record_key=KEY,
            pool_id="pool",
            lease_until=LEASE,
            run_id="new",
        )
