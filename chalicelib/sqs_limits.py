"""Amazon SQS's limits, stated once, and the two helpers that keep requests within them.

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
# its BatchSize for a standard queue (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html)
MAX_EVENT_SOURCE_BATCH = 10_000


def deliver_max_concurrency(value: str | None) -> int:
    """DELIVER_MAX_CONCURRENCY as a whole number within Lambda's bounds (unset: the default)."""
    if value is None or not value.strip():
        return DEFAULT_DELIVER_MAX_CONCURRENCY
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"DELIVER_MAX_CONCURRENCY must be a whole number, not {value!r}") from None
    if not MIN_MAXIMUM_CONCURRENCY <= number <= MAX_MAXIMUM_CONCURRENCY:
        raise ValueError(
            f"DELIVER_MAX_CONCURRENCY must be between {MIN_MAXIMUM_CONCURRENCY} and {MAX_MAXIMUM_CONCURRENCY} "
            f"(Lambda's bounds for an SQS event source's MaximumConcurrency), not {number}"
        )
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
