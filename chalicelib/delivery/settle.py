"""Fourth stage: carry the planned actions out on SQS, and say which ones were confirmed.

- `Delay`: ChangeMessageVisibilityBatch on the record's queue. Unconfirmed, the message still comes back, after the
  queue's own visibility timeout.
- `DeadLetter`: SendMessageBatch to the DLQ, then delete the original. Only a send SQS confirmed counts; an
  unconfirmed dead letter stays in the events queue (reported as a failure) and is dead-lettered on a later receive.
- `Delete`: nothing here; Lambda deletes records not reported as failures. `delete_settled` does it when the
  function must fail the invocation instead (see `deliverer`).

Every SQS call here uses a client with short timeouts, and none raises: a failure is logged and reflected in
`Settled.confirmed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.dead_letter import dead_letter_entry, entry_bytes
from chalicelib.delivery.plan import Action, DeadLetter, Delay, Delete, QueueFacts
from chalicelib.delivery.records import Record
from chalicelib.observability import get_logger
from chalicelib.settings import Settings
from chalicelib.sqs_limits import batches_within, chunks

log = get_logger("deliver")


@dataclass(frozen=True)
class Settled:
    record: Record
    action: Action
    confirmed: bool  # SQS accepted what the action needed (always True for Delete)

    @property
    def comes_back(self) -> bool:
        """Reported to Lambda as a failure, so the message stays in the events queue."""
        return isinstance(self.action, Delay) or (isinstance(self.action, DeadLetter) and not self.confirmed)


class QueueDirectory:
    """Queue URLs and what each queue allows, looked up once per container (failures too: no lookup per record)."""

    def __init__(self, sqs: Any, settings: Settings) -> None:
        self._sqs = sqs
        self._settings = settings
        self._urls: dict[tuple[str, str | None], str | None] = {}
        self._facts: dict[str, QueueFacts] = {}

    def _url(self, name: str, account: str | None = None) -> str | None:
        if (name, account) not in self._urls:
            kwargs = {"QueueName": name}
            if account:
                kwargs["QueueOwnerAWSAccountId"] = account
            try:
                self._urls[name, account] = self._sqs.get_queue_url(**kwargs)["QueueUrl"]
            except Exception as error:  # a synthetic event, or no permission: remembered, logged once
                log.warning("queue URL unknown", extra={"queue": name, "error": type(error).__name__})
                self._urls[name, account] = None
        return self._urls[name, account]

    def source_url(self, source_arn: str | None) -> str | None:
        """The URL of the queue a record came from (by its ARN, else the configured events queue), or None."""
        parts = (source_arn or "").split(":")
        if len(parts) == 6 and parts[2] == "sqs" and (url := self._url(parts[5], parts[4] or None)):
            return url
        return self._url(self._settings.events_queue_name)

    def dlq_url(self) -> str | None:
        return self._url(self._settings.dead_letter_queue_name)

    def facts(self, source_arn: str | None) -> QueueFacts:
        """maxReceiveCount of the redrive policy (we dead-letter on that attempt ourselves, with the reason) and
        MessageRetentionPeriod (we dead-letter before SQS would delete). MAX_RECEIVE_COUNT when unknown."""
        url = self.source_url(source_arn)
        if url is None:
            return QueueFacts(self._settings.max_receive_count, None)
        if url not in self._facts:
            count, retention = self._settings.max_receive_count, None
            try:
                attributes = self._sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["RedrivePolicy", "MessageRetentionPeriod"]
                ).get("Attributes", {})
                redrive = json.loads(attributes.get("RedrivePolicy") or "{}")
                count = int(redrive.get("maxReceiveCount") or count)
                if "MessageRetentionPeriod" in attributes:
                    retention = int(attributes["MessageRetentionPeriod"])
            except Exception as error:  # the fallback is documented; log and carry on
                log.warning("cannot read the queue's attributes", extra={"queue_url": url, "error": str(error)})
            self._facts[url] = QueueFacts(count, retention)
        return self._facts[url]


def apply(planned: list[tuple[Record, Action]], sqs: Any, queues: QueueDirectory) -> list[Settled]:
    """The actions carried out, in the order given."""
    delays = [(i, record, action) for i, (record, action) in enumerate(planned) if isinstance(action, Delay)]
    dead = [(i, record, action) for i, (record, action) in enumerate(planned) if isinstance(action, DeadLetter)]
    confirmed = _change_visibility(delays, sqs, queues) | _dead_letter(dead, sqs, queues)
    return [
        Settled(record, action, isinstance(action, Delete) or i in confirmed)
        for i, (record, action) in enumerate(planned)
    ]


def delete_settled(settled: list[Settled], sqs: Any, queues: QueueDirectory) -> None:
    """Delete the records Lambda would otherwise have deleted: the delivered ones."""
    _delete([(i, s.record) for i, s in enumerate(settled) if isinstance(s.action, Delete)], sqs, queues)


Indexed = tuple[int, Record]


def _by_queue(records: list[Indexed], queues: QueueDirectory) -> dict[str, list[Indexed]]:
    grouped: dict[str, list[Indexed]] = {}
    for index, record in records:
        url = queues.source_url(record.source_arn)
        if url is not None:  # an unknown queue: nothing to change; Lambda's own handling still applies
            grouped.setdefault(url, []).append((index, record))
    return grouped


def _change_visibility(delays: list[tuple[int, Record, Delay]], sqs: Any, queues: QueueDirectory) -> set[int]:
    seconds = {index: action.seconds for index, _, action in delays}
    confirmed: set[int] = set()
    for url, group in _by_queue([(i, r) for i, r, _ in delays], queues).items():
        for chunk in chunks(group):
            entries = [
                {"Id": str(n), "ReceiptHandle": record.receipt_handle, "VisibilityTimeout": seconds[index]}
                for n, (index, record) in enumerate(chunk)
            ]
            try:
                failed = sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries).get("Failed") or []
            except Exception as error:
                failed = [{"Id": e["Id"], "Code": type(error).__name__} for e in entries]
            failed_entries = {int(item["Id"]) for item in failed}
            for item in failed:  # the message still comes back, after the queue's visibility timeout
                log.warning(
                    "visibility not changed",
                    extra={"message_id": chunk[int(item["Id"])][1].message_id, "code": item.get("Code")},
                )
            confirmed |= {index for n, (index, _) in enumerate(chunk) if n not in failed_entries}
    return confirmed


def _dead_letter(dead: list[tuple[int, Record, DeadLetter]], sqs: Any, queues: QueueDirectory) -> set[int]:
    if not dead:
        return set()
    dlq_url = queues.dlq_url()
    if dlq_url is None:  # no DLQ: keep the messages in the events queue rather than lose them
        log.error("dead-letter queue unknown: messages stay in the events queue", extra={"count": len(dead)})
        return set()
    entries = [(index, record, dead_letter_entry(record.body, action.info)) for index, record, action in dead]
    confirmed: list[Indexed] = []
    for batch in batches_within(entries, lambda item: entry_bytes(item[2])):
        request = [{"Id": str(n), **entry} for n, (_, _, entry) in enumerate(batch)]
        try:
            response = sqs.send_message_batch(QueueUrl=dlq_url, Entries=request)
            ok = {int(item["Id"]) for item in response.get("Successful") or []}
        except Exception as error:
            log.error("dead-letter send failed", extra={"error": f"{type(error).__name__}: {error}"[:500]})
            ok = set()
        confirmed += [(index, record) for n, (index, record, _) in enumerate(batch) if n in ok]
    _delete(confirmed, sqs, queues)  # best effort: Lambda deletes them too, since they are not failures
    return {index for index, _ in confirmed}


def _delete(records: list[Indexed], sqs: Any, queues: QueueDirectory) -> None:
    for url, group in _by_queue(records, queues).items():
        for chunk in chunks(group):
            entries = [{"Id": str(n), "ReceiptHandle": record.receipt_handle} for n, (_, record) in enumerate(chunk)]
            try:
                failed = sqs.delete_message_batch(QueueUrl=url, Entries=entries).get("Failed") or []
            except Exception as error:
                failed = entries
                log.warning("delete failed", extra={"error": type(error).__name__, "count": len(entries)})
            if failed:
                log.warning("some deletes failed", extra={"count": len(failed)})
