"""userhub-sync: keeps UserHub in step with a Cognito user pool. Thin on purpose: logic is in chalicelib/.

Decorator arguments come from the stage's environment variables (Chalice copies them into os.environ before
importing this file), so one app serves every stage of .chalice/config.json.
"""

import os

from chalice import Chalice, Cron

from chalicelib import entrypoints
from chalicelib.capture_rule import EVENT_PATTERN, capture_enabled
from chalicelib.sqs_limits import deliver_batch_size, deliver_batching_window, deliver_max_concurrency

app = Chalice(app_name="userhub-sync")

EVENTS_QUEUE_NAME = os.environ.get("EVENTS_QUEUE_NAME", "userhub-sync-events")
# unset: 32 rounds of DELIVERY_CONCURRENCY calls, so the idle tail of a batch costs a container ≤ 5 %
DELIVER_BATCH_SIZE = deliver_batch_size(os.environ.get("DELIVER_BATCH_SIZE"), os.environ.get("DELIVERY_CONCURRENCY"))
DELIVER_BATCHING_WINDOW = deliver_batching_window(os.environ.get("DELIVER_BATCHING_WINDOW_SECONDS"), DELIVER_BATCH_SIZE)
# the fleet bound: at most this many deliver containers (docs/CONFIGURATION.md has the arithmetic)
DELIVER_MAX_CONCURRENCY = deliver_max_concurrency(os.environ.get("DELIVER_MAX_CONCURRENCY"))
RECONCILE_SCHEDULE = os.environ.get("RECONCILE_SCHEDULE") or Cron(0, 3, "*", "*", "?", "*")  # 03:00 UTC nightly
CAPTURE = capture_enabled(os.environ.get("CAPTURE"))  # off: no capture function and no rule in this stage


@app.lambda_function(name="post_auth")
def post_auth(event, context):
    return entrypoints.post_auth(event, context)


@app.lambda_function(name="post_confirmation")
def post_confirmation(event, context):
    return entrypoints.post_auth(event, context)


@app.on_sqs_message(
    queue=EVENTS_QUEUE_NAME,
    batch_size=DELIVER_BATCH_SIZE,
    maximum_batching_window_in_seconds=DELIVER_BATCHING_WINDOW,
    maximum_concurrency=DELIVER_MAX_CONCURRENCY,
)
def deliver(event):
    return entrypoints.deliver(event.to_dict(), event.context)


@app.schedule(RECONCILE_SCHEDULE, name="reconcile")
def reconcile(event):
    return entrypoints.reconcile(event.to_dict(), event.context)


reconcile.event_class = entrypoints.TolerantEvent  # also takes hand-made payloads: docs/RECONCILE.md


@app.lambda_function(name="reconcile_continue")
def reconcile_continue(event, context):
    return entrypoints.reconcile(event, context)


if CAPTURE:

    @app.on_cw_event(EVENT_PATTERN, name="capture")
    def capture(event):
        return entrypoints.capture(event.to_dict(), event.context)

    capture.event_class = entrypoints.TolerantEvent  # also takes envelopes with keys missing (tests, local tooling)
