"""A sign-in post_auth could not enqueue is recovered from its recovery record: end to end, and piece by piece.

Lambda's shipping of function output to CloudWatch Logs cannot run here. The tests stand in for it by putting the
very line post_auth printed (captured from stdout) into moto's CloudWatch Logs, under the function's log group, with
`put_log_events`. Everything else is real: post_auth against an SQS endpoint that never answers or refuses, moto's
FilterLogEvents (which matches a quoted phrase as a substring, the one filter form both moto and CloudWatch Logs
support alike), S3, Cognito, SQS, `app.reconcile`, the CLI, `app.deliver` and the fake UserHub over HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.local import LambdaContext

import app
from chalicelib import delivery, post_auth, reconcile
from chalicelib import signin_recovery as sr
from chalicelib.messages import EventType, Source
from chalicelib.reconcile import read_last_summary
from chalicelib.settings import ConfigError, get_settings, reset_settings
from tests.support import ADMIN_KEY, CONNECTION_ID, bootstrap, cli, create_pool, make_project, signin_event
from tests.test_reconcile import BUCKET, Harness, build_harness, scheduled_event
from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.moto import free_port, patched_environ

GROUP = "/aws/lambda/userhub-sync-dev-post_auth"
MINUTE_MS = 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


def put_lines(group: str, lines: list[str], at_ms: int) -> None:
    """Stands in for Lambda's log shipping: the lines post_auth printed, as log events of its log group."""
    logs = boto3.client("logs")
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    stream = f"2026/11/26/[$LATEST]{uuid.uuid4().hex}"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    events = [{"timestamp": at_ms + i, "message": line} for i, line in enumerate(lines)]
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def failed_signin(capsys, username: str, pool: str, endpoint: str, **overrides: str | None) -> tuple[dict, str]:
    """Run post_auth with SQS unreachable; returns the event and the recovery record it printed."""
    capsys.readouterr()
    event = signin_event(username, pool)
    event["request"]["userAttributes"]["sub"] = user_sub(pool, username)
    env = {"AWS_ENDPOINT_URL": endpoint, "EVENTS_QUEUE_URL": f"{endpoint}/123456789012/q", **overrides}
    with patched_environ(env):
        post_auth.queue.reset()
        assert app.post_auth(event, None) is event
    post_auth.queue.reset()
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"recovery"')]
    return event, line


def user_sub(pool: str, username: str) -> str:
    try:
        user = boto3.client("cognito-idp").admin_get_user(UserPoolId=pool, Username=username)
    except Exception:
        return str(uuid.uuid4())  # a user Cognito does not know
    return next(a["Value"] for a in user["UserAttributes"] if a["Name"] == "sub")


def drain_to_userhub(sqs, queue_url: str) -> None:
    LocalEventSource(sqs, queue_url, app.deliver, wait_seconds=0).run(drain=True)


@pytest.fixture
def harness(pipeline) -> Iterator[Harness]:
    yield from build_harness()


# ------------------------------------------------------------------------------------------------ end to end


