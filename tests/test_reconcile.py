"""reconcile against moto over real HTTP: exact sets of users enqueued, across continuations, restarts and crashes.

Pools are seeded through moto's backend (creating 5k users through the API would take a minute). Most tests read the
messages back from a capturing SQS stand-in, because moto's SQS slows down with depth; one test goes through the real
queue and `app.reconcile`, as Lambda would call it.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.cognitoidp.models import cognitoidp_backends

from chalicelib import reconcile
from chalicelib.messages import EventType, Source, parse_message
from chalicelib.reconcile import Deps, handle_scheduled_event, make_cognito_client, read_last_summary
from chalicelib.settings import get_settings, reset_settings
from chalicelib.snapshot import fingerprint, read_entries
from tests.support import CONNECTION_ID
from userhub_sync.local.moto import DEFAULT_REGION, MOTO_ACCOUNT, patched_environ

BUCKET = "test-snapshots"
MARGIN_S = 60.0  # the default RECONCILE_TIME_MARGIN_SECONDS


# --------------------------------------------------------------------------------------------- fakes


@dataclass
class FakeContext:
    """A Lambda context whose remaining time the test controls (ListUsers attempts and calls can burn it)."""

    remaining_s: float = 900.0
    per_call_s: float = 0.0  # burnt by each look at the remaining time
    per_page_s: float = 0.0  # burnt by each ListUsers attempt (the harness's hook)
    function_name: str = "userhub-sync-dev-reconcile"
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def get_remaining_time_in_millis(self) -> int:
        value = int(self.remaining_s * 1000)
        self.remaining_s -= self.per_call_s
        return value


def budget(pages: int, **kwargs: Any) -> FakeContext:
    """A 900 s context that drops under the time margin after exactly `pages` ListUsers attempts."""
    return FakeContext(900.0, per_page_s=(900.0 - MARGIN_S + 5) / pages, **kwargs)


class CapturingSQS:
    """SendMessageBatch recorded instead of sent (moto's SQS is O(depth)); failures injectable."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.calls = 0
        self.crash_on_call: int | None = None  # raise on this call number (1-based)
        self.fail_entries: int = 0  # report this many entries as Failed (ServiceUnavailable), one per call

    @property
    def usernames(self) -> list[str]:
        return [m["username"] for m in self.messages]

    def get_queue_url(self, QueueName: str) -> dict[str, str]:
        return {"QueueUrl": f"https://sqs.test/{QueueName}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls += 1
        assert 1 <= len(Entries) <= 10, "SendMessageBatch takes at most 10 entries"
        if self.crash_on_call == self.calls:
            raise ConnectionError("injected: SQS unreachable")
        ok, failed = [], []
        for entry in Entries:
            if self.fail_entries and not failed:
                self.fail_entries -= 1
                failed.append({"Id": entry["Id"], "SenderFault": False, "Code": "ServiceUnavailable"})
                continue
            self.messages.append(json.loads(entry["MessageBody"]))
            ok.append({"Id": entry["Id"], "MessageId": uuid.uuid4().hex})
        return {"Successful": ok, "Failed": failed}

    def take(self) -> list[str]:
        names = self.usernames
        self.messages.clear()
        return names


class Pool:
    """A moto user pool whose users the test seeds and edits straight in the backend (O(1) per user)."""

    def __init__(self, pool_id: str) -> None:
        self.id = pool_id
        self.backend = cognitoidp_backends[MOTO_ACCOUNT][DEFAULT_REGION]

    @property
    def users(self) -> dict[str, Any]:
        return self.backend.user_pools[self.id].users

    def names(self) -> set[str]:
        return set(self.users)

    def add(self, names: list[str]) -> None:
        for name in names:
            self.backend.admin_create_user(
                self.id,
                name,
                None,
                None,
                [{"Name": "email", "Value": name}, {"Name": "name", "Value": f"User {name.split('@')[0]}"}],
            )

    def seed(self, count: int, prefix: str = "user") -> list[str]:
        names = [f"{prefix}{i:05d}@example.com" for i in range(count)]
        self.add(names)
        return names

    def change(self, names: list[str]) -> None:
        for name in names:
            self.users[name].update_attributes([{"Name": "name", "Value": f"Changed {uuid.uuid4().hex[:6]}"}])

    def delete(self, names: list[str]) -> None:
        for name in names:
            self.backend.admin_delete_user(self.id, name)

    def by_internal_id(self, internal_id: str) -> str:
        return next(name for name, user in self.users.items() if user.id == internal_id)


def scheduled_event() -> dict[str, Any]:
    """What EventBridge sends for a Cron rule (Chalice's CloudWatchEvent.to_dict() gives it back unchanged)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": MOTO_ACCOUNT,
        "time": "2026-01-01T03:00:00Z",
        "region": DEFAULT_REGION,
        "resources": [f"arn:aws:events:{DEFAULT_REGION}:{MOTO_ACCOUNT}:rule/userhub-sync-dev-reconcile-event"],
        "detail": {},
    }


def moto_token_target(token: str) -> str:
    """moto's page token names the internal id of the first user of the next page."""
    padded = token + "=" * (-len(token) % 4)
    return json.loads(base64.b64decode(padded))["uniqueAttributes"]


def throttle_response() -> AWSResponse:
    """A fabricated Cognito 400 TooManyRequestsException: botocore's real retry machinery handles it."""
    body = json.dumps({"__type": "TooManyRequestsException", "message": "Too many requests"}).encode()

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    return AWSResponse(
        "https://cognito-idp.test/",
        400,
        {"x-amzn-ErrorType": "TooManyRequestsException:", "Content-Type": "application/x-amz-json-1.1"},
        Raw(),
    )


@dataclass
class Clock:
    """Wall clock for leases, which a test can move forward."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Harness:
    pool: Pool
    cognito: Any
    s3: Any
    sqs: CapturingSQS = field(default_factory=CapturingSQS)
    continued: list[dict[str, Any]] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)
    context: FakeContext | None = None
    list_calls: int = 0
    after_page: Callable[[int, dict[str, Any]], None] | None = None

    def deps(self) -> Deps:
        return Deps(cognito=self.cognito, sqs=self.sqs, s3=self.s3, continuer=self.continued.append, clock=self.clock)

    def invoke(self, event: dict[str, Any] | None = None, context: FakeContext | None = None) -> dict[str, Any]:
        self.context = context or FakeContext()
        return handle_scheduled_event(event or scheduled_event(), self.context, deps=self.deps())

    def run(
        self, pages_per_invocation: int | None = None, event: dict[str, Any] | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Drive a run as Lambda would: each continuation payload the run emits becomes the next invocation."""
        summaries: list[dict[str, Any]] = []
        event = event or scheduled_event()
        for _ in range(limit):
            context = FakeContext() if pages_per_invocation is None else budget(pages_per_invocation)
            summaries.append(self.invoke(event, context))
            if not self.continued:
                return summaries
            assert len(self.continued) == 1
            event = self.continued.pop()
        raise AssertionError("run did not finish")

    def snapshot(self) -> dict[str, int]:
        body = self.s3.get_object(Bucket=BUCKET, Key=f"reconcile/{self.pool.id}/snapshot.gz")["Body"].read()
        return dict(read_entries(body))

    def snapshot_etag(self) -> str | None:
        try:
            return self.s3.head_object(Bucket=BUCKET, Key=f"reconcile/{self.pool.id}/snapshot.gz")["ETag"]
        except self.s3.exceptions.ClientError:
            return None

    def record(self) -> dict[str, Any] | None:
        try:
            obj = self.s3.get_object(Bucket=BUCKET, Key=f"reconcile/{self.pool.id}/run.json")
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read())

    def expected_snapshot(self) -> dict[str, int]:
        """What one uninterrupted scan of the pool sees now, computed independently of reconcile."""
        plain = boto3.client("cognito-idp")
        pages = plain.get_paginator("list_users").paginate(UserPoolId=self.pool.id, PaginationConfig={"PageSize": 60})
        return {u["Username"]: fingerprint(u) for page in pages for u in page["Users"]}


@pytest.fixture
def harness(aws) -> Iterator[Harness]:
    """A fresh moto (queues from `aws`), the snapshot bucket, an empty pool, and RECONCILE_RATE_LIMIT=30."""
    yield from build_harness()


def build_harness() -> Iterator[Harness]:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    pool_id = boto3.client("cognito-idp").create_user_pool(PoolName="reconcile-test")["UserPool"]["Id"]
    with patched_environ({"USER_POOL_ID": pool_id, "RECONCILE_RATE_LIMIT": "30", "USERHUB_SYNC_METRICS": "off"}):
        reset_settings()
        cognito = make_cognito_client()
        harness = Harness(Pool(pool_id), cognito, s3)

        def burn(**_: Any) -> None:
            if harness.context is not None:
                harness.context.remaining_s -= harness.context.per_page_s

        def watch(parsed: dict[str, Any], **_: Any) -> None:
            harness.list_calls += 1
            if harness.after_page is not None:
                harness.after_page(harness.list_calls, parsed)

        cognito.meta.events.register("before-send.cognito-identity-provider.ListUsers", burn)
        cognito.meta.events.register("after-call.cognito-identity-provider.ListUsers", watch)
        yield harness
    reset_settings()


def check_messages(messages: list[dict[str, Any]], pool_id: str) -> None:
    for message in messages:
        parsed = parse_message(json.dumps(message))
        assert parsed.type is EventType.CHANGED and parsed.source is Source.RECONCILE
        assert parsed.user_pool_id == pool_id and parsed.connection_id == CONNECTION_ID


def mutate(pool: Pool, names: list[str], seed: int = 7) -> dict[str, set[str]]:
    """Change 1 %, delete 0.5 % and add 0.5 % of the pool; returns who is in which category."""
    rng = random.Random(seed)
    picked = rng.sample(sorted(names), len(names) // 100 + len(names) // 200)
    changed, deleted = picked[: len(names) // 100], picked[len(names) // 100 :]
    added = [f"new{seed}-{i:04d}@example.com" for i in range(len(names) // 200)]
    pool.change(changed)
    pool.delete(deleted)
    pool.add(added)
    return {"changed": set(changed), "deleted": set(deleted), "new": set(added)}


def exactly_once(names: list[str]) -> set[str]:
    duplicates = [n for n, k in Counter(names).items() if k > 1]
    assert not duplicates, f"sent more than once: {duplicates[:5]}"
    return set(names)


# --------------------------------------------------------------------------------------------- 5k-user pools


def test_first_run_enqueues_everyone_then_only_new_changed_and_deleted(harness: Harness) -> None:
    names = harness.pool.seed(5000)
    [first] = harness.run()
    assert exactly_once(harness.sqs.usernames) == set(names)
    check_messages(harness.sqs.messages, harness.pool.id)
    assert (first["status"], first["scanned"], first["new"], first["enqueued"], first["pages"]) == (
        "complete",
        5000,
        5000,
        5000,
        84,
    )
    assert set(harness.snapshot()) == set(names)
    assert harness.record() is None, "a finished run leaves no run record behind"
    harness.sqs.take()

    delta = mutate(harness.pool, names)
    assert [len(delta[k]) for k in ("changed", "deleted", "new")] == [50, 25, 25]
    [second] = harness.run()
    sent = exactly_once(harness.sqs.take())
    assert sent == delta["changed"] | delta["deleted"] | delta["new"]
    assert {k: second[k] for k in ("scanned", "new", "changed", "deleted", "unchanged", "enqueued")} == {
        "scanned": 5000,
        "new": 25,
        "changed": 50,
        "deleted": 25,
        "unchanged": 4925,
        "enqueued": 100,
    }
    assert read_last_summary(harness.s3, BUCKET).to_dict() == second  # type: ignore[union-attr]

    [third] = harness.run()  # the committed snapshot agrees with what ListUsers says now
    assert harness.sqs.take() == [] and third["enqueued"] == 0 and third["unchanged"] == 5000


def test_three_continuations_give_the_same_result_as_one_run(harness: Harness) -> None:
    names = harness.pool.seed(5000)
    harness.run()
    harness.sqs.take()
    delta = mutate(harness.pool, names, seed=11)

    summaries = harness.run(pages_per_invocation=25)  # 84 pages: 25 + 25 + 25 + 9
    assert [s["status"] for s in summaries] == ["continued", "continued", "continued", "complete"]
    assert len({s["run_id"] for s in summaries}) == 1
    last = summaries[-1]
    assert (last["invocations"], last["pages"], last["scanned"], last["deleted"]) == (4, 84, 5000, 25)
    assert exactly_once(harness.sqs.take()) == delta["changed"] | delta["deleted"] | delta["new"]
    assert harness.snapshot() == harness.expected_snapshot(), "committed exactly what one scan sees"


def test_page_token_rejected_mid_scan_restarts_without_resending(harness: Harness) -> None:
    names = harness.pool.seed(5000)
    harness.run()
    harness.sqs.take()
    delta = mutate(harness.pool, names, seed=3)
    victims: list[str] = []

    def delete_next_page_owner(call: int, parsed: dict[str, Any]) -> None:
        if call == 30 and parsed.get("PaginationToken"):  # the user the token points at disappears
            victims.append(harness.pool.by_internal_id(moto_token_target(parsed["PaginationToken"])))
            harness.pool.delete(victims[-1:])

    harness.list_calls = 0
    harness.after_page = delete_next_page_owner
    [summary] = harness.run()
    assert summary["restarts"] == 1 and summary["status"] == "complete"
    expected = delta["changed"] | delta["deleted"] | delta["new"] | set(victims)
    assert exactly_once(harness.sqs.take()) == expected, "users compared before the restart are not sent again"
    assert harness.snapshot() == harness.expected_snapshot()


def test_checkpoint_token_turned_invalid_resumes_from_checkpoint_not_zero(harness: Harness) -> None:
    names = harness.pool.seed(5000)
    event: dict[str, Any] = scheduled_event()
    first = harness.invoke(event, budget(30))
    assert first["status"] == "continued" and first["enqueued"] == 30 * 60
    token = harness.record()["token"]  # type: ignore[index]
    victim = harness.pool.by_internal_id(moto_token_target(token))
    early = names[5]  # seen (and sent as new) before the checkpoint, then deleted
    harness.pool.delete([victim, early])  # the saved token now points at nobody: moto answers InvalidToken

    # the restarted pass itself spans invocations, so the state folded in by the restart must survive a checkpoint
    summaries = harness.run(pages_per_invocation=40, event=harness.continued.pop())
    assert [s["status"] for s in summaries] == ["continued", "continued", "complete"]
    last = summaries[-1]
    assert (last["restarts"], last["deleted"], last["invocations"]) == (1, 1, 4)
    assert last["scanned"] == 1800 + 4998, "the second pass re-read the pool..."
    sent = Counter(harness.sqs.take())
    assert set(sent) == set(names) - {victim}
    assert {n: k for n, k in sent.items() if k > 1} == {early: 2}, "...but re-sent only the deleted user"
    assert harness.snapshot() == harness.expected_snapshot()


def test_throttling_is_retried_and_the_request_rate_stays_under_the_limit(harness: Harness) -> None:
    harness.pool.seed(5000)
    rate = 25.0
    sent_at: list[float] = []
    throttled: list[int] = []

    def record_and_throttle(**_: Any) -> AWSResponse | None:
        sent_at.append(time.monotonic())
        attempt = len(sent_at)
        if attempt in (5, 6) or attempt % 40 == 0:  # one page throttled twice in a row, then every 40th attempt
            throttled.append(attempt)
            return throttle_response()
        return None

    # registered last: after the run's token bucket, so we time what it let through
    harness.cognito.meta.events.register_last("before-send.cognito-identity-provider.ListUsers", record_and_throttle)
    with patched_environ({"RECONCILE_RATE_LIMIT": str(rate)}):
        reset_settings()
        [summary] = harness.run()
    assert exactly_once(harness.sqs.usernames) == harness.pool.names()
    assert summary["throttles"] == len(throttled) >= 4
    assert summary["requests"] == len(sent_at) == 84 + len(throttled)
    worst = max(
        (j - i + 1) - (rate * (sent_at[j] - sent_at[i]) + 1)
        for i in range(len(sent_at))
        for j in range(i, len(sent_at))
    )
    # Requests are whole: an excess under one request is the scheduler's jitter between the bucket's decision and
    # this hook's timestamp (seen at 0.2005 on a loaded machine), a whole request more would be the limiter failing.
    assert worst < 1, f"a request more than rate·t + 1 (burst) in some window: excess {worst:.2f}"
    overall = (len(sent_at) - 1) / (sent_at[-1] - sent_at[0])
    assert overall <= rate, overall


def test_the_pager_paces_only_while_its_run_lasts(harness: Harness) -> None:
    """A warm container keeps its Cognito client; a finished run must leave no hook (or stale bucket) on it."""
    harness.pool.seed(130)  # 3 pages
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    deps = Deps(cognito=harness.cognito, sqs=harness.sqs, s3=harness.s3, sleep=sleep)
    with patched_environ({"RECONCILE_RATE_LIMIT": "2"}):
        reset_settings()
        first = reconcile.run_reconcile(reconcile.ReconcileRequest(), deps=deps)
        assert (first.summary.requests, first.summary.pages) == (3, 3) and waits, "paced at 2 requests/s"
        waits.clear()
        for _ in range(3):
            harness.cognito.list_users(UserPoolId=harness.pool.id, Limit=1)
        assert waits == [], "after the run, the client's own ListUsers calls wait for no bucket"
        again = reconcile.run_reconcile(reconcile.ReconcileRequest(), deps=deps)
    reset_settings()
    assert (again.summary.requests, again.summary.enqueued) == (3, 0), "each run counts its own requests"


def test_crash_before_the_snapshot_is_written_loses_nothing(harness: Harness) -> None:
    names = harness.pool.seed(5000)
    harness.run()
    harness.sqs.take()
    committed = harness.snapshot_etag()
    delta = mutate(harness.pool, names, seed=5)
    expected = delta["changed"] | delta["deleted"] | delta["new"]

    def crash_on_snapshot_put(request: Any, **_: Any) -> None:
        if request.method == "PUT" and "snapshot.gz" in request.url:
            raise RuntimeError("injected crash while writing the snapshot")

    harness.s3.meta.events.register("before-send.s3.PutObject", crash_on_snapshot_put)
    with pytest.raises(RuntimeError, match="injected crash"):
        harness.run()
    harness.s3.meta.events.unregister("before-send.s3.PutObject", crash_on_snapshot_put)
    assert set(harness.sqs.take()) == expected
    assert harness.snapshot_etag() == committed, "the old snapshot is still the committed one"
    assert read_last_summary(harness.s3, BUCKET).status == "failed"  # type: ignore[union-attr]

    [retry] = harness.run()  # adopts the released run and finds the same work again
    assert retry["status"] == "complete" and retry["invocations"] == 2
    assert exactly_once(harness.sqs.take()) == expected, "at worst sent twice, never lost"
    assert harness.snapshot_etag() != committed and harness.record() is None


# --------------------------------------------------------------------------------------------- small pools


def test_crash_mid_scan_resumes_from_the_last_checkpoint(harness: Harness) -> None:
    names = harness.pool.seed(1200)  # 20 pages
    event = scheduled_event()
    first = harness.invoke(event, budget(8))
    assert first["status"] == "continued" and first["enqueued"] == 480
    continuation = harness.continued.pop()
    harness.sqs.crash_on_call = harness.sqs.calls + 30  # dies 300 messages into invocation 2
    with pytest.raises(ConnectionError):
        harness.invoke(continuation, FakeContext())
    assert len(harness.sqs.usernames) == 480 + 290
    harness.sqs.crash_on_call = None
    # Lambda retries the same async event: the lease was released, so it resumes from checkpoint 1
    summaries = harness.run(event=continuation)
    assert summaries[-1]["status"] == "complete"
    sent = Counter(harness.sqs.take())
    assert set(sent) == set(names)
    assert {n for n, k in sent.items() if k > 1} <= set(names[480:770]), "only the lost invocation's work repeats"


def test_hard_timeout_keeps_the_lease_until_it_expires(harness: Harness) -> None:
    names = harness.pool.seed(600)

    class LambdaTimeout(BaseException):
        """What Lambda does at the deadline: no except clause runs."""

    def die(call: int, parsed: dict[str, Any]) -> None:
        if call == 4:
            raise LambdaTimeout

    harness.after_page = die
    event = scheduled_event()
    with pytest.raises(LambdaTimeout):
        harness.invoke(event, FakeContext(300))
    harness.after_page = None
    assert harness.invoke(event)["status"] == "skipped", "a retry inside the dead invocation's lease waits"
    harness.clock.offset = 400  # past its deadline plus slack
    retry = harness.invoke(event)
    assert retry["status"] == "complete" and retry["invocations"] == 2
    assert set(harness.sqs.usernames) == set(names)
    assert len(harness.sqs.usernames) == 600 + 180, "only the dead invocation's three pages were sent twice"


def test_a_second_scheduled_run_while_one_is_in_progress_changes_nothing(harness: Harness) -> None:
    names = harness.pool.seed(600)
    first = harness.invoke(scheduled_event(), budget(3))
    assert first["status"] == "continued"
    before = harness.record()
    continuation = harness.continued.pop()

    second = harness.invoke(scheduled_event())
    assert second["status"] == "skipped" and first["run_id"] in second["reason"]
    assert harness.record() == before and harness.continued == []

    summaries = harness.run(event=continuation)
    assert summaries[-1]["status"] == "complete" and summaries[-1]["run_id"] == first["run_id"]
    assert exactly_once(harness.sqs.take()) == set(names)
    again = harness.invoke(continuation)  # a late duplicate of the async invocation
    assert again["status"] == "skipped" and harness.sqs.usernames == []


def test_racing_claims_let_exactly_one_invocation_own_the_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = harness.pool.seed(180)
    assert harness.invoke(scheduled_event(), budget(1))["status"] == "continued"
    store = reconcile.StateStore(harness.s3, BUCKET, harness.pool.id)
    record, etag = store.read_record()
    assert record is not None and etag
    with pytest.raises(reconcile.LeaseConflict):
        store.write_record(record, None)  # create-if-absent loses to the existing record
    with pytest.raises(reconcile.LeaseConflict):
        store.write_record(record, '"an-etag-someone-else-replaced"')
    # an invocation that read "no run" just before another one created it loses the conditional create
    monkeypatch.setattr(reconcile.StateStore, "read_record", lambda self: (None, None))
    raced = harness.invoke(scheduled_event())
    assert raced["status"] == "skipped" and "claimed the run first" in raced["reason"]
    monkeypatch.undo()
    assert store.read_record() == (record, etag), "the loser wrote nothing"
    summaries = harness.run(event=harness.continued.pop())
    assert summaries[-1]["status"] == "complete"
    assert exactly_once(harness.sqs.take()) == set(names)


def test_deletions_continue_across_invocations(harness: Harness) -> None:
    names = harness.pool.seed(320)
    harness.run()
    harness.sqs.take()
    gone = names[100:300]
    harness.pool.delete(gone)
    summaries: list[dict[str, Any]] = []
    event = scheduled_event()
    for _ in range(10):  # every look at the clock costs 84 s: invocation 1 reads 2 pages and sweeps 70 deletions
        summaries.append(harness.invoke(event, FakeContext(900, per_call_s=84)))
        if not harness.continued:
            break
        event = harness.continued.pop()
    assert [s["status"] for s in summaries] == ["continued", "continued", "complete"]
    assert exactly_once(harness.sqs.take()) == set(gone)
    assert summaries[-1]["deleted"] == 200 and summaries[-1]["pages"] == 2
    assert set(harness.snapshot()) == set(names) - set(gone)


def test_max_invocations_stops_the_chain_and_the_next_run_adopts_it(harness: Harness) -> None:
    names = harness.pool.seed(600)
    with patched_environ({"RECONCILE_MAX_INVOCATIONS": "2"}):
        reset_settings()
        summaries = harness.run(pages_per_invocation=3)
    assert [s["status"] for s in summaries] == ["continued", "stopped"]
    assert read_last_summary(harness.s3, BUCKET).status == "stopped"  # type: ignore[union-attr]
    reset_settings()
    [adopted] = harness.run()
    assert adopted["status"] == "complete" and adopted["run_id"] == summaries[0]["run_id"]
    assert exactly_once(harness.sqs.take()) == set(names)


def test_full_run_resends_everyone_and_still_reports_deletions(harness: Harness) -> None:
    names = harness.pool.seed(300)
    harness.run()
    harness.sqs.take()
    harness.pool.delete(names[:3])
    harness.pool.change(names[3:5])
    [summary] = harness.run(event={**scheduled_event(), "full": True})
    assert exactly_once(harness.sqs.take()) == set(names)
    assert (summary["deleted"], summary["changed"], summary["unchanged"], summary["enqueued"]) == (3, 2, 295, 300)


def test_dry_run_reports_by_category_and_writes_nothing(harness: Harness) -> None:
    names = harness.pool.seed(300)
    harness.run()
    harness.sqs.take()
    etag, last = harness.snapshot_etag(), read_last_summary(harness.s3, BUCKET)
    harness.pool.delete(names[:2])
    harness.pool.change(names[2:5])
    harness.pool.add(["fresh@example.com"])
    result = reconcile.run_reconcile(reconcile.ReconcileRequest(dry_run=True), deps=harness.deps())
    assert result.status == "dry_run"
    assert {k: set(v) for k, v in result.planned.items()} == {
        "deleted": set(names[:2]),
        "changed": set(names[2:5]),
        "new": {"fresh@example.com"},
    }
    assert result.summary.enqueued == 0 and harness.sqs.usernames == []
    assert harness.snapshot_etag() == etag and read_last_summary(harness.s3, BUCKET) == last
    assert harness.record() is None


def test_failed_entries_are_retried_and_a_persistent_failure_fails_the_run(harness: Harness) -> None:
    names = harness.pool.seed(100)
    harness.sqs.fail_entries = 3
    [summary] = harness.run()
    assert exactly_once(harness.sqs.take()) == set(names) and summary["enqueued"] == 100

    harness.pool.change(names[:5])
    harness.sqs.fail_entries = 10_000
    with pytest.raises(reconcile.EnqueueError):
        reconcile.run_reconcile(
            reconcile.ReconcileRequest(),
            deps=Deps(cognito=harness.cognito, sqs=harness.sqs, s3=harness.s3, sleep=lambda _s: None),
        )
    harness.sqs.fail_entries = 0
    [retry] = harness.run()
    assert set(harness.sqs.take()) == set(names[:5]) and retry["changed"] == 5


def test_scheduled_handler_through_app_and_the_real_queue(harness: Harness, aws) -> None:
    from chalice.local import LambdaContext

    import app

    names = harness.pool.seed(130)
    reconcile.reset_clients()
    try:
        # chalice's local context allows 3 s; outside Lambda there is no limit and nothing to continue in
        summary = app.reconcile(scheduled_event(), LambdaContext("reconcile", 1024))
    finally:
        reconcile.reset_clients()
    assert summary["status"] == "complete" and summary["enqueued"] == 130
    received: list[dict[str, Any]] = []
    while True:
        got = aws.sqs.receive_message(QueueUrl=aws.queues.events_url, MaxNumberOfMessages=10, VisibilityTimeout=60).get(
            "Messages", []
        )
        if not got:
            break
        received += [json.loads(m["Body"]) for m in got]
    check_messages(received, harness.pool.id)
    assert exactly_once([m["username"] for m in received]) == set(names)
    assert read_last_summary(harness.s3, BUCKET).to_dict() == summary  # type: ignore[union-attr]
    stored = harness.s3.get_object(Bucket=BUCKET, Key=f"reconcile/{harness.pool.id}/snapshot.gz")
    assert stored["Metadata"]["users"] == "130" and len(gzip.decompress(stored["Body"].read()).splitlines()) == 130


def test_continuation_name_comes_from_the_function_and_can_be_overridden(harness: Harness) -> None:
    settings = get_settings()
    for running in ("userhub-sync-dev-reconcile", "userhub-sync-dev-reconcile_continue"):
        context = FakeContext(function_name=running)
        assert reconcile.continue_function_name(context, settings) == "userhub-sync-dev-reconcile_continue"
    with pytest.raises(reconcile.ReconcileError, match="RECONCILE_CONTINUE_FUNCTION"):
        reconcile.continue_function_name(FakeContext(function_name="something-else"), settings)
    with patched_environ({"RECONCILE_CONTINUE_FUNCTION": "custom-continue"}):
        reset_settings()
        assert reconcile.continue_function_name(FakeContext(function_name="x"), get_settings()) == "custom-continue"
    reset_settings()

    class FakeLambda:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def invoke(self, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(kwargs)
            return {"StatusCode": 202}

    harness.pool.seed(130)
    fake = FakeLambda()
    deps = Deps(cognito=harness.cognito, sqs=harness.sqs, s3=harness.s3, lambda_client=fake)
    context = budget(1, function_name="userhub-sync-prod-reconcile")
    harness.context = context
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": context.function_name}):  # as inside Lambda
        assert handle_scheduled_event(scheduled_event(), context, deps=deps)["status"] == "continued"
    [call] = fake.calls
    assert call["FunctionName"] == "userhub-sync-prod-reconcile_continue" and call["InvocationType"] == "Event"
    payload = json.loads(call["Payload"])
    assert payload["continuation"]["invocation"] == 2
    assert payload["continuation"]["checkpoint"] == f"reconcile/{harness.pool.id}/run.json"


def test_only_the_invocation_that_completes_a_run_counts_reconcile_completed(harness: Harness, capfd) -> None:
    """The operators' "no completed reconcile in 26 h" alarm watches this count (ops/alarms.py)."""
    harness.pool.seed(120)
    capfd.readouterr()
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        summaries = harness.run(pages_per_invocation=1)
        reconcile.run_reconcile(reconcile.ReconcileRequest(dry_run=True), deps=harness.deps())
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert [s["status"] for s in summaries] == ["continued", "complete"]
    assert len(lines) == 3  # two invocations and the dry run each wrote one metrics line
    assert [line.get("reconcile_completed") for line in lines] == [None, 1, None]
