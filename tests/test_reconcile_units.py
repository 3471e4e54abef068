"""The pieces of reconcile that need no AWS: token bucket, fingerprints, the compact table, snapshots, enqueuer."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib import reconcile, snapshot
from chalicelib.reconcile import (
    Category,
    EnqueueError,
    Enqueuer,
    ReconcileError,
    RunStatus,
    RunSummary,
    TokenBucket,
    parse_request,
)
from chalicelib.reconcile.pacing import is_bad_token
from tests.support import FakeTime


def test_token_bucket_spaces_acquisitions_at_the_rate_with_a_burst_of_one() -> None:
    fake = FakeTime()
    bucket = TokenBucket(5.0, clock=fake.clock, sleep=fake.sleep)
    times = []
    for _ in range(50):
        bucket.acquire()
        times.append(fake.now)
    assert times[0] == 1000.0  # the first token is there at once
    assert times[-1] - times[0] == pytest.approx(49 / 5)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= 1 + 5.0 * (times[j] - times[i]) + 1e-9
    fake.now += 60  # idle time does not save up a burst beyond one
    bucket.acquire()
    start = fake.now
    bucket.acquire()
    assert fake.now - start == pytest.approx(0.2)


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def user(**overrides: Any) -> dict[str, Any]:
    base = {
        "Username": "alice",
        "Attributes": [{"Name": "email", "Value": "a@example.com"}, {"Name": "sub", "Value": "1-2-3"}],
        "UserStatus": "CONFIRMED",
        "Enabled": True,
        "UserLastModifiedDate": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    return {**base, **overrides}


def test_fingerprint_sees_every_field_that_matters_and_ignores_attribute_order() -> None:
    original = snapshot.fingerprint(user())
    assert snapshot.fingerprint(user(Attributes=list(reversed(user()["Attributes"])))) == original
    # the key is the username, not the fingerprint
    assert snapshot.fingerprint(user(Username="someone-else")) == original
    variants = [
        user(Attributes=[{"Name": "email", "Value": "b@example.com"}, {"Name": "sub", "Value": "1-2-3"}]),
        user(Attributes=[{"Name": "email", "Value": "a@example.com"}]),
        user(UserStatus="FORCE_CHANGE_PASSWORD"),
        user(Enabled=False),
        user(UserLastModifiedDate=dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)),
        # a value that would fool naive separator joining
        user(Attributes=[{"Name": "email", "Value": 'a@example.com","sub'}, {"Name": "x", "Value": "1-2-3"}]),
    ]
    fingerprints = {snapshot.fingerprint(v) for v in variants}
    assert len(fingerprints) == len(variants) and original not in fingerprints
    assert 0 <= original < 2**64


def test_fingerprint_table_mark_and_sweep_with_growth() -> None:
    rng = random.Random(1)
    baseline = {f"u{i}": rng.getrandbits(64) for i in range(5000)}
    table = snapshot.FingerprintTable(expected=10)  # far too small: must grow
    for name, fp in baseline.items():
        table.load(snapshot.user_key(name), fp)
    assert len(table) == 5000
    verdicts = {}
    for i, (name, fp) in enumerate(baseline.items()):
        if i % 10 == 0:
            continue  # "deleted"
        verdicts[name] = table.observe(snapshot.user_key(name), fp + 1 if i % 7 == 0 else fp)
    for i in range(100):
        verdicts[f"new{i}"] = table.observe(snapshot.user_key(f"new{i}"), i)
    assert table.observe(snapshot.user_key("new0"), 0) is snapshot.Verdict.DUPLICATE
    assert table.observe(snapshot.user_key("u1"), baseline["u1"]) is snapshot.Verdict.DUPLICATE
    counts = {v: list(verdicts.values()).count(v) for v in snapshot.Verdict}
    changed = sum(1 for i in range(5000) if i % 10 and i % 7 == 0)
    assert counts == {
        snapshot.Verdict.NEW: 100,
        snapshot.Verdict.CHANGED: changed,
        snapshot.Verdict.UNCHANGED: 4500 - changed,
        snapshot.Verdict.DUPLICATE: 0,
    }
    gone = [name for name in baseline if table.take_unseen(snapshot.user_key(name))]
    assert gone == [f"u{i}" for i in range(0, 5000, 10)]
    assert not any(table.take_unseen(snapshot.user_key(name)) for name in baseline), "each deletion is reported once"
    table.forget_marks()  # a restarted scan: what was seen becomes the baseline
    assert table.observe(snapshot.user_key("new5"), 5) is snapshot.Verdict.UNCHANGED
    assert table.observe(snapshot.user_key("u7"), baseline["u7"] + 1) is snapshot.Verdict.UNCHANGED
    assert table.nbytes / len(table) < 40


def test_snapshot_appends_members_and_reads_back_as_one_stream() -> None:
    writer = snapshot.SnapshotWriter()
    assert writer.finish() == b"" and list(snapshot.read_entries(b"")) == []
    writer.add("a@example.com", 1)
    first = writer.finish()
    for i in range(2000):
        writer.add(f"user{i}|#%/?", i * 7919)
    second = writer.finish()
    assert second.startswith(first) and writer.count == 2001
    entries = list(snapshot.read_entries(second))
    assert entries[0] == ("a@example.com", 1) and entries[-1] == ("user1999|#%/?", 1999 * 7919)
    assert len(gzip.decompress(second).splitlines()) == 2001
    resumed = snapshot.SnapshotWriter(second, writer.count)
    resumed.add("late", 2**64 - 1)
    assert list(snapshot.read_entries(resumed.finish()))[-1] == ("late", 2**64 - 1)
    assert dict(snapshot.read_entries(snapshot.write_entries([("x", 5), ("y", 6)]))) == {"x": 5, "y": 6}
    with pytest.raises(ValueError):
        writer.add("tab\tname", 1)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"plain text\n", "not a complete gzip stream after 0 entries"),
        (snapshot.write_entries([(f"u{i}", i) for i in range(3000)])[:-2000], "not a complete gzip stream after"),
        (snapshot.write_entries([("a", 1)]) + b"trailing junk", "not a complete gzip stream after 1 entries"),
        (gzip.compress(b"a\t0000000000000001\nno-tab-here\n"), "entry 2 is not username<TAB>16 hex digits"),
        (gzip.compress(b"a\t0x00000000000001\n"), "entry 1 is not username"),
        (gzip.compress(b"a\t00000000000001\n"), "entry 1 is not username"),  # 14 digits
        (gzip.compress(b"\xff\xfe\t0000000000000001\n"), "entry 1: username is not UTF-8"),
    ],
    ids=["not gzip", "truncated", "trailing junk", "no tab", "0x prefix", "14 digits", "not UTF-8"],
)
def test_damaged_snapshots_raise_snapshot_damaged_never_a_shorter_list(data: bytes, problem: str) -> None:
    with pytest.raises(snapshot.SnapshotDamaged, match=re.escape(problem)):
        list(snapshot.read_entries(data))


class CutBody:
    """A response body whose connection breaks after the first 1000 bytes, raising what botocore raises."""

    def __init__(self, data: bytes, failure: Exception) -> None:
        self.data, self.failure, self.sent = data, failure, 0

    def read(self, size: int = -1) -> bytes:
        if self.sent:
            raise self.failure
        self.sent = min(size if size and size > 0 else len(self.data), 1000)
        return self.data[: self.sent]


@pytest.mark.parametrize("failure", ["incomplete read", "read timeout"])
def test_a_network_failure_while_reading_is_not_called_damage(failure: str) -> None:
    """botocore's StreamingBody raises its own errors on a cut connection; they pass through, not as damage."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError

    data = snapshot.write_entries([(f"u{i}", i) for i in range(5000)])
    error = (
        IncompleteReadError(actual_bytes=1000, expected_bytes=len(data))
        if failure == "incomplete read"
        else ReadTimeoutError(endpoint_url="http://s3")  # an OSError subclass, too
    )
    with pytest.raises(type(error)):
        list(snapshot.read_entries(CutBody(data, error)))  # type: ignore[arg-type]


