"""How sign-in recovery sends what it recovered: ten per SendMessageBatch, failed entries retried with a doubling,
jittered pause (0.2 s, 0.4 s, 0.8 s, 1.6 s; up to 25 % more), a message SQS rejects as such set aside with its code
and never retried, and after five attempts a clear error (the run stops; the watermark stays).

SQS is moto over HTTP; moto cannot fail an entry on cue, so `FlakySQS` wraps the real client and reports chosen
entries as failed (said there). Pauses are recorded, not slept.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib import signin_recovery as sr
from chalicelib.messages import SyncMessage
from tests.support import POOL_ID, receive_all


def messages(count: int) -> list[SyncMessage]:
    return [
        SyncMessage(type="SIGNIN", source="post_auth", user_pool_id=POOL_ID, username=f"user{i:02d}")
        for i in range(count)
    ]


class FlakySQS:
    """The real moto client; for the first `fail_calls` SendMessageBatch calls, the entries whose body names a user
    in `fail` are reported failed (moto cannot fail on cue); `reject` ones always, as a sender fault."""

    def __init__(self, real: Any, *, fail: set[str] = frozenset(), fail_calls: int = 0, reject: set[str] = frozenset()):
        self.real, self.fail, self.fail_calls, self.reject = real, fail, fail_calls, reject
        self.batches: list[list[str]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        names = {e["Id"]: json.loads(e["MessageBody"])["username"] for e in Entries}
        self.batches.append(sorted(names.values()))
        failing = self.fail if len(self.batches) <= self.fail_calls else set()
        failed = [
            {"Id": i, "SenderFault": False, "Code": "InternalError"} for i, n in names.items() if n in failing
        ] + [
            {"Id": i, "SenderFault": True, "Code": "InvalidMessageContents"}
            for i, n in names.items()
            if n in self.reject
        ]
        good = [e for e in Entries if names[e["Id"]] not in failing | self.reject]
        sent = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=good)["Successful"] if good else []
        return {"Successful": sent, "Failed": failed}


def sender(aws: Any, sqs: Any) -> tuple[sr.BatchSender, list[float], list[int]]:
    slept: list[float] = []
    asked: list[int] = []

    def url() -> str:
        asked.append(1)
        return aws.queues.events_url

    return sr.BatchSender(sqs, url, sleep=slept.append), slept, asked


def queued(aws: Any) -> list[str]:
    return sorted(json.loads(m["Body"])["username"] for m in receive_all(aws.sqs, aws.queues.events_url))


def test_messages_go_ten_per_batch_and_the_queue_url_is_asked_once(aws) -> None:
    flaky = FlakySQS(aws.sqs)
    batch_sender, slept, asked = sender(aws, flaky)
    batch_sender.send(messages(23))
    assert [len(b) for b in flaky.batches] == [10, 10, 3]
    assert batch_sender.sent == 23 and batch_sender.rejected == [] and slept == [] and len(asked) == 1
    assert queued(aws) == [f"user{i:02d}" for i in range(23)]


def test_failed_entries_are_retried_alone_after_a_doubling_jittered_pause(aws) -> None:
    flaky = FlakySQS(aws.sqs, fail={"user01", "user03"}, fail_calls=4)
    batch_sender, slept, _ = sender(aws, flaky)
    batch_sender.send(messages(5))
    assert flaky.batches[0] == ["user00", "user01", "user02", "user03", "user04"]
    assert flaky.batches[1:] == [["user01", "user03"]] * 4
    assert len(slept) == 4
    for pause, base in zip(slept, (0.2, 0.4, 0.8, 1.6), strict=True):
        assert base <= pause <= base * 1.25
    assert batch_sender.sent == 5 and queued(aws) == [f"user{i:02d}" for i in range(5)]


def test_after_five_failed_attempts_the_run_stops_with_a_clear_error(aws) -> None:
    flaky = FlakySQS(aws.sqs, fail={"user00", "user02"}, fail_calls=99)
    batch_sender, slept, _ = sender(aws, flaky)
    with pytest.raises(sr.RecoveryError) as raised:
        batch_sender.send(messages(3))
    assert str(raised.value) == "SQS kept failing 2 message(s) after 5 attempts"
    assert len(flaky.batches) == 5 and len(slept) == 4 and batch_sender.sent == 1


def test_a_message_sqs_rejects_is_set_aside_with_its_code_and_not_retried(aws) -> None:
    flaky = FlakySQS(aws.sqs, reject={"user01"})
    batch_sender, slept, _ = sender(aws, flaky)
    batch = messages(3)
    batch_sender.send(batch)
    assert batch_sender.rejected == [(batch[1], "InvalidMessageContents")]
    assert batch_sender.sent == 2 and len(flaky.batches) == 1 and slept == []
    assert queued(aws) == ["user00", "user02"]
