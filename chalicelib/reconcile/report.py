"""What an invocation says about the run: its summary (returned, logged, stored as the last run) and its metrics.

The summary of a run that ended (complete, stopped, failed) is stored as `reconcile/last-run.json`, a complete one
also as `reconcile/last-complete.json`. A dry run writes nothing, not even when it fails. Recording a failure never
hides the failure: if the summary cannot be stored, that is logged and the original error goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.observability import Metrics, get_logger, redact
from chalicelib.reconcile.records import Counters, ReconcileRequest, RunRecord, RunResult, RunStatus, RunSummary
from chalicelib.reconcile.state import RunState
from chalicelib.reconcile.store import StateStore
from chalicelib.settings import Settings
from chalicelib.timefmt import utc_iso

log = get_logger("reconcile")

METRIC_COUNTERS = tuple(name for name in Counters.model_fields if name not in ("duplicates", "invocations", "seconds"))
DRY_RUN_SHOWN = 20  # usernames per category a dry run returns in `would_enqueue` (the CLI lists them all)


class Reporter:
    def __init__(self, settings: Settings, pool_id: str, store: StateStore, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.pool_id = pool_id
        self.store = store
        self.clock = clock
        self.metrics = Metrics("reconcile")
        self.signins_recovered: int | None = None  # set when this invocation ran sign-in recovery

    def summary(self, run: RunState, status: RunStatus) -> RunSummary:
        """The run's summary as of now; the caller has brought the counters up to date."""
        c = run.counters
        summary = RunSummary(
            run_id=run.record.run_id,
            pool_id=self.pool_id,
            status=status,
            full=run.record.full,
            dry_run=run.dry_run,
            **c.model_dump(),
            users_per_second=round(c.scanned / c.seconds, 1) if c.seconds else None,
            requests_per_second=round(c.requests / c.seconds, 2) if c.seconds else None,
            baseline_damaged=run.record.baseline_damaged,
            rate_limit=self.settings.reconcile_rate_limit,
            started_at=utc_iso(run.record.started_at),
            finished_at=utc_iso(self.clock()),
        )
        if self.signins_recovered is None:
            return summary
        return summary.model_copy(update={"signins_recovered": self.signins_recovered})

    def finish(self, run: RunState, status: RunStatus, *, store: bool = False) -> RunResult:
        """Count this invocation's work as metrics, log the summary and, if asked, store it as the last run."""
        summary = self.summary(run, status)
        for name in METRIC_COUNTERS:
            delta = getattr(run.counters, name) - getattr(run.at_start, name)
            if delta:
                self.metrics.count(f"reconcile_{name}", delta)
        if status is RunStatus.COMPLETE and not run.dry_run:
            self.metrics.count("reconcile_completed")  # the "no completed reconcile in 26 h" alarm watches it
        log.info("reconcile run summary" if status.ends_run else "reconcile invocation done", extra=summary.to_dict())
        if store:
            self.store.write_summary(summary)
        planned = {category: list(names) for category, names in run.planned.items()}
        if run.dry_run:
            shown = {category: names[:DRY_RUN_SHOWN] for category, names in planned.items()}
            summary = summary.model_copy(update={"would_enqueue": shown})
        return RunResult(status, summary, planned)

    def skipped(self, reason: str) -> RunResult:
        log.info("reconcile skipped", extra={"reason": reason, "pool_id": self.pool_id})
        return RunResult(RunStatus.SKIPPED, RunSummary(status=RunStatus.SKIPPED, reason=reason, pool_id=self.pool_id))

    def failed(self, run: RunState, error: BaseException) -> None:
        self._record_failure(self.summary(run, RunStatus.FAILED), error, dry_run=run.dry_run)

    def failed_before_work(self, record: RunRecord | None, request: ReconcileRequest, error: BaseException) -> None:
        """A failure while claiming or loading: no run state yet, only the record the claim picked (if any)."""
        now = self.clock()
        summary = RunSummary(
            run_id=record.run_id if record else None,
            pool_id=self.pool_id,
            status=RunStatus.FAILED,
            full=record.full if record else request.full,
            dry_run=request.dry_run,
            **(record.counters.model_dump() if record else {}),
            baseline_damaged=record.baseline_damaged if record else None,
            rate_limit=self.settings.reconcile_rate_limit,
            started_at=utc_iso(record.started_at if record else now),
            finished_at=utc_iso(now),
        )
        self._record_failure(summary, error, dry_run=request.dry_run)

    def _record_failure(self, summary: RunSummary, error: BaseException, *, dry_run: bool) -> None:
        summary = summary.model_copy(update={"error": redact(f"{type(error).__name__}: {error}")[:500]})
        log.error("reconcile run failed", extra=summary.to_dict())
        if dry_run:
            return
        try:
            self.store.write_summary(summary)
        except Exception as store_error:  # the original error matters more
            log.warning("could not record the failed reconcile run", extra={"error": str(store_error)})
