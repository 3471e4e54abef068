"""What each Lambda handler calls, importing its module only when that function runs.

All functions share one zip and one `app.py`, so a module-level import of the delivery code would put pydantic and
httpx on every post_auth cold start. Importing here, inside the call, keeps each function's cold start to what
it uses.

`TolerantEvent` is the exception: Chalice's schedule and EventBridge wrappers build their event object before our
function runs, so the class has to be ready when app.py is imported (chalice.app is loaded by then anyway).
"""

from __future__ import annotations

from typing import Any

from chalice.app import CloudWatchEvent


class TolerantEvent(CloudWatchEvent):
    """What `app.reconcile` and `app.capture` receive: an EventBridge event, or a payload made by hand (an operator's
    `{"dry_run": true}`, a test's envelope, moto's SQS copy of an event, which lacks `account`).

    Chalice's CloudWatchEvent reads `event['version']`, `['account']`, `['region']`, `['detail']`, `['detail-type']`,
    `['source']`, `['time']`, `['id']` and `['resources']` (chalice 1.34, app.py), so `{"dry_run": true}`, `{}` and
    the event `sam local generate-event cloudwatch scheduled-event` prints (no `version`) raised KeyError before
    reconcile ran. Here a missing key is empty and `to_dict()` is the payload as sent: reconcile decides what it means
    and refuses what it does not understand (chalicelib.reconcile.parse_request).
    """

    def _extract_attributes(self, event_dict: Any) -> None:
        event: dict[str, Any] = event_dict if isinstance(event_dict, dict) else {}
        self.version = str(event.get("version") or "")
        self.account = str(event.get("account") or "")
        self.region = str(event.get("region") or "")
        self.detail = event.get("detail") or {}
        self.detail_type = str(event.get("detail-type") or "")
        self.source = str(event.get("source") or "")
        self.time = str(event.get("time") or "")
        self.event_id = str(event.get("id") or "")
        self.resources = event.get("resources") or []


def post_auth(event: Any, context: Any) -> Any:
    from chalicelib.post_auth import handle_trigger

    return handle_trigger(event, context)


def deliver(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from chalicelib.delivery import handle_sqs_event

    return handle_sqs_event(event, context)


def capture(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from chalicelib.capture import handle_capture_event

    return handle_capture_event(event, context)


def reconcile(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from chalicelib.reconcile import handle_scheduled_event

    return handle_scheduled_event(event, context)
