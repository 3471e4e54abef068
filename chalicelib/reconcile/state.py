"""One invocation's working state for a run, rebuilt from S3 at the start and compared against page by page.

Baseline, in memory: the committed snapshot (unless damaged), then the entries folded in by a rejected-token restart
(`extra`), then the current pass's entries (`partial`) as already observed. Users are compared by 64-bit hashes in a
`FingerprintTable`; deletions are what the baseline holds and a complete pass never listed (mark and sweep).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from chalicelib.observability import get_logger
from chalicelib.reconcile.enqueue import Enqueuer
from chalicelib.reconcile.errors import CheckpointUnreadable, TooManyRestarts
from chalicelib.reconcile.records import Category, Counters, Phase, RunRecord
from chalicelib.reconcile.store import SnapshotInfo, StateStore, error_code
from chalicelib.snapshot import (
    FingerprintTable,
    SnapshotDamaged,
    SnapshotWriter,
    Verdict,
    fingerprint,
    read_entries,
    user_key,
)

if TYPE_CHECKING:
    from types_boto3_cognito_idp.type_defs import UserTypeTypeDef

log = get_logger("reconcile")


@dataclass
class RunState:
    """One invocation's working state for a run."""

    record: RunRecord  # live state; persisted only by a checkpoint, after a flush
    saved: RunRecord  # as last written to S3
    etag: str | None
    dry_run: bool
    table: FingerprintTable
    writer: SnapshotWriter
    extra: bytearray
    extra_dirty: bool = False
    enqueuer: Enqueuer | None = None
    planned: dict[Category, list[str]] = field(default_factory=lambda: defaultdict(list))
    started: float = field(default_factory=time.monotonic)
    at_start: Counters = field(default_factory=Counters)
    checkpoints: int = 0

    @property
    def counters(self) -> Counters:
        return self.record.counters

    def sync_counters(self, *, requests: int, throttles: int) -> None:
        """Counters as checkpointed when this invocation began, plus this invocation's pager counts, sends, time."""
        counters, start = self.counters, self.at_start
        counters.requests = start.requests + requests
        counters.throttles = start.throttles + throttles
        counters.enqueued = start.enqueued + (self.enqueuer.sent if self.enqueuer else 0)
        counters.seconds = round(start.seconds + time.monotonic() - self.started, 3)

    def compare(self, users: Iterable[UserTypeTypeDef]) -> None:
        """Count each listed user by verdict, keep it for the new snapshot, and send it if it is new or changed."""
        counters, full = self.counters, self.record.full
        for user in users:
            name = user["Username"]
            fp = fingerprint(user)
            verdict = self.table.observe(user_key(name), fp)
            counters.scanned += 1
            if verdict is Verdict.DUPLICATE:
                counters.duplicates += 1
                continue
            self.writer.add(
                name, fp, next((a.get("Value") for a in user.get("Attributes") or () if a["Name"] == "sub"), None)
            )
            setattr(counters, verdict.value, getattr(counters, verdict.value) + 1)
            if verdict is not Verdict.UNCHANGED or full:
                self.emit(Category(verdict.value), name)

    def emit(self, category: Category, username: str) -> None:
        if self.dry_run:
            self.planned[category].append(username)
        else:
            assert self.enqueuer is not None
            self.enqueuer.add(username)

    def restart_scan(self, error: ClientError, max_restarts: int) -> None:
        """A rejected page token: scan again from the first page, treating what this run saw as the baseline.

        Users already compared (and enqueued if they differed) are folded into the baseline, so the new pass
        enqueues them again only if they changed again. Deletions are still decided only after a complete pass.
        """
        counters = self.counters
        counters.restarts += 1
        log.warning(
            "page token rejected: restarting the scan from the first page",
            extra={
                "run_id": self.record.run_id,
                "restarts": counters.restarts,
                "error": error_code(error),
                "scanned": counters.scanned,
            },
        )
        if counters.restarts > max_restarts:
            raise TooManyRestarts(
                f"page token rejected {counters.restarts} times (RECONCILE_MAX_RESTARTS={max_restarts}); "
                "the next run starts afresh"
            )
        self.extra += self.writer.finish()
        self.extra_dirty = True
        self.writer = SnapshotWriter()
        self.table.forget_marks()
        self.record.token = None

    def unseen(self, store: StateStore) -> Iterator[str]:
        """Usernames the baseline holds and the scan did not list, in a fixed order (resumable by position)."""
        sources: list[Iterator[tuple[str, int]]] = []
        if self.record.baseline_etag and self.record.baseline_damaged is None:
            sources.append(store.stream_snapshot(self.record.baseline_etag))
        if self.extra:
            sources.append(read_entries(self.extra))
        for entries in sources:
            for name, _fp in entries:
                if self.table.take_unseen(user_key(name)):
                    yield name

    def rescan_without_baseline(self, problem: str, snapshot_key: str) -> None:
        """Damage found while sweeping: drop the baseline and scan again from page one, sending everyone.

        Only the entries this run listed itself before a rejected-token restart (`extra`) stay as a baseline,
        so users listed then and gone now are still swept. Deletions already sent were read from the snapshot
        before the damage; each is a CHANGED message, which makes UserHub look the user up again, nothing more.
        """
        drop_baseline(self.record, problem, snapshot_key)
        self.table = FingerprintTable(len(self.table))
        for name, fp in read_entries(self.extra):
            self.table.load(user_key(name), fp)
        self.writer = SnapshotWriter()


