"""CHANGED messages for the users a run found, onto the events queue.

A message counts as sent only when SQS said so in `Successful`; the run's snapshot and checkpoints are written after
`flush()` returns, so nothing they record can still be waiting here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from chalicelib.reconcile.errors import EnqueueError
from chalicelib.sqs_limits import BATCH_ENTRIES

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.type_defs import BatchResultErrorEntryTypeDef


@dataclass
class Enqueuer:
    """CHANGED messages to the events queue, ten per SendMessageBatch, failed entries retried with backoff."""

    sqs: SQSClient
    queue_url: str
    body: Callable[[str], str]  # the message body for a username
    _: KW_ONLY
    attempts: int = 6
    base_delay: float = 0.2
    sleep: Callable[[float], None] = time.sleep
    sent: int = field(default=0, init=False)
    retried: int = field(default=0, init=False)  # entries sent again after SQS failed them
    _buffer: list[str] = field(default_factory=list, init=False)

    def add(self, username: str) -> None:
        self._buffer.append(username)
        if len(self._buffer) >= BATCH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        """Send everything added so far; returns only when SQS has accepted all of it (or raises EnqueueError)."""
        while self._buffer:
            names, self._buffer = self._buffer[:BATCH_ENTRIES], self._buffer[BATCH_ENTRIES:]
            self._send(names)

    def _send(self, names: list[str]) -> None:
        pending = {str(i): self.body(name) for i, name in enumerate(names)}
        failures: list[BatchResultErrorEntryTypeDef] = []
        for attempt in range(self.attempts):
            if attempt:
                self.retried += len(pending)
                self.sleep(min(self.base_delay * 2 ** (attempt - 1), 5.0) * random.uniform(1, 1.25))
            response = self.sqs.send_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": i, "MessageBody": b} for i, b in pending.items()]
            )
            for ok in response.get("Successful") or []:
                if pending.pop(ok["Id"], None) is not None:
                    self.sent += 1
            if not pending:
                return
            failures = response.get("Failed") or []
            permanent = [f for f in failures if f.get("SenderFault")]
            if permanent:
                raise EnqueueError(f"SQS rejected {len(permanent)} message(s): {permanent[0].get('Code')}")
        codes = sorted({str(f.get("Code")) for f in failures})
        raise EnqueueError(f"{len(pending)} message(s) still failing after {self.attempts} attempts: {codes}")
