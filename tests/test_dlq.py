"""`userhub-sync dlq list / replay / purge`, including replay under faults: nothing lost, nothing sent twice."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from chalicelib.dead_letter import DeadLetterInfo, FailureKind, dead_letter_entry
from chalicelib.messages import EventType, Source, SyncMessage
from tests.support import CONNECTION, bootstrap, cli, depth, drain, queue_url
from userhub_sync.cli import dlq as dlq_commands
from userhub_sync.ops import dlq
from userhub_sync.ops.durations import parse_duration

POOL = "us-east-1_DlqPool1"
FAST = ("--wait-seconds", "0", "--rate", "0")
EVENTS, DLQ = "userhub-sync-dev-events", "userhub-sync-dev-dlq"


@pytest.fixture
def stage(project):
    """The dev stage, bootstrapped: its queues exist."""
    bootstrap()
    return project


def dead_letter(
    user: str,
    *,
    kind: str = "permanent",
    status: int | None = 404,
    code: str | None = "user_not_found",
    reason: str | None = "User not found",
    ago: timedelta = timedelta(minutes=5),
    attempts: int = 1,
    body: str | None = None,
) -> SyncMessage | None:
    """Put a message in the DLQ exactly as deliver does (the dead-letter contract's own entry)."""
    message = None
    if body is None:
        message = SyncMessage(
            type=EventType.SIGNIN, user_pool_id=POOL, username=user, connection_id=CONNECTION, source=Source.POST_AUTH
        )
        body = message.to_body()
    info = DeadLetterInfo(
        kind=FailureKind(kind),
        reason=reason or "",
        attempts=attempts,
        status=status,
        code=code,
        first_seen=datetime.now(UTC) - ago,
        failed_at=datetime.now(UTC),
        source_message_id=f"orig-{user}",
        username=message.username if message else None,
    )
    boto3.client("sqs").send_message(QueueUrl=queue_url(DLQ), **dead_letter_entry(body, info))  # type: ignore[arg-type]
    return message


def seed() -> dict[str, SyncMessage | None]:
    sent = {
        "alice": dead_letter("alice", ago=timedelta(hours=3)),
        "bob": dead_letter(
            "bob", status=400, code="invalid_argument", reason="Connection is disabled", ago=timedelta(minutes=30)
        ),
        "carol": dead_letter(
            "carol",
            kind="exhausted",
            status=503,
            code=None,
            attempts=13,
            reason="retries exhausted after 13 attempts: 503 Service Unavailable",
            ago=timedelta(hours=30),
        ),
        "poison": dead_letter(
            "poison",
            kind="poison",
            status=None,
            code=None,
            body="{not json",
            reason="body is not JSON: JSONDecodeError",
        ),
    }
    dave = SyncMessage(type=EventType.SIGNUP, user_pool_id=POOL, username="dave", source=Source.RECONCILE)
    boto3.client("sqs").send_message(QueueUrl=queue_url(DLQ), MessageBody=dave.to_body())  # as SQS redrives it
    sent["dave"] = dave
    return sent


def list_json(*args: str) -> dict[str, Any]:
    result = cli("dlq", "list", "--stage", "dev", "--json", "--wait-seconds", "0", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def users(listing: dict[str, Any]) -> set[str]:
    return {m["user"] for m in listing["messages"]}


def test_list_shows_failures_and_leaves_the_queue_as_it_was(stage):
    seed()
    listing = list_json()
    assert listing["scanned"] == listing["matched"] == 5
    by_user = {m["user"]: m for m in listing["messages"]}
    alice = by_user["alice"]
    assert (alice["kind"], alice["status"], alice["code"], alice["reason"], alice["attempts"]) == (
        "permanent",
        404,
        "user_not_found",
        "User not found",
        1,
    )
    assert 3 * 3600 - 60 < alice["age_seconds"] < 3 * 3600 + 60 and alice["first_seen"].endswith("Z")
    assert by_user["carol"]["kind"] == "exhausted" and by_user["carol"]["attempts"] == 13
    assert by_user["dave"]["kind"] == "redriven" and by_user["dave"]["status"] is None
    assert by_user[None]["kind"] == "poison"  # no username anywhere in a poison body
    # every message is visible again at once, for the next command
    attrs = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url(DLQ), AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "5" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

    table = cli("dlq", "list", "--stage", "dev", "--wait-seconds", "0")
    assert table.exit_code == 0
    for text in ("message id", "alice", "user_not_found", "exhausted", "redriven", "5 of 5"):
        assert text in table.output


def test_list_filters(stage):
    seed()
    assert users(list_json("--status", "404")) == {"alice"}
    assert users(list_json("--reason", "DISABLED")) == {"bob"}
    assert users(list_json("--user", "carol")) == {"carol"}
    assert users(list_json("--kind", "redriven")) == {"dave"}
    assert users(list_json("--older-than", "2h")) == {"alice", "carol"}
    assert users(list_json("--newer-than", "1h")) == {"bob", "dave", None}
    assert users(list_json("--older-than", "1h", "--newer-than", "1d")) == {"alice"}
    assert list_json("--limit", "2")["matched"] == 2
    bad = cli("dlq", "list", "--stage", "dev", "--older-than", "soon")
    assert bad.exit_code == 64 and "not a duration" in bad.stderr  # usage errors: nothing received
    bad_kind = cli("dlq", "list", "--stage", "dev", "--kind", "weird")
    assert bad_kind.exit_code == 64 and "--kind must be one of" in bad_kind.stderr


def test_messages_redriven_by_sqs_itself_are_listed_as_redriven(stage):
    """moto redrives lazily: the move happens on the first receive after maxReceiveCount, not in the background."""
    sqs = boto3.client("sqs")
    events = queue_url(EVENTS)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=queue_url(DLQ), AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(
        QueueUrl=events,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})},
    )
    message = SyncMessage(type=EventType.SIGNIN, user_pool_id=POOL, username="erin", source=Source.POST_AUTH)
    sqs.send_message(QueueUrl=events, MessageBody=message.to_body())
    assert sqs.receive_message(QueueUrl=events, VisibilityTimeout=0).get("Messages")
    assert not sqs.receive_message(QueueUrl=events, VisibilityTimeout=0).get("Messages")  # moved now
    (listed,) = list_json()["messages"]
    assert listed["user"] == "erin" and listed["kind"] == "redriven" and listed["failed_at"] is None