def test_black_holed_signins_reach_userhub_through_the_nightly_reconcile(pipeline, harness, hub, black_hole, capsys):
    harness.pool.add(["alice@example.com", "bob@example.com"])
    fast = {"POST_AUTH_BUDGET_SECONDS": "0.4"}  # the bound is tested in test_post_auth; keep this test quick
    _, alice = failed_signin(capsys, "alice@example.com", harness.pool.id, black_hole, **fast)
    hashed = {"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": "a-log-hashing-key-for-tests"}
    _, bob = failed_signin(capsys, "bob@example.com", harness.pool.id, black_hole, **fast, **hashed)
    _, gone = failed_signin(capsys, "gone@example.com", harness.pool.id, black_hole, **fast, **hashed)
    assert "bob@example.com" not in bob and json.loads(bob)["message"]["username"] is None  # logs hold no name
    put_lines(
        GROUP,
        [
            alice,
            bob,  # usernames hashed in logs: resolved through ListUsers(Filter='sub = "…"')
            gone,  # a sub Cognito no longer knows: skipped, logged
            alice[:120],  # cut off (a log event over the size limit): invalid, skipped
            '{"level": "ERROR", "message": "enqueue failed", "user": "userhub-sync/v1"}',  # matches, not a record
        ],
        at_ms=now_ms() - 20 * MINUTE_MS,  # the sign-ins happened before tonight's run
    )
    reconcile.reset_clients()
    try:
        # the deployed function's name gives post_auth's log group; outside Lambda its 3 s clock is not honoured
        summary = app.reconcile(scheduled_event(), LambdaContext("userhub-sync-dev-reconcile", 1024))
        again = app.reconcile(scheduled_event(), LambdaContext("userhub-sync-dev-reconcile", 1024))
    finally:
        reconcile.reset_clients()
    assert summary["status"] == "complete" and summary["signins_recovered"] == 2
    assert again["signins_recovered"] == 0  # the watermark moved past them: not sent twice
    assert read_last_summary(harness.s3, BUCKET).to_dict() == again  # type: ignore[union-attr]  # the stored summary carries the count too
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith('{"level"')]
    [report] = [line for line in lines if line["message"] == "sign-in recovery summary" and line["matched"]]
    assert (report["matched"], report["records"], report["enqueued"]) == (5, 3, 2)
    assert (report["invalid"], report["unresolved"]) == (1, 1)
    assert any(line["message"].startswith("recovery record invalid") for line in lines)

    drain_to_userhub(pipeline.sqs, pipeline.queues.events_url)
    signins = {e.external_id for e in hub.events() if e.type == "SIGNIN"}
    assert signins == {"alice@example.com", "bob@example.com"}


def test_refused_signins_reach_userhub_through_the_cli(tmp_path, monkeypatch, moto_server, hub, capsys) -> None:
    make_project(tmp_path, monkeypatch, moto_server)
    pool = create_pool()
    bootstrap(pool)
    boto3.client("cognito-idp").admin_create_user(UserPoolId=pool, Username="carol")
    refused = f"http://127.0.0.1:{free_port()}"
    env = {"EVENTS_QUEUE_NAME": "userhub-sync-dev-events", "USERHUB_CONNECTION_ID": "conn_ops_test"}
    _, carol = failed_signin(capsys, "carol", pool, refused, **env)
    put_lines(GROUP, [carol], at_ms=now_ms() - 30 * MINUTE_MS)

    dry = cli("recover-signins", "--stage", "dev", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would enqueue 1 message(s)" in dry.output and "SIGNIN  carol  " in dry.output
    real = cli("recover-signins", "--stage", "dev", "--json")
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert (report["records"], report["enqueued"], report["dry_run"]) == (1, 1, False)
    assert report["watermark_before_ms"] is None and report["watermark_after_ms"] > report["start_ms"]
    again = json.loads(cli("recover-signins", "--stage", "dev", "--json").stdout)
    assert again["enqueued"] == 0  # from the watermark on: nothing new

    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName="userhub-sync-dev-events")["QueueUrl"]
    deliver_env = {
        "USERHUB_API_URL": hub.url,
        "USERHUB_CONNECTION_ID": "conn_ops_test",
        "USERHUB_ADMIN_KEY": ADMIN_KEY,
        "EVENTS_QUEUE_NAME": "userhub-sync-dev-events",
        "DEAD_LETTER_QUEUE_NAME": "userhub-sync-dev-dlq",
        "USERHUB_SYNC_METRICS": "off",
    }
    with patched_environ(deliver_env):
        reset_settings()
        delivery.reset_deliverer()
        drain_to_userhub(sqs, url)
    reset_settings()
    delivery.reset_deliverer()
    assert [(e.external_id, e.type, e.connection_id) for e in hub.events()] == [("carol", "SIGNIN", "conn_ops_test")]


def test_cli_errors_are_one_clear_line(tmp_path, monkeypatch, moto_server) -> None:
    make_project(tmp_path, monkeypatch, moto_server)
    bad_since = cli("recover-signins", "--stage", "dev", "--since", "yesterday")
    assert bad_since.exit_code == 64 and "not a duration" in bad_since.output  # a usage error, like every duration
    no_bucket = cli("recover-signins", "--stage", "dev")
    assert no_bucket.exit_code == 1 and "error:" in no_bucket.output and "Traceback" not in no_bucket.output
    unknown = cli("recover-signins", "--stage", "nope")
    assert unknown.exit_code == 1 and "stage 'nope' is not in .chalice/config.json" in unknown.output


