"""One invocation of a run: claim the run, scan, enqueue, then commit, hand off or stop.

Order of writes, on which restart safety rests: messages are flushed to SQS, then the partial snapshot is
written, then the run record that points at it; the committed snapshot is replaced last, after a final flush and
a conditional write of the record proving the lease is still held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.messages import EventType, Source, SyncMessage
from chalicelib.observability import get_logger
from chalicelib.reconcile.clients import (
    Continuer,
    Deps,
    continue_function_name,
    lambda_continuer,
)
from chalicelib.reconcile.enqueue import Enqueuer
from chalicelib.reconcile.errors import CheckpointUnreadable, LeaseConflict, TooManyRestarts
from chalicelib.reconcile.lease import (
    HANDOFF_GRACE_SECONDS,
    LOCAL_LEASE_SECONDS,
    LOCAL_RENEW_SECONDS,
    Adopt,
    Continue,
    Deadline,
    Skip,
    Start,
    decide_claim,
    lease_end,
)
from chalicelib.reconcile.pacing import UserPager, is_bad_token
from chalicelib.reconcile.records import (
    Category,
    Continuation,
    Counters,
    Phase,
    ReconcileRequest,
    RunRecord,
    RunResult,
    RunStatus,
    new_run_id,
)
from chalicelib.reconcile.report import Reporter
from chalicelib.reconcile.state import RunState, load_state
from chalicelib.reconcile.store import StateStore
from chalicelib.settings import Settings
from chalicelib.snapshot import SnapshotDamaged, read_subs
from chalicelib.sqs_limits import BATCH_ENTRIES
from chalicelib.sub_index import write_index

log = get_logger("reconcile")

Progress = Callable[[Counters, Phase], None]
CLAIM_VERBS = {Continue: "continuing", Adopt: "adopting", Start: "starting"}


class Reconciler:
    """One invocation of a run: claim the run, scan, enqueue, then commit, hand off or stop."""

    def __init__(self, settings: Settings, deps: Deps, pager: UserPager, progress: Progress | None = None) -> None:
        self.settings = settings
        self.deps = deps
        self.pager = pager
        self.progress = progress
        self.pool_id = settings.require("USER_POOL_ID")
        self.store = StateStore(deps.s3_client(), settings.require("SNAPSHOT_BUCKET"), self.pool_id)
        self.report = Reporter(settings, self.pool_id, self.store, deps.clock)
        self._queue_url: str | None = None
        self._claiming: RunRecord | None = None  # the run `_claim` picked, for the failure summary

    def invoke(self, request: ReconcileRequest, deadline: Deadline, context: Any = None) -> RunResult:
        try:
            continuer = None
            if deadline.finite and not request.dry_run:
                continuer = self.deps.continuer or lambda_continuer(
                    self.deps.lambda_api(), continue_function_name(context, self.settings)
                )
            if request.dry_run:
                run = self._dry_run_state(request)
            else:
                claimed = self._claim(request, deadline)
                if isinstance(claimed, RunResult):
                    return claimed
                run = claimed
        except (Exception, KeyboardInterrupt) as error:
            self.report.failed_before_work(self._claiming, request, error)
            raise
        try:
            return self._work(run, deadline, continuer)
        except LeaseConflict as error:
            log.warning(
                "reconcile run taken over by another invocation",
                extra={"run_id": run.record.run_id, "error": str(error)},
            )
            return self._finish(run, RunStatus.SKIPPED)
        except (Exception, KeyboardInterrupt) as error:
            self._abandon(run, error)
            raise
        finally:
            self.report.metrics.flush()

    def _claim(self, request: ReconcileRequest, deadline: Deadline) -> RunState | RunResult:
        now = self.deps.clock()
        found, etag = self.store.read_record()
        baseline = self.store.head_snapshot()
        claim = decide_claim(
            found,
            baseline.etag if baseline else None,
            request,
            now,
            record_key=self.store.record_key,
            pool_id=self.pool_id,
            lease_until=lease_end(deadline, now),
            run_id=new_run_id(now),
        )
        if isinstance(claim, Skip | Start) and claim.discard:
            log.warning("discarding the checkpoint objects of an earlier run", extra={"run_id": claim.discard})
            self._discard_objects(claim.discard)
        if isinstance(claim, Skip):
            return self.report.skipped(claim.reason)
        record = claim.record
        self._claiming = record
        try:
            etag = self.store.write_record(record, etag)
        except LeaseConflict:
            return self.report.skipped("another invocation claimed the run first")
        log.info(
            f"reconcile {CLAIM_VERBS[type(claim)]}",
            extra={
                "run_id": record.run_id,
                "invocation": record.invocation,
                "phase": record.phase,
                "full": record.full,
            },
        )
        try:
            run = load_state(self.store, record, etag, baseline, dry_run=False)
            run.enqueuer = Enqueuer(
                self.deps.sqs_client(), self.events_queue_url(), self._message_body, sleep=self.deps.sleep
            )
        except CheckpointUnreadable:
            # resuming would fail the same way every time: drop the run so the next one starts clean
            try:
                self.store.delete_record()
            except ClientError as error:
                log.warning("could not delete the unusable run record", extra={"error": str(error)})
            self._discard_objects(record.run_id)
            raise
        except BaseException:
            self._release(record, etag)
            raise
        return run

    def _dry_run_state(self, request: ReconcileRequest) -> RunState:
        baseline = self.store.head_snapshot()
        now = self.deps.clock()
        record = RunRecord(
            run_id="dry-run-" + new_run_id(now),
            pool_id=self.pool_id,
            full=request.full,
            started_at=now,
            baseline_etag=baseline.etag if baseline else None,
        )
        record.counters.invocations = 1
        self._claiming = record
        return load_state(self.store, record, None, baseline, dry_run=True)

    def _work(self, run: RunState, deadline: Deadline, continuer: Continuer | None) -> RunResult:
        record = run.record
        while record.phase is Phase.SCAN:
            if deadline.low():
                return self._out_of_time(run, continuer)
            if not run.dry_run and not deadline.finite and record.lease_until - self.deps.clock() < LOCAL_RENEW_SECONDS:
                self._checkpoint(run, lease_until=self.deps.clock() + LOCAL_LEASE_SECONDS)
            try:
                users, token = self.pager.page(self.pool_id, record.token)
            except ClientError as error:
                if record.token is None or not is_bad_token(error):
                    raise
                run.restart_scan(error, self.settings.reconcile_max_restarts)
                continue
            record.counters.pages += 1
            run.compare(users)
            record.token = token
            if token is None:
                record.phase = Phase.DELETIONS
            self._progress(run, Phase.SCAN)
        try:
            stopped = self._sweep(run, deadline, continuer)
        except SnapshotDamaged as damage:  # the baseline turned out damaged only now: never trust it
            run.rescan_without_baseline(str(damage), self.store.snapshot_key)
            return self._work(run, deadline, continuer)  # recurses once at most: the baseline is not read again
        if stopped is not None:
            return stopped
        return self._commit(run)

    def _sweep(self, run: RunState, deadline: Deadline, continuer: Continuer | None) -> RunResult | None:
        """Mark and sweep: what the baseline knows and this complete scan never listed is gone. None when done."""
        record = run.record
        position = 0
        for name in run.unseen(self.store):
            if position >= record.deletions_done:
                if position % BATCH_ENTRIES == 0 and deadline.low():  # a whole batch between looks at the clock
                    record.deletions_done = position
                    return self._out_of_time(run, continuer)
                record.counters.deleted += 1
                run.emit(Category.DELETED, name)
            position += 1
        record.deletions_done = position
        self._progress(run, Phase.DELETIONS)
        return None

    def _sync_counters(self, run: RunState) -> None:
        run.sync_counters(requests=self.pager.requests, throttles=self.pager.throttles)

    def _checkpoint(self, run: RunState, lease_until: float) -> None:
        """Persist progress: enqueue first, then the partial snapshot, then the record that points at it."""
        assert run.enqueuer is not None
        run.enqueuer.flush()
        record = run.record
        run.checkpoints += 1
        if run.writer.count:
            record.partial_key = self.store.run_key(
                record.run_id, f"partial-{record.invocation:05d}-{run.checkpoints}.gz"
            )
            self.store.put_blob(record.partial_key, run.writer.finish())
        else:
            record.partial_key = None
        if run.extra_dirty:
            record.extra_key = self.store.run_key(record.run_id, f"extra-{record.invocation:05d}-{run.checkpoints}.gz")
            self.store.put_blob(record.extra_key, bytes(run.extra))
            run.extra_dirty = False
        self._sync_counters(run)
        record.lease_until = lease_until
        run.etag = self.store.write_record(record, run.etag)
        run.saved = record.model_copy(deep=True)

    def _out_of_time(self, run: RunState, continuer: Continuer | None) -> RunResult:
        if run.dry_run:
            return self._finish(run, RunStatus.DRY_RUN_INCOMPLETE)
        record, now = run.record, self.deps.clock()
        if record.chain >= self.settings.reconcile_max_invocations or continuer is None:
            self._checkpoint(run, lease_until=now)  # released: the next scheduled run adopts it
            log.error(
                "reconcile stopped at RECONCILE_MAX_INVOCATIONS; the next run carries on from the checkpoint",
                extra={"run_id": record.run_id, "chain": record.chain},
            )
            return self._finish(run, RunStatus.STOPPED, store=True)
        self._checkpoint(run, lease_until=now + HANDOFF_GRACE_SECONDS)
        payload = {
            "continuation": Continuation(
                run_id=record.run_id, checkpoint=self.store.record_key, invocation=record.invocation + 1
            ).model_dump()
        }
        continuer(payload)
        return self._finish(run, RunStatus.CONTINUED)

    def _commit(self, run: RunState) -> RunResult:
        if run.dry_run:
            return self._finish(run, RunStatus.DRY_RUN)
        assert run.enqueuer is not None
        run.enqueuer.flush()
        # Prove we still hold the lease just before replacing the snapshot (itself a conditional write). The record
        # written is the last checkpoint, unchanged: a crash right here must resume from a consistent state.
        run.saved.lease_until = self.deps.clock() + HANDOFF_GRACE_SECONDS
        run.etag = self.store.write_record(run.saved, run.etag)
        snapshot = run.writer.finish()
        self.store.put_snapshot(snapshot, run.writer.count, run.record.baseline_etag)
        self._write_sub_index(snapshot)
        result = self._finish(run, RunStatus.COMPLETE, store=True)
        try:
            self.store.delete_record()
            self._discard_objects(run.record.run_id)
        except ClientError as error:  # harmless: the next run sees a stale record and discards it
            log.warning("could not clean up the run record", extra={"error": str(error)})
        return result

    def _write_sub_index(self, snapshot: bytes) -> None:
        """The sub→username map capture needs for deleted users; advisory, so a failure is logged, not raised."""
        try:
            written = write_index(self.store.s3, self.store.bucket, self.pool_id, read_subs(snapshot))
        except Exception as error:
            log.warning("could not write the sub index; captured deletes resolve less", extra={"error": str(error)})
            return
        log.info("sub index written", extra={"bytes": written, "pool_id": self.pool_id})

    def _abandon(self, run: RunState, error: BaseException) -> None:
        """After a failure: release the lease but keep the last checkpoint, so a retry or the next run resumes."""
        self._sync_counters(run)
        if not run.dry_run:
            try:
                if isinstance(error, TooManyRestarts):
                    self.store.delete_record()
                    self._discard_objects(run.record.run_id)
                else:
                    self._release(run.saved, run.etag)
            except Exception as cleanup_error:  # the original error matters more
                log.warning("could not clean up after the failed reconcile run", extra={"error": str(cleanup_error)})
        self.report.failed(run, error)

    def _release(self, saved: RunRecord, etag: str | None) -> None:
        """Give the lease up, keeping the checkpoint as it was persisted (best effort: it also expires by itself)."""
        saved.lease_until = self.deps.clock()
        try:
            self.store.write_record(saved, etag)
        except Exception as error:
            log.warning("could not release the reconcile lease", extra={"error": str(error)})

    def _discard_objects(self, run_id: str) -> None:
        try:
            self.store.delete_run_objects(run_id)
        except ClientError as error:
            log.warning("could not delete old checkpoint objects", extra={"run_id": run_id, "error": str(error)})

    def _finish(self, run: RunState, status: RunStatus, *, store: bool = False) -> RunResult:
        self._sync_counters(run)
        return self.report.finish(run, status, store=store)

    def _progress(self, run: RunState, phase: Phase) -> None:
        if self.progress is not None:
            self._sync_counters(run)
            self.progress(run.counters, phase)

    def events_queue_url(self) -> str:
        """Looked up once per invocation (sign-in recovery and the run share it)."""
        if self._queue_url is None:
            sqs = self.deps.sqs_client()
            self._queue_url = sqs.get_queue_url(QueueName=self.settings.events_queue_name)["QueueUrl"]
        return self._queue_url

    def _message_body(self, username: str) -> str:
        return SyncMessage(
            type=EventType.CHANGED,
            user_pool_id=self.pool_id,
            username=username,
            connection_id=self.settings.userhub_connection_id,
            source=Source.RECONCILE,
        ).to_body()
