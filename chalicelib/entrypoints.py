"""What each Lambda handler calls, importing its module only when that function runs.

All functions share one zip and one `app.py`, so a module-level import of the delivery code would put pydantic and
httpx on every post_auth cold start. Importing here, inside the call, keeps each function's cold start to what
it uses.
"""

from __future__ import annotations

from typing import Any


def post_auth(event: Any, context: Any) -> Any:
    from chalicelib.post_auth import handle_trigger

    return handle_trigger(event, context)


def deliver(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from chalicelib.delivery import handle_sqs_event

    return handle_sqs_event(event, context)


def reconcile(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from chalicelib.reconcile import handle_scheduled_event

    return handle_scheduled_event(event, context)
