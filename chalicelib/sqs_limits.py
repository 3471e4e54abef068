"""Amazon SQS's limits and those of Lambda's SQS event source, stated once, with the helpers that keep requests and
deliver's event-source settings (batch size, batching window, fleet bound) within them.

Standard library only: post_auth imports it on the sign-in path. Sources: the SQS quotas page
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html) and AWS's
announcement that the message and batch payload limit rose from 256 KiB to 1 MiB
(https://aws.amazon.com/blogs/compute/more-room-to-build-serverless-services-now-support-payloads-up-to-1-mb).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

BATCH_ENTRIES = 10  # entries per SendMessageBatch / DeleteMessageBatch / ChangeMessageVisibilityBatch
PAYLOAD_BYTES = 1_048_576  # one message, and one whole batch request: bodies plus attribute names, types, values
MESSAGE_ATTRIBUTES = 10  # message attributes per message
MAX_VISIBILITY_SECONDS = 43_200  # ChangeMessageVisibility refuses more than 12 h
MIN_RETENTION_SECONDS = 60
MAX_RETENTION_SECONDS = 1_209_600  # 14 days

# Lambda's SQS event source: ScalingConfig.MaximumConcurrency, the most deliver containers the mapping runs
# (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html). DELIVER_MAX_CONCURRENCY sets it.
MIN_MAXIMUM_CONCURRENCY = 2
MAX_MAXIMUM_CONCURRENCY = 1000
DEFAULT_DELIVER_MAX_CONCURRENCY = 5
# Its BatchSize for a standard queue, and MaximumBatchingWindowInSeconds, which must be at least 1 s for a batch over
# 10 (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html).
MAX_EVENT_SOURCE_BATCH = 10_000
MAX_BATCHING_WINDOW_SECONDS = 300
DEFAULT_DELIVERY_CONCURRENCY = 16  # UserHub calls in flight per deliver container (DELIVERY_CONCURRENCY)
MAX_DELIVERY_CONCURRENCY = 512
BATCH_ROUNDS = 32  # a batch's idle tail then costs a container at most about 5 % (docs/PERFORMANCE.md, finding 6)


def deliver_max_concurrency(value: str | None) -> int:
    """DELIVER_MAX_CONCURRENCY as a whole number within Lambda's bounds (unset: the default)."""
    if value is None or not value.strip():
        return DEFAULT_DELIVER_MAX_CONCURRENCY
    bounds = "Lambda's bounds for an SQS event source's MaximumConcurrency"
    return _whole("DELIVER_MAX_CONCURRENCY", value, MIN_MAXIMUM_CONCURRENCY, MAX_MAXIMUM_CONCURRENCY, bounds)


def deliver_batch_size(value: str | None, concurrency: str | None) -> int:
    """DELIVER_BATCH_SIZE within Lambda's bounds; unset: BATCH_ROUNDS rounds of DELIVERY_CONCURRENCY's calls."""
    if value is None or not value.strip():
        calls = DEFAULT_DELIVERY_CONCURRENCY
        if concurrency and concurrency.strip():
            calls = _whole("DELIVERY_CONCURRENCY", concurrency, 1, MAX_DELIVERY_CONCURRENCY, "calls in flight")
        return min(MAX_EVENT_SOURCE_BATCH, BATCH_ROUNDS * calls)
    return _whole("DELIVER_BATCH_SIZE", value, 1, MAX_EVENT_SOURCE_BATCH, "Lambda's bounds for an SQS batch")


def deliver_batching_window(value: str | None, batch_size: int) -> int:
    """DELIVER_BATCHING_WINDOW_SECONDS within Lambda's bounds; unset: none up to 10 records, 5 s above (a fuller
    batch at modest traffic, for at most 5 s more latency)."""
    if value is None or not value.strip():
        return 0 if batch_size <= 10 else 5
    bounds = "Lambda's bounds for MaximumBatchingWindowInSeconds"
    seconds = _whole("DELIVER_BATCHING_WINDOW_SECONDS", value, 0, MAX_BATCHING_WINDOW_SECONDS, bounds)
    if seconds == 0 and batch_size > 10:
        raise ValueError(
            f"DELIVER_BATCHING_WINDOW_SECONDS must be at least 1 with a batch of {batch_size} (over 10): Lambda "
            "refuses a larger batch without a batching window"
        )
    return seconds


def _whole(name: str, value: str, low: int, high: int, bounds: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high} ({bounds}), not {number}")
    return number


# The characters SQS accepts in a message body or string attribute: #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
# #x10000-#x10FFFF. Anything else (a lone surrogate, a control character) makes the whole request fail.
_NOT_ALLOWED = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def allowed_text(text: str) -> str:
    """`text` with every character SQS would refuse replaced by U+FFFD."""
    return _NOT_ALLOWED.sub("\ufffd", text)


def chunks(items: Sequence[T], size: int = BATCH_ENTRIES) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def batches_within(items: Sequence[T], size_of: Callable[[T], int]) -> list[list[T]]:
    """`items` in request-sized groups: at most BATCH_ENTRIES each and PAYLOAD_BYTES in all (large bodies add up)."""
    batches: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) == BATCH_ENTRIES or total + size > PAYLOAD_BYTES):
            batches.append(current)
            current, total = [], 0
        current.append(item)
        total += size
    if current:
        batches.append(current)
    return batches