def test_replay_sends_back_once_with_source_replay_and_keeps_poison(stage):
    sent = seed()
    result = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["skipped"], report["skipped_poison"], report["failed"]) == (4, 1, 1, 0)

    replayed = drain(queue_url(EVENTS))
    bodies = [json.loads(m["Body"]) for m in replayed]
    assert sorted(b["username"] for b in bodies) == ["alice", "bob", "carol", "dave"]
    for body in bodies:
        original = sent[body["username"]]
        assert body["source"] == "replay"
        assert body["id"] == original.id and body["type"] == original.type.value  # identity kept
        assert datetime.fromisoformat(body["event_time"]) == original.event_time  # the original time, kept
    assert all(m["MessageAttributes"]["replayed_from"]["StringValue"] for m in replayed)
    assert all(int(m["Attributes"]["ApproximateReceiveCount"]) == 1 for m in replayed)  # attempts start over
    left = list_json()
    assert [m["kind"] for m in left["messages"]] == ["poison"]


def test_replay_with_filters_dry_run_and_poison(stage):
    seed()
    dry = cli("dlq", "replay", "--stage", "dev", "--dry-run", *FAST)
    assert dry.exit_code == 0 and "would replay 4" in dry.output
    assert depth(queue_url(EVENTS)) == 0 and depth(queue_url(DLQ)) == 5

    only = cli("dlq", "replay", "--stage", "dev", "--user", "alice", "--json", *FAST)
    assert json.loads(only.stdout)["replayed"] == 1
    assert [json.loads(m["Body"])["username"] for m in drain(queue_url(EVENTS))] == ["alice"]

    poison = cli("dlq", "replay", "--stage", "dev", "--kind", "poison", "--include-poison", "--json", *FAST)
    assert json.loads(poison.stdout)["replayed"] == 1
    assert [m["Body"] for m in drain(queue_url(EVENTS))] == ["{not json"]  # resent as it was
    assert users(list_json()) == {"bob", "carol", "dave"}


