"""Helpers the tests share: SQS peeking and the shapes of what deliver leaves behind. Import from here, not conftest."""

from __future__ import annotations

from typing import Any


def send(sqs: Any, url: str, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)


def attrs(message: dict[str, Any]) -> dict[str, str]:
    """A received message's string attributes (the dead-letter contract), by name."""
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


def depth(sqs: Any, url: str) -> int:
    """Visible plus in-flight messages."""
    a = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    return sum(int(v) for v in a["Attributes"].values())


def receive_all(sqs: Any, url: str, *, visibility: int = 30, rounds: int = 5) -> list[dict[str, Any]]:
    """What a (shallow) queue holds now, received (and so hidden for `visibility` seconds), with every attribute."""
    found: list[dict[str, Any]] = []
    for _ in range(rounds):
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        found += got
    return found


def capture_visibility(sqs: Any) -> list[dict[str, Any]]:
    """Record the ChangeMessageVisibilityBatch entries sent through this client (the calls still go to moto)."""
    seen: list[dict[str, Any]] = []
    sqs.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch", lambda params, **_: seen.extend(params["Entries"])
    )
    return seen