class BatchSQS:
    def __init__(self, script: list[str]) -> None:
        self.script = script  # per call: "ok", "fail-one" (retryable), "sender-fault"
        self.calls: list[list[str]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append([e["MessageBody"] for e in Entries])
        mode = self.script.pop(0) if self.script else "ok"
        if mode == "ok":
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}
        bad = Entries[0]
        ok = [{"Id": e["Id"]} for e in Entries[1:]]
        return {
            "Successful": ok,
            "Failed": [
                {
                    "Id": bad["Id"],
                    "SenderFault": mode == "sender-fault",
                    "Code": "InvalidMessageContents" if mode == "sender-fault" else "InternalError",
                }
            ],
        }


def test_enqueuer_batches_by_ten_and_retries_only_failed_entries() -> None:
    sqs = BatchSQS(["fail-one", "fail-one"])
    enqueuer = Enqueuer(sqs, "url", lambda name: name, sleep=lambda _s: None)
    for i in range(23):
        enqueuer.add(f"u{i}")
    enqueuer.flush()
    assert [len(c) for c in sqs.calls] == [10, 1, 1, 10, 3]
    assert sqs.calls[1] == ["u0"] and sqs.calls[2] == ["u0"]
    assert enqueuer.sent == 23 and enqueuer.retried == 2


def test_enqueuer_gives_up_on_persistent_and_permanent_failures() -> None:
    stuck = Enqueuer(BatchSQS(["fail-one"] * 20), "url", str, attempts=3, sleep=lambda _s: None)
    for i in range(9):
        stuck.add(f"u{i}")
    with pytest.raises(EnqueueError, match="still failing after 3 attempts"):
        stuck.add("u9")
    rejected = Enqueuer(BatchSQS(["sender-fault"]), "url", str, sleep=lambda _s: None)
    rejected.add("x")
    with pytest.raises(EnqueueError, match="rejected 1 message"):
        rejected.flush()