def test_replay_progress_and_final_count(stage):
    seed()
    result = cli("dlq", "replay", "--stage", "dev", *FAST)
    assert result.exit_code == 0, result.output
    assert "replayed 4, skipped 1 (1 poison), failed 0" in result.output


class FaultySQS:
    """The real client, except that SendMessageBatch fails for some users and the first call raises outright."""

    def __init__(self, real: Any, fail_users: set[str], *, raise_first: bool = False, fail_deletes: int = 0) -> None:
        self.real, self.fail_users, self.raise_next = real, fail_users, raise_first
        self.fail_deletes = fail_deletes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.raise_next:
            self.raise_next = False
            raise EndpointConnectionError(endpoint_url=QueueUrl)
        failing = [e for e in Entries if json.loads(e["MessageBody"]).get("username") in self.fail_users]
        passing = [e for e in Entries if e not in failing]
        response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=passing) if passing else {}
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"} for e in failing
        ]
        return {"Successful": response.get("Successful", []), "Failed": response.get("Failed", []) + failed}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.fail_deletes > 0:
            self.fail_deletes -= 1
            return {
                "Successful": [],
                "Failed": [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in Entries],
            }
        return self.real.delete_message_batch(QueueUrl=QueueUrl, Entries=Entries)


def _inject(monkeypatch: pytest.MonkeyPatch, **faults: Any) -> Any:
    """Every SQS client the commands make is a FaultySQS; returns the real factory, to lift the fault."""
    real_client = dlq_commands.client

    def client(service: str, **kwargs: Any) -> Any:
        made = real_client(service, **kwargs)
        return FaultySQS(made, **faults) if service == "sqs" else made

    monkeypatch.setattr(dlq_commands, "client", client)
    return real_client


def test_replay_under_send_faults_loses_nothing_and_duplicates_nothing(stage, monkeypatch):
    names = [f"user{i:02d}" for i in range(25)]
    for name in names:
        dead_letter(name)
    fail = {"user03", "user07", "user11", "user19", "user24"}
    real_client = _inject(monkeypatch, fail_users=fail, raise_first=True)

    result = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert result.exit_code == 2, result.output  # some entries were not sent
    report = json.loads(result.stdout)
    assert report["replayed"] + report["failed"] == 25 and report["failed"] > len(fail)  # + the batch that raised

    in_dlq = users(list_json())
    delivered = [json.loads(m["Body"])["username"] for m in drain(queue_url(EVENTS))]
    assert len(delivered) == len(set(delivered)) == report["replayed"]  # each sent message exactly once
    assert set(delivered) | in_dlq == set(names) and not set(delivered) & in_dlq  # nothing lost, no overlap
    assert fail <= in_dlq and len(in_dlq) == report["failed"]

    monkeypatch.setattr(dlq_commands, "client", real_client)  # the fault is gone: replay the rest
    again = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert again.exit_code == 0 and json.loads(again.stdout)["replayed"] == len(in_dlq)
    second = [json.loads(m["Body"])["username"] for m in drain(queue_url(EVENTS))]
    assert sorted(delivered + second) == names  # every user exactly once over both runs
    assert depth(queue_url(DLQ)) == 0


def test_a_failed_delete_is_retried_not_resent(stage, monkeypatch):
    for name in ("fred", "gina", "hank"):
        dead_letter(name)
    _inject(monkeypatch, fail_users=set(), fail_deletes=1)
    result = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["replayed"] == 3 and report["not_deleted"] == 0
    assert sorted(json.loads(m["Body"])["username"] for m in drain(queue_url(EVENTS))) == ["fred", "gina", "hank"]
    assert depth(queue_url(DLQ)) == 0


def test_a_delete_that_keeps_failing_is_reported(stage, monkeypatch):
    dead_letter("ivan")
    _inject(monkeypatch, fail_users=set(), fail_deletes=100)
    result = cli("dlq", "replay", "--stage", "dev", *FAST)
    assert result.exit_code == 2
    assert "could not be deleted" in result.output
    assert len(drain(queue_url(EVENTS))) == 1  # sent once, not again within the run