def load_state(
    store: StateStore,
    record: RunRecord,
    etag: str | None,
    baseline: SnapshotInfo | None,
    *,
    dry_run: bool,
) -> RunState:
    """Rebuild the in-memory state from the committed snapshot and the run's checkpoint."""
    expected = (baseline.users or 0) if baseline else 0
    table = FingerprintTable(expected + expected // 8 + 64)
    if record.baseline_etag and record.baseline_damaged is None:
        try:
            _load_baseline(store, table, record.baseline_etag, baseline)
        except SnapshotDamaged as damage:
            table = FingerprintTable()  # never compare with a half-read baseline
            drop_baseline(record, str(damage), store.snapshot_key)
    extra = bytearray()
    writer = SnapshotWriter()
    key = record.extra_key
    try:
        if record.extra_key:
            extra += store.get_blob(record.extra_key)
            for name, fp in read_entries(extra):
                table.load(user_key(name), fp)
        key = record.partial_key
        if record.partial_key:
            partial = store.get_blob(record.partial_key)
            seen = 0
            for name, fp in read_entries(partial):
                table.observe(user_key(name), fp)
                seen += 1
            writer = SnapshotWriter(partial, seen)
    except (SnapshotDamaged, ClientError) as error:
        if isinstance(error, ClientError) and error_code(error) not in ("NoSuchKey", "404"):
            raise
        problem = str(error) if isinstance(error, SnapshotDamaged) else "missing"
        raise CheckpointUnreadable(
            f"checkpoint {key} of run {record.run_id} is unreadable ({problem}): the run is discarded and "
            "the next one starts afresh"
        ) from None
    return RunState(
        record=record,
        saved=record.model_copy(deep=True),
        etag=etag,
        dry_run=dry_run,
        table=table,
        writer=writer,
        extra=extra,
        at_start=record.counters.model_copy(),
    )


def _load_baseline(store: StateStore, table: FingerprintTable, etag: str, baseline: SnapshotInfo | None) -> None:
    """The whole committed snapshot into `table`, checked to the last byte: SnapshotDamaged if it is damaged."""
    problem = baseline.problem() if baseline is not None else "it disappeared"
    if problem:
        raise SnapshotDamaged(problem)
    assert baseline is not None
    count = 0
    for name, fp in store.stream_snapshot(etag):
        table.load(user_key(name), fp)
        count += 1
    if count != baseline.users:
        raise SnapshotDamaged(f"holds {count} entries, its users metadata says {baseline.users}")


def drop_baseline(record: RunRecord, problem: str, snapshot_key: str) -> None:
    """Treat the committed snapshot as missing from now on; it is replaced (conditionally on its ETag) at commit.

    Without a baseline every listed user is new, so everyone is sent: safe, and the next run is incremental
    again. No deletion can be inferred from a damaged baseline; if this run had already compared users against
    it (possible only if damage shows after loading), it scans again from page one sending everyone.
    """
    record.baseline_damaged = problem[:300]
    progressed = (
        record.token is not None or record.phase is not Phase.SCAN or record.partial_key or record.counters.scanned
    )
    log.warning(
        "reconcile snapshot is damaged: treating it as missing (every user is sent) and replacing it at commit",
        extra={
            "key": snapshot_key,
            "etag": record.baseline_etag,
            "problem": record.baseline_damaged,
            "run_id": record.run_id,
            "rescan": bool(progressed),
        },
    )
    if progressed:
        record.full = True
        record.token = None
        record.phase = Phase.SCAN
        record.deletions_done = 0
        record.partial_key = None