def test_requests_parse_scheduled_events_options_and_continuations() -> None:
    assert parse_request({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}) == (
        reconcile.ReconcileRequest()
    )
    assert parse_request(None) == reconcile.ReconcileRequest()
    assert parse_request({"full": True}).full is True
    good = parse_request({"continuation": {"run_id": "r1", "checkpoint": "reconcile/p/run.json", "invocation": 2}})
    assert good.continuation is not None and good.continuation.invocation == 2
    sam = {"id": "x", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}, "replay-name": "r"}
    assert parse_request(sam) == reconcile.ReconcileRequest(), "an EventBridge envelope may carry any other key"
    assert parse_request({"dry_run": True, "full": True}) == reconcile.ReconcileRequest(dry_run=True, full=True)
    for refused, why in (
        ({"dry-run": True}, "unknown key(s) dry-run"),
        ({"source": "me", "full": True}, "unknown key(s) source"),
        ([], "expected a JSON object, got list"),
        ({"dry_run": "maybe"}, "dry_run: Input should be a valid boolean"),
    ):
        with pytest.raises(ReconcileError, match=re.escape(why)):
            parse_request(refused)
    for bad in (
        {"run_id": "r1", "checkpoint": "elsewhere/run.json", "invocation": 2},
        {"run_id": "r1", "checkpoint": "reconcile/p/run.json", "invocation": 1},
        {"checkpoint": "reconcile/p/run.json", "invocation": 3},
    ):
        with pytest.raises(ReconcileError, match="malformed reconcile event"):
            parse_request({"continuation": bad})


def client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "ListUsers")


def test_rejected_token_errors_are_recognised_and_others_are_not() -> None:
    assert is_bad_token(client_error("InvalidToken", "Invalid Token: Resource not found!"))
    assert is_bad_token(client_error("ExpiredTokenException"))
    assert is_bad_token(client_error("InvalidParameterException", "Invalid pagination token"))
    assert not is_bad_token(client_error("InvalidParameterException", "Invalid search attribute"))
    assert not is_bad_token(client_error("TooManyRequestsException", "token bucket"))


def test_read_last_summary_is_none_before_any_run() -> None:
    class NoSummaryS3:
        def get_object(self, **_: Any) -> Any:
            raise client_error("NoSuchKey")

    assert reconcile.read_last_summary(NoSummaryS3(), "bucket") is None


def test_local_runs_have_no_deadline_and_the_margin_leaves_room_to_work() -> None:
    assert reconcile.Deadline(None).remaining() == float("inf") and not reconcile.Deadline(object()).finite

    class Context:
        def __init__(self, ms: int) -> None:
            self.ms = ms

        def get_remaining_time_in_millis(self) -> int:
            return self.ms

    assert reconcile.Deadline(Context(900_000), margin=60).margin == 60
    short = reconcile.Deadline(Context(40_000), margin=60)  # a timeout below the margin: work 3/4 of it anyway
    assert short.margin == 10 and not short.low()


def test_the_typed_summary_keeps_the_json_shape_it_was_built_with() -> None:
    """The handler's return value and last-run.json are `RunSummary.to_dict()`: only the keys that apply, no nulls
    added for the others, and a summary an earlier version stored reads back to the same JSON."""
    skipped = RunSummary(status=RunStatus.SKIPPED, reason="run r1 is in progress", pool_id="pool")
    assert skipped.to_dict() == {"status": "skipped", "reason": "run r1 is in progress", "pool_id": "pool"}
    stored = {
        "run_id": "20260101T030000Z-0a1b2c3d",
        "pool_id": "eu-west-1_abc",
        "status": "failed",
        "full": False,
        "dry_run": False,
        **{name: 0 for name in reconcile.Counters.model_fields},
        "seconds": 1.25,
        "users_per_second": None,
        "requests_per_second": None,
        "baseline_damaged": None,
        "rate_limit": 5.0,
        "started_at": "2026-01-01T03:00:00+00:00",
        "finished_at": "2026-01-01T03:00:02+00:00",
        "signins_recovered": 2,
        "error": "ClientError: GetQueueUrl failed",
    }
    summary = RunSummary.model_validate_json(json.dumps(stored))
    assert summary.status is RunStatus.FAILED and summary.error == stored["error"]
    assert summary.to_dict() == stored
    dry = RunSummary(status=RunStatus.DRY_RUN).model_copy(update={"would_enqueue": {Category.NEW: ["a"]}})
    assert json.loads(json.dumps(dry.to_dict())) == {"status": "dry_run", "would_enqueue": {"new": ["a"]}}


def test_token_bucket_takes_a_batch_at_the_rate_and_none_means_no_limit() -> None:
    fake = FakeTime()
    bucket = TokenBucket(5.0, burst=5, clock=fake.clock, sleep=fake.sleep)
    assert bucket.take(25) == pytest.approx(4.0)  # a burst of 5 at once, then 20 more at 5 a second
    assert fake.now - 1000.0 == pytest.approx(4.0)
    unlimited = TokenBucket(None, clock=fake.clock, sleep=fake.sleep)
    slept = len(fake.slept)
    assert unlimited.take(1000) == 0.0 and unlimited.acquire() == 0.0 and len(fake.slept) == slept
    with pytest.raises(ValueError):
        TokenBucket(-1.0)