# ------------------------------------------------------------------------------------------------ the pieces


def record_line(username: str, pool: str = "us-east-1_Pool1", sub: str | None = "sub-1") -> str:
    body = post_auth.message_body({"userName": username, "userPoolId": pool}, "SIGNIN", "post_auth")
    event = {"request": {"userAttributes": {"sub": sub}}} if sub else {}
    return post_auth.recovery_record(body, event, "EndpointConnectionError: refused")


@pytest.mark.parametrize(
    "username", ["plain", 'quo"te\\back', "tab\tnew\nline", "line\u2028separator", "emoji 🙂 ünï", "\udc80lone"]
)
def test_what_post_auth_writes_parses_back_to_the_same_message(username: str) -> None:
    line = record_line(username)
    assert line.isascii() and "\n" not in line  # one log event, whatever the username holds
    assert line.startswith('{"recovery":"userhub-sync/v1"')
    record = sr.parse_record(line)
    assert record is not None and record.sub == "sub-1"
    assert record.message["username"] == username and record.message["type"] == "SIGNIN"


def test_records_are_found_behind_a_text_prefix_or_in_lambda_json_format() -> None:
    line = record_line("alice")
    prefixed = f"2026-11-26T03:00:00.000Z\t{uuid.uuid4()}\tINFO\t{line}"
    wrapped = json.dumps({"timestamp": "2026-11-26T03:00:00Z", "level": "INFO", "message": line})
    for text in (line, prefixed, wrapped):
        record = sr.parse_record(text)
        assert record is not None and record.message["username"] == "alice"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"recovery":"userhub-sync/v2","message":{}}', "recovery"),
        ('{"recovery":"userhub-sync/v1"}', "message"),
        ('{"recovery":"userhub-sync/v1","message":{},"sub":"x\\" or 1"}', "sub"),
        ('{"recovery":"userhub-sync/v1","message":{"v":1,"usern', "cut off"),
    ],
)
def test_broken_records_are_invalid_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(sr.InvalidRecord, match=problem):
        sr.parse_record(text)


@pytest.mark.parametrize("text", ["", "START RequestId: 1", '{"message": "userhub-sync/v1"}', "[1, 2]"])
def test_other_lines_are_not_records(text: str) -> None:
    assert sr.parse_record(text) is None


def test_log_groups_come_from_the_setting_or_the_function_name() -> None:
    assert sr.trigger_log_groups(None, "userhub-sync-prod-reconcile") == [
        "/aws/lambda/userhub-sync-prod-post_auth",
        "/aws/lambda/userhub-sync-prod-post_confirmation",
    ]
    assert sr.trigger_log_groups(None, "userhub-sync-prod-reconcile_continue")[0].endswith("prod-post_auth")
    assert sr.trigger_log_groups("/a/b, /c", "anything") == ["/a/b", "/c"]
    assert sr.trigger_log_groups(None, "reconcile") is None  # chalice's local stand-in: nothing to derive from
    with pytest.raises(sr.RecoveryError, match="SIGNIN_RECOVERY_LOG_GROUPS"):
        sr.trigger_log_groups("/a b", None)


def test_a_malformed_log_group_setting_is_a_config_error(aws) -> None:
    with patched_environ({"SIGNIN_RECOVERY_LOG_GROUPS": "/aws/lambda/x y"}):
        reset_settings()
        with pytest.raises(ConfigError, match="SIGNIN_RECOVERY_LOG_GROUPS"):
            get_settings()
    reset_settings()


