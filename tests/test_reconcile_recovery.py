"""reconcile recovers by itself: a damaged snapshot or checkpoint never wedges it, and every failed run is recorded.

Driven through `app.reconcile` (the Chalice-wrapped handler Lambda calls) over moto and its real queue, or through
`handle_scheduled_event` (what that handler calls) where a test needs continuations or a fault on one S3 read.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from chalice.local import LambdaContext

from chalicelib import reconcile
from chalicelib.reconcile import SNAPSHOT_FORMAT, RunSummary, read_last_complete, read_last_summary
from chalicelib.settings import reset_settings
from chalicelib.snapshot import read_entries, write_entries
from tests.test_reconcile import BUCKET, FakeContext, Harness, budget, build_harness, exactly_once, scheduled_event
from tests.test_reconcile_invoke import drain
from userhub_sync.local.moto import patched_environ


@pytest.fixture
def harness(aws) -> Iterator[Harness]:
    yield from build_harness()


def call_app(event: dict[str, Any]) -> dict[str, Any]:
    """`app.reconcile` as Lambda calls it (chalice's local context; no deadline outside Lambda)."""
    import app

    reconcile.reset_clients()
    try:
        return app.reconcile(event, LambdaContext("reconcile", 1024))
    finally:
        reconcile.reset_clients()


def stored(harness: Harness, read: Callable[[Any, str], RunSummary | None]) -> dict[str, Any] | None:
    """A summary stored in the bucket, as the JSON object the handler returned."""
    summary = read(harness.s3, BUCKET)
    return summary.to_dict() if summary else None


def snapshot_key(harness: Harness) -> str:
    return f"reconcile/{harness.pool.id}/snapshot.gz"


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def damage(kind: str, good: bytes, users: int) -> tuple[bytes, dict[str, str]]:
    """A damaged snapshot body and its metadata, one kind of damage each."""
    metadata = {"format": SNAPSHOT_FORMAT, "users": str(users)}
    entries = list(read_entries(good))
    if kind == "not gzip":
        return b"username\tnot compressed at all\n", metadata
    if kind == "truncated mid-stream":
        return good[: len(good) // 2], metadata
    if kind == "entries do not parse":
        return gzip.compress(b"".join(f"{n}\t{fp:x}z\n".encode() for n, fp in entries)), metadata
    if kind == "wrong format marker":
        return good, {**metadata, "format": "userhub-sync-snapshot-v0"}
    if kind == "cut at a gzip member boundary":  # a valid gzip file, just shorter than its metadata says
        return write_entries(entries[: len(entries) // 2]), metadata
    raise AssertionError(kind)


DAMAGE = (
    "not gzip",
    "truncated mid-stream",
    "entries do not parse",
    "wrong format marker",
    "cut at a gzip member boundary",
)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_snapshot_gives_a_full_run_that_replaces_it(
    harness: Harness, aws, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    names = harness.pool.seed(130)
    first = call_app(scheduled_event())
    assert first["status"] == "complete" and exactly_once(drain(aws)) == set(names)
    key = snapshot_key(harness)
    good = harness.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    body, metadata = damage(kind, good, 130)
    harness.s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=metadata)
    harness.pool.delete(names[:2])
    harness.pool.change(names[2:4])
    capsys.readouterr()

    summary = call_app(scheduled_event())

    assert summary["status"] == "complete" and summary["baseline_damaged"]
    assert exactly_once(drain(aws)) == set(names[2:]), "the baseline counts as missing: every user is sent"
    assert (summary["new"], summary["deleted"], summary["enqueued"]) == (128, 0, 128), "no deletion from a wreck"
    assert harness.snapshot() == harness.expected_snapshot(), "the damaged snapshot was replaced"
    [warning] = [e for e in log_lines(capsys.readouterr().err) if "snapshot is damaged" in e["message"]]
    assert warning["level"] == "WARNING" and warning["key"] == key and warning["problem"]
    assert stored(harness, read_last_summary) == summary == stored(harness, read_last_complete)

    after = call_app(scheduled_event())  # incremental again
    assert (after["status"], after["enqueued"], after["baseline_damaged"]) == ("complete", 0, None)
    assert drain(aws) == []


def test_a_damaged_snapshot_is_skipped_by_every_invocation_of_a_continued_run(harness: Harness) -> None:
    names = harness.pool.seed(600)  # 10 pages
    harness.run()
    harness.sqs.take()
    key = snapshot_key(harness)
    harness.s3.put_object(Bucket=BUCKET, Key=key, Body=b"\x1f\x8b garbage", Metadata={"format": SNAPSHOT_FORMAT})
    harness.pool.delete(names[:5])

    summaries = harness.run(pages_per_invocation=3)

    assert [s["status"] for s in summaries] == ["continued"] * 3 + ["complete"]
    assert all(s["baseline_damaged"] for s in summaries)
    assert exactly_once(harness.sqs.take()) == set(names[5:])
    assert summaries[-1]["deleted"] == 0
    assert harness.snapshot() == harness.expected_snapshot() and harness.record() is None
    [again] = harness.run()
    assert again["enqueued"] == 0 and again["unchanged"] == 595


def test_damage_found_only_by_the_sweep_rescans_without_losing_or_inventing_anyone(harness: Harness) -> None:
    """A snapshot read lazily can turn out damaged after the scan compared users with it: scan again, send all."""
    names = harness.pool.seed(300)
    harness.run()
    harness.sqs.take()
    key = snapshot_key(harness)
    good = harness.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    deleted = [names[10], names[20], names[290]]  # early ones are swept before the damage, the last one is not
    harness.pool.delete(deleted)
    harness.pool.change(names[30:32])
    reads: list[str] = []

    def truncate_the_second_read(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        # Real S3 returns the same bytes for the same ETag; this simulates a baseline that is only found damaged
        # late (a lazily streamed snapshot) by cutting the sweep's read of it short.
        if key in http_response.url:
            reads.append(http_response.url)
            if len(reads) == 2:
                parsed["Body"] = _Reader(good[: len(good) * 2 // 3])

    harness.s3.meta.events.register("after-call.s3.GetObject", truncate_the_second_read)
    try:
        [summary] = harness.run()
    finally:
        harness.s3.meta.events.unregister("after-call.s3.GetObject", truncate_the_second_read)

    assert len(reads) == 2 and summary["status"] == "complete" and summary["baseline_damaged"]
    assert summary["full"] is True and summary["scanned"] == 297 * 2, "scanned again from page one"
    sent = harness.sqs.take()
    assert set(sent) >= set(names) - set(deleted), "every user is sent after the rescan"
    invented = set(sent) - set(names)
    assert not invented
    swept = {n for n in sent if n in deleted}
    assert swept <= set(deleted) and summary["deleted"] == len(swept) == 2, "only users really gone were swept"
    assert harness.snapshot() == harness.expected_snapshot() and harness.record() is None


class _Reader:
    """A file-like body for the injected read (what botocore's StreamingBody offers gzip: read)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size is None or size < 0 else size
        chunk, self._data = bytes(self._data[:size]), self._data[size:]
        return chunk


def test_a_damaged_checkpoint_fails_once_then_the_next_run_starts_afresh(harness: Harness) -> None:
    names = harness.pool.seed(600)
    first = harness.invoke(scheduled_event(), budget(3))
    assert first["status"] == "continued"
    continuation = harness.continued.pop()
    record = harness.record()
    assert record is not None and record["partial_key"]
    harness.s3.put_object(Bucket=BUCKET, Key=record["partial_key"], Body=b"not a checkpoint")

    with pytest.raises(reconcile.CheckpointUnreadable, match="partial"):
        harness.invoke(continuation, FakeContext())
    failed = read_last_summary(harness.s3, BUCKET)
    assert failed is not None and failed.status == "failed" and "CheckpointUnreadable" in (failed.error or "")
    assert failed.run_id == first["run_id"]
    assert harness.record() is None, "the unusable run is discarded, not adopted forever"

    [summary] = harness.run()
    assert summary["status"] == "complete" and summary["run_id"] != first["run_id"]
    assert set(harness.sqs.take()) == set(names)


def test_every_failed_run_is_recorded_next_to_the_last_complete_one(harness: Harness, aws) -> None:
    names = harness.pool.seed(40)
    complete = call_app(scheduled_event())
    assert complete["status"] == "complete" and len(drain(aws)) == 40
    harness.pool.change(names[:3])

    with patched_environ({"EVENTS_QUEUE_NAME": "no-such-queue"}):  # fails while claiming, before any page
        reset_settings()
        with pytest.raises(ClientError) as caught:
            call_app(scheduled_event())
    reset_settings()
    code = caught.value.response["Error"]["Code"]
    assert code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
    failed = read_last_summary(harness.s3, BUCKET)
    assert failed is not None and failed.status == "failed" and failed.run_id
    assert "GetQueueUrl" in (failed.error or "") and "does not exist" in (failed.error or "")
    assert stored(harness, read_last_complete) == complete

    def crash(**_: Any) -> None:
        raise RuntimeError("injected: Cognito unreachable")

    harness.cognito.meta.events.register("before-send.cognito-identity-provider.ListUsers", crash)
    with pytest.raises(RuntimeError):
        harness.invoke()  # fails mid-run: adopts the released run, then the first page fails
    harness.cognito.meta.events.unregister("before-send.cognito-identity-provider.ListUsers", crash)
    assert "injected: Cognito unreachable" in (read_last_summary(harness.s3, BUCKET).error or "")  # type: ignore[union-attr]

    retry = call_app(scheduled_event())
    assert retry["status"] == "complete" and set(drain(aws)) == set(names[:3])
    assert stored(harness, read_last_summary) == retry == stored(harness, read_last_complete)