def test_replay_reports_what_a_concurrent_list_holds_instead_of_exiting_0(stage):
    """A `dlq list` running elsewhere holds what it has received (invisible) until it ends: replay cannot see
    those messages. It must say so, with the documented exit code, and a rerun after the hold replays them."""
    for name in ("kim", "lee", "max", "ned", "oli"):
        dead_letter(name)
    sqs, url = boto3.client("sqs"), queue_url(DLQ)
    # a `dlq list` elsewhere that has received two messages so far: it hides them until it ends
    lister = dlq.Scanner(sqs, url, visibility=60, wait=0)
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)["Messages"]
    lister.held.update({m["MessageId"]: m["ReceiptHandle"] for m in got})
    assert len(lister.held) == 2

    result = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["unseen"], report["in_flight_at_start"]) == (3, 2, 2)
    assert report["unseen_detail"] == (
        "2 message(s) were in flight and not replayed (held by another receiver, such as a `dlq list`); "
        "run again after their visibility timeout (30 s)"
    )
    assert len(drain(queue_url(EVENTS))) == 3

    table = cli("dlq", "replay", "--stage", "dev", *FAST)  # the same in the human output
    assert table.exit_code == 2 and "2 message(s) were in flight and not replayed" in table.stdout

    assert lister.release() == 2  # the list ends and lets go: a rerun replays the rest, exit 0
    again = cli("dlq", "replay", "--stage", "dev", "--json", *FAST)
    assert again.exit_code == 0, again.output
    assert (json.loads(again.stdout)["replayed"], json.loads(again.stdout)["unseen"]) == (2, 0)
    assert depth(queue_url(DLQ)) == 0


def test_list_says_when_it_could_not_release_what_it_held(stage, monkeypatch):
    """list hides each message only while it builds the list and makes all visible again at the end; if that
    release fails, a replay run now would miss them, so list says so and exits 2."""
    seed()

    class NoRelease(FaultySQS):
        def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            return {"Successful": [], "Failed": [{"Id": e["Id"], "Code": "InternalError"} for e in Entries]}

    real_client = dlq_commands.client
    monkeypatch.setattr(
        dlq_commands,
        "client",
        lambda service, **kw: (
            NoRelease(real_client(service, **kw), set()) if service == "sqs" else real_client(service, **kw)
        ),
    )
    result = cli("dlq", "list", "--stage", "dev", "--json", "--wait-seconds", "0", "--visibility", "5")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["not_released"] == 5
    assert "5 listed message(s) could not be made visible again" in result.stderr and "5 s" in result.stderr


def test_native_replay_fails_clearly_on_moto(stage):
    seed()
    started = time.monotonic()
    result = cli("dlq", "replay", "--stage", "dev", "--native")
    assert result.exit_code == 1
    assert "StartMessageMoveTask" in result.output and "drop --native" in result.output
    assert time.monotonic() - started < 10  # no retry storm against the 500
    assert depth(queue_url(DLQ)) == 5
    combined = cli("dlq", "replay", "--stage", "dev", "--native", "--user", "alice")
    assert combined.exit_code == 64 and "cannot be combined" in combined.stderr


def test_purge_asks_first_and_filters_delete_only_matches(stage):
    seed()
    declined = cli("dlq", "purge", "--stage", "dev", "--wait-seconds", "0", input="n\n")
    assert declined.exit_code == 1 and "aborted" in declined.output
    assert depth(queue_url(DLQ)) == 5

    filtered = cli("dlq", "purge", "--stage", "dev", "--kind", "poison", "--yes", "--wait-seconds", "0")
    assert filtered.exit_code == 0 and "deleted 1 message" in filtered.output
    assert None not in users(list_json()) and depth(queue_url(DLQ)) == 4

    everything = cli("dlq", "purge", "--stage", "dev", "--wait-seconds", "0", input="y\n")
    assert everything.exit_code == 0, everything.output
    assert depth(queue_url(DLQ)) == 0


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("1 fortnight")
