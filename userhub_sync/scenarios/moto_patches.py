"""moto as the scenarios need it: it runs in this process, so the harness can watch it, and one hot spot is fixed.

What is watched and why: `MotoWatch`. The fix: moto's ReceiveMessage rebuilt every queue attribute (a scan of the
whole queue) to read the retention period for each message it returned, so a receive cost O(depth) per message
and an outage, which makes the queue deep by nature, crawled; `_retention_check` is the same comparison, reading
the attribute directly. Behaviour is unchanged. Every patch is undone when the block ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class MotoWatch(logging.Filter):
    """What happened inside moto during a run (it runs in this process), so the figures can be read honestly.

    * `abandoned`: messages a worker received and never gave back (no delete, no visibility change) before they
      were received again. deliver settles every message it receives, so these are the batches of killed workers.
    * `double_receives`: moto 5.2.5's ReceiveMessage is not thread-safe: two concurrent long polls can both take the
      same message (a duplicate that real SQS would rarely produce). Seen as `mark_received` on an invisible message.
    * `errors`: the same race can fail with "Set changed size during iteration", an HTTP 500 that botocore retries;
      counted from the server's error log, which is kept off the console.
    """

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.double_receives = 0
        self.abandoned = 0
        self._held: dict[str, bool] = {}  # message id -> received and not yet settled
        self._handles: dict[str, str] = {}  # receipt handle -> message id
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.errors += 1
            return False
        return True

    def received(self, original: Callable[..., None]) -> Callable[..., None]:
        watch = self

        def mark_received(message: Any, *args: Any, **kwargs: Any) -> None:
            with watch._lock:
                if not message.visible:  # ReceiveMessage checked `visible` just before: another poll took it
                    watch.double_receives += 1
                elif watch._held.get(message.id):
                    watch.abandoned += 1
            original(message, *args, **kwargs)
            with watch._lock:
                watch._held[message.id] = True
                watch._handles[message.receipt_handle] = message.id

        return mark_received

    def settled(self, original: Callable[..., None]) -> Callable[..., None]:
        watch = self

        def settle(backend: Any, queue_name: str, receipt_handle: str, *args: Any, **kwargs: Any) -> None:
            original(backend, queue_name, receipt_handle, *args, **kwargs)
            with watch._lock:
                message_id = watch._handles.get(receipt_handle)
                if message_id:
                    watch._held[message_id] = False

        return settle


def _retention_check(self: Any, queue_name: str, message: Any) -> bool:
    """moto's own test of a message's age against the queue's retention, without rebuilding every attribute."""
    from moto.core.utils import unix_time

    queue = self.get_queue(queue_name)
    return int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()


@contextmanager
def watched_moto() -> Iterator[MotoWatch]:
    """This process's moto, watched (MotoWatch) and with the hot spot fixed, until the block ends."""
    from moto.sqs.models import Message, SQSBackend

    logger = logging.getLogger("werkzeug")
    watch = MotoWatch()
    patches: list[tuple[Any, str, Any]] = [
        (Message, "mark_received", watch.received(Message.mark_received)),
        (SQSBackend, "delete_message", watch.settled(SQSBackend.delete_message)),
        (SQSBackend, "change_message_visibility", watch.settled(SQSBackend.change_message_visibility)),
        (SQSBackend, "is_message_valid_based_on_retention_period", _retention_check),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    logger.addFilter(watch)
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield watch
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        logger.removeFilter(watch)