class Recovery:
    """recover_signins against moto, with the events queue and bucket of the `aws` fixture."""

    def __init__(self, aws) -> None:
        self.sqs = aws.sqs
        self.url = aws.queues.events_url
        self.s3 = boto3.client("s3")
        self.s3.create_bucket(Bucket=BUCKET)
        self.cognito_calls = 0

    def clients(self, sqs: Any = None) -> sr.RecoveryClients:
        def cognito() -> Any:
            self.cognito_calls += 1
            return boto3.client("cognito-idp")

        return sr.RecoveryClients(
            logs=boto3.client("logs"), sqs=sqs or self.sqs, s3=self.s3, cognito=cognito, queue_url=lambda: self.url
        )

    def run(self, sqs: Any = None, **kwargs: Any) -> sr.RecoveryReport:
        return sr.recover_signins(self.clients(sqs), bucket=BUCKET, log_groups=[GROUP], sleep=lambda _s: None, **kwargs)

    def queued(self) -> list[str]:
        names = []
        while got := self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages"):
            names += [json.loads(m["Body"])["username"] for m in got]
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
            )
        return names

    def watermark(self) -> int | None:
        return sr.WatermarkStore(self.s3, BUCKET).read()[0]


@pytest.fixture
def recovery(aws) -> Recovery:
    return Recovery(aws)


def test_records_over_several_slices_go_out_ten_per_batch(recovery: Recovery) -> None:
    base = now_ms() - 3 * sr.SLICE_MS
    names = [f"user{i:02d}" for i in range(23)]
    for part in range(3):  # three time slices
        put_lines(GROUP, [record_line(n) for n in names[part::3]], at_ms=base + part * sr.SLICE_MS + 1000)
    batches: list[int] = []
    recovery.sqs.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: batches.append(len(params["Entries"]))
    )
    report = recovery.run(since_ms=base)
    assert sorted(recovery.queued()) == names and report.enqueued == 23
    assert max(batches) <= 10 and sum(batches) == 23
    assert report.watermark_after_ms == report.end_ms - sr.INGESTION_LAG_MS


def test_recovered_messages_keep_id_time_source_and_connection(recovery: Recovery) -> None:
    line = record_line("dora", sub=None)
    original = json.loads(line)["message"]
    put_lines(GROUP, [line], at_ms=now_ms() - 20 * MINUTE_MS)
    recovery.run()
    [message] = recovery.sqs.receive_message(QueueUrl=recovery.url)["Messages"]
    body = json.loads(message["Body"])
    assert (body["id"], body["type"], body["source"]) == (original["id"], EventType.SIGNIN, Source.POST_AUTH)
    assert body["event_time"].startswith(original["event_time"][:19]) and body["connection_id"] == CONNECTION_ID


class FailingSQS:
    """The real moto client, with an SQS outage starting at the Nth SendMessageBatch (moto cannot fail on cue)."""

    def __init__(self, real: Any, fail_from_call: int) -> None:
        self.real, self.fail_from_call, self.calls = real, fail_from_call, 0

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls >= self.fail_from_call:
            raise ConnectionError("injected: SQS unreachable")
        return self.real.send_message_batch(**kwargs)


def test_an_sqs_outage_mid_run_keeps_the_watermark_at_the_last_complete_slice(recovery: Recovery) -> None:
    base = now_ms() - 3 * sr.SLICE_MS - 60 * MINUTE_MS
    for part, name in enumerate(("s0", "s1", "s2")):
        put_lines(GROUP, [record_line(name)], at_ms=base + part * sr.SLICE_MS + 1000)
    with pytest.raises(ConnectionError):
        recovery.run(FailingSQS(recovery.sqs, fail_from_call=2), since_ms=base)
    assert recovery.queued() == ["s0"]
    assert recovery.watermark() == base + sr.SLICE_MS  # the end of the first slice, the only one sent
    report = recovery.run()  # the next run starts from the watermark: nothing skipped
    assert sorted(recovery.queued()) == ["s1", "s2"] and report.start_ms == base + sr.SLICE_MS


