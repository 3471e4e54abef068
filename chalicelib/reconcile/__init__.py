"""Nightly reconcile: tell UserHub about every user that is new, changed or gone since the last complete run.

Restart safety rests on one rule: the snapshot of a run (and every checkpoint) is written only after every message
it implies was accepted by SQS. A crash anywhere therefore leaves the previous snapshot, or the previous checkpoint,
in place and the next attempt finds the same work again: nothing is lost, at worst something is sent twice.

A damaged committed snapshot (not gzip, cut short, an entry that does not parse, a wrong format marker or entry
count) never wedges reconcile: it is read to the end before any of it is trusted, and if it is damaged the run treats
the baseline as missing (every listed user is sent, no deletion is inferred from it) and replaces it at commit.
Every run that fails is recorded in `reconcile/last-run.json`; `reconcile/last-complete.json` keeps the last
complete one, so `userhub-sync status` can say both.

One run may span many invocations. Its state is one S3 object, the run record (`reconcile/<pool>/run.json`): lease,
pagination token, counters, and keys of the partial snapshot. Every write of it is conditional on the ETag last
read (S3 If-Match / If-None-Match), so two invocations can never both believe they own the run.

Modules, outside in: `handler` (the entry points), `run` (one invocation: claim, scan, sweep, then commit, hand off
or stop), `lease` (who may work on the run, until when), `state` (the in-memory comparison), `pacing` (ListUsers
under the rate limit), `enqueue` (SQS), `store` (S3), `report` (summary and metrics), `records` (the request, the
run record, the summary), `clients` (boto3 clients, or the fakes tests inject), `errors`. docs/RECONCILE.md has the
protocol and the measurements.
"""

from chalicelib.reconcile.clients import Deps, continue_function_name, reset_clients
from chalicelib.reconcile.enqueue import Enqueuer
from chalicelib.reconcile.errors import (
    CheckpointUnreadable,
    EnqueueError,
    LeaseConflict,
    ReconcileError,
    TooManyRestarts,
)
from chalicelib.reconcile.handler import handle_scheduled_event, run_reconcile
from chalicelib.reconcile.lease import Deadline
from chalicelib.reconcile.pacing import TokenBucket, UserPager, make_cognito_client
from chalicelib.reconcile.records import (
    Category,
    Counters,
    Phase,
    ReconcileRequest,
    RunResult,
    RunStatus,
    RunSummary,
    parse_request,
)
from chalicelib.reconcile.run import Progress, Reconciler
from chalicelib.reconcile.store import SNAPSHOT_FORMAT, StateStore, read_last_complete, read_last_summary

__all__ = [
    "SNAPSHOT_FORMAT",
    "Category",
    "CheckpointUnreadable",
    "Counters",
    "Deadline",
    "Deps",
    "EnqueueError",
    "Enqueuer",
    "LeaseConflict",
    "Phase",
    "Progress",
    "ReconcileError",
    "ReconcileRequest",
    "Reconciler",
    "RunResult",
    "RunStatus",
    "RunSummary",
    "StateStore",
    "TokenBucket",
    "TooManyRestarts",
    "UserPager",
    "continue_function_name",
    "handle_scheduled_event",
    "make_cognito_client",
    "parse_request",
    "read_last_complete",
    "read_last_summary",
    "reset_clients",
    "run_reconcile",
]
