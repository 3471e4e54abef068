"""The shapes reconcile reads and writes: the request an invocation gets, the run record it persists, its summary.

The run record is the whole state of a run between invocations (`reconcile/<pool>/run.json`). It is read with
`extra="ignore"`, so a record written by an older version (with fields since dropped) still resumes.

The summary is what the handler returns, what `reconcile/last-run.json` holds and what the CLI and `status` show:
one flat JSON object whose keys depend on how the invocation ended (a skip has three). `RunSummary.to_dict()`
gives exactly the keys the summary was built with, so the JSON keeps that shape whatever the model can hold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.reconcile.errors import ReconcileError

PREFIX = "reconcile"
EVENTBRIDGE_SOURCE = "aws.events"  # `source` of every EventBridge scheduled event (also SAM's generated one)


class Category(StrEnum):
    """Why a user is sent (or, for UNCHANGED, not sent unless the run is full)."""

    NEW = "new"
    CHANGED = "changed"
    DELETED = "deleted"
    UNCHANGED = "unchanged"


class Phase(StrEnum):
    SCAN = "scan"  # listing the pool page by page
    DELETIONS = "deletions"  # the scan is complete: sweeping what the baseline holds and the scan did not list


class RunStatus(StrEnum):
    """How an invocation ended."""

    COMPLETE = "complete"  # scanned, swept and committed: the next run compares with this one
    CONTINUED = "continued"  # handed off to a new invocation
    STOPPED = "stopped"  # out of time with no way to continue (RECONCILE_MAX_INVOCATIONS): the next run adopts it
    SKIPPED = "skipped"  # another invocation owns the run, or this continuation is stale
    DRY_RUN = "dry_run"  # compared everything, sent and wrote nothing
    DRY_RUN_INCOMPLETE = "dry_run_incomplete"  # a dry run out of time (it never continues)
    FAILED = "failed"

    @property
    def ends_run(self) -> bool:
        """The run is over (or stopped where the next run picks it up), not just this invocation."""
        return self in (RunStatus.COMPLETE, RunStatus.STOPPED, RunStatus.DRY_RUN)


class Counters(BaseModel):
    """What a run did, summed over its invocations (persisted in the checkpoint)."""

    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    duplicates: int = 0
    enqueued: int = 0
    pages: int = 0
    requests: int = 0  # ListUsers HTTP attempts, retries included
    throttles: int = 0
    restarts: int = 0
    invocations: int = 0
    seconds: float = 0.0


class RunRecord(BaseModel):
    """The run's lease and checkpoint: enough for any invocation to carry on where the last one stopped."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    run_id: str
    pool_id: str
    full: bool = False
    started_at: float
    baseline_etag: str | None = None  # the committed snapshot this run compares with (None: first run)
    baseline_damaged: str | None = None  # why that snapshot is not used (the run treats it as missing)
    invocation: int = 1  # the invocation that wrote this record
    chain: int = 1  # invocations since the run was started or adopted; capped by reconcile_max_invocations
    lease_until: float = 0.0
    phase: Phase = Phase.SCAN
    token: str | None = None
    partial_key: str | None = None  # entries of the current pass, all already enqueued where needed
    extra_key: str | None = None  # entries folded into the baseline when a rejected token restarted the scan
    deletions_done: int = 0
    counters: Counters = Field(default_factory=Counters)


class Continuation(BaseModel):
    run_id: str = Field(min_length=1, max_length=100)
    checkpoint: str = Field(pattern=rf"^{PREFIX}/")
    invocation: int = Field(ge=2)


class ReconcileRequest(BaseModel):
    """What an invocation was asked to do. A scheduled event carries none of these keys: a normal run."""

    model_config = ConfigDict(extra="ignore")

    continuation: Continuation | None = None
    full: bool = False
    dry_run: bool = False


def parse_request(event: Any) -> ReconcileRequest:
    """The request in a scheduled event, a hand-made payload (`{}`, `{"dry_run": true}`...) or a continuation.

    EventBridge's envelope keys are ignored. A hand-made payload (no `source: aws.events`) may hold only the
    request's keys: a typo such as `dry-run` must not silently become a real run.
    """
    if event is None:
        return ReconcileRequest()
    if not isinstance(event, dict):
        raise ReconcileError(f"malformed reconcile event: expected a JSON object, got {type(event).__name__}")
    if event.get("source") != EVENTBRIDGE_SOURCE:
        unknown = sorted(str(key) for key in event if key not in ReconcileRequest.model_fields)
        if unknown:
            raise ReconcileError(
                f"malformed reconcile event: unknown key(s) {', '.join(unknown)}; a payload takes "
                "dry_run and full (booleans), or is an EventBridge scheduled event"
            )
    try:
        return ReconcileRequest.model_validate(event)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ReconcileError(f"malformed reconcile event: {where}: {first['msg']}") from None


def new_run_id(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class RunSummary(Counters):
    """What one invocation says about the run: the run's counters so far, plus how and when it ended.

    Built with only the keys that apply (a skip: status, reason, pool_id); `to_dict()` gives those keys back.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str | None = None
    pool_id: str | None = None
    status: RunStatus | None = None  # always set by reconcile; a summary stored by hand may lack it
    reason: str | None = None  # skipped: why
    full: bool = False
    dry_run: bool = False
    users_per_second: float | None = None
    requests_per_second: float | None = None
    baseline_damaged: str | None = None  # why the committed snapshot was treated as missing
    rate_limit: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    signins_recovered: int | None = None  # present when this invocation ran sign-in recovery
    error: str | None = None  # failed: the error, redacted
    would_enqueue: dict[Category, list[str]] | None = None  # dry run: the first usernames per category

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the handler returns and last-run.json holds."""
        return self.model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class RunResult:
    status: RunStatus
    summary: RunSummary
    planned: dict[Category, list[str]] = field(default_factory=dict)  # dry runs: usernames by category