class RejectingSQS:
    """Real SQS rejects bodies with U+FFFF (InvalidMessageContents, a sender fault); moto accepts them."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        bad = [e for e in Entries if "\uffff" in e["MessageBody"]]
        good = [e for e in Entries if e not in bad]
        response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=good) if good else {}
        failed = [{"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents"} for e in bad]
        return {"Successful": response.get("Successful", []), "Failed": failed}


def test_rejected_unknown_and_invalid_records_are_skipped_and_the_watermark_still_moves(
    recovery: Recovery, caplog
) -> None:
    at = now_ms() - 30 * MINUTE_MS
    lines = [record_line("ok-1"), record_line("bad\uffff"), record_line("x")[:50], record_line("ok-2")]
    put_lines(GROUP, lines, at_ms=at)
    report = recovery.run(RejectingSQS(recovery.sqs), since_ms=at - MINUTE_MS)
    assert sorted(recovery.queued()) == ["ok-1", "ok-2"]
    assert (report.records, report.enqueued, report.rejected, report.invalid) == (3, 2, 1, 1)
    assert report.watermark_after_ms is not None and report.watermark_after_ms > at
    rejected = [r for r in caplog.records if r.getMessage().startswith("SQS rejected a recovered sign-in")]
    assert [r.user for r in rejected] == ["bad\uffff"]


def test_dry_run_and_a_later_since_leave_the_watermark_alone(recovery: Recovery) -> None:
    put_lines(GROUP, [record_line("eve")], at_ms=now_ms() - 3 * 60 * MINUTE_MS)
    dry = recovery.run(dry_run=True)
    assert [m.username for m in dry.planned] == ["eve"] and recovery.queued() == [] and recovery.watermark() is None
    first = recovery.run()
    assert recovery.queued() == ["eve"] and recovery.watermark() == first.watermark_after_ms
    put_lines(GROUP, [record_line("fay")], at_ms=now_ms() - 2 * MINUTE_MS)
    later = recovery.run(since_ms=now_ms() - 5 * MINUTE_MS)  # starts after the watermark (now - 10 min)
    assert recovery.queued() == ["fay"] and recovery.watermark() == first.watermark_after_ms
    assert later.watermark_after_ms == first.watermark_after_ms


def test_a_record_younger_than_the_ingestion_lag_is_read_again_next_time(recovery: Recovery) -> None:
    put_lines(GROUP, [record_line("recent")], at_ms=now_ms() - MINUTE_MS)
    recovery.run()
    recovery.run()
    assert recovery.queued() == ["recent", "recent"]  # a duplicate, never a miss: a late-ingested line is found


def test_missing_log_groups_are_reported_asked_once_and_write_nothing(recovery: Recovery) -> None:
    calls: list[str] = []
    clients = recovery.clients()
    clients.logs.meta.events.register("provide-client-params.logs.FilterLogEvents", lambda **_: calls.append("x"))
    report = sr.recover_signins(clients, bucket=BUCKET, log_groups=[GROUP])  # two days: eight slices
    assert report.missing_groups == [GROUP] and report.enqueued == 0 and recovery.watermark() is None
    assert len(calls) == 1


def test_cognito_is_asked_once_per_sub_and_only_when_a_record_lacks_a_username(recovery: Recovery) -> None:
    pool = boto3.client("cognito-idp").create_user_pool(PoolName="recovery")["UserPool"]["Id"]
    boto3.client("cognito-idp").admin_create_user(UserPoolId=pool, Username="gus")
    sub = user_sub(pool, "gus")
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": "a-log-hashing-key-for-tests"}):
        line = record_line("gus", pool=pool, sub=sub)  # usernames hashed in logs: the record names gus by sub
    put_lines(GROUP, [line, line, record_line("hal")], at_ms=now_ms() - 20 * MINUTE_MS)
    report = recovery.run()
    assert sorted(recovery.queued()) == ["gus", "gus", "hal"] and report.enqueued == 3
    assert recovery.cognito_calls == 1


def test_continuations_and_dry_runs_do_not_recover(harness: Harness, capsys) -> None:
    put_lines(GROUP, [record_line("ivy", pool=harness.pool.id)], at_ms=now_ms() - 20 * MINUTE_MS)
    context = LambdaContext("userhub-sync-dev-reconcile", 1024)
    checkpoint = f"reconcile/{harness.pool.id}/run.json"
    continuation = {"continuation": {"run_id": "r1", "checkpoint": checkpoint, "invocation": 2}}
    reconcile.reset_clients()
    try:
        skipped = reconcile.handle_scheduled_event(continuation, context)
        dry = reconcile.handle_scheduled_event({"dry_run": True}, context)
    finally:
        reconcile.reset_clients()
    assert skipped["status"] == "skipped" and dry["status"] == "dry_run"
    assert "signins_recovered" not in skipped and "signins_recovered" not in dry
    assert "sign-in recovery summary" not in capsys.readouterr().err
