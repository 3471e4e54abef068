"""Delivery of queued messages to UserHub; `handle_sqs_event` is the `deliver` Lambda handler's body.

Modules, in the order a record meets them: `records` (parse), `calls` (UserHub), `policy` and `plan` (what to do),
`settle` (SQS), `mapping` (will Lambda honour a partial batch response?), `deliverer` (the whole batch).
"""

from __future__ import annotations

from typing import Any

from chalicelib.delivery.deliverer import Deliverer, Disposition, RetriesPending
from chalicelib.delivery.policy import RetryPolicy
from chalicelib.settings import get_settings

__all__ = ["Deliverer", "Disposition", "RetriesPending", "RetryPolicy", "get_deliverer", "handle_sqs_event"]

NO_CONTEXT_MS = 900_000  # Lambda's longest timeout: what a caller without a context (a script) gets

_deliverer: Deliverer | None = None


def get_deliverer() -> Deliverer:
    """The warm container's deliverer; rebuilt only if the settings (or AWS endpoint) changed."""
    global _deliverer
    settings = get_settings()
    if _deliverer is None or _deliverer.settings is not settings:
        _deliverer = Deliverer(settings)
    return _deliverer


def reset_deliverer() -> None:
    """Drop the cached deliverer, as a new container would start without one (tests, the CLI switching stages)."""
    global _deliverer
    _deliverer = None


def handle_sqs_event(event: Any, context: Any) -> dict[str, Any]:
    remaining = getattr(context, "get_remaining_time_in_millis", None) or (lambda: NO_CONTEXT_MS)
    return get_deliverer().handle(event, remaining)
