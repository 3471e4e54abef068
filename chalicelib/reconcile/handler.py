"""The entry points: `handle_scheduled_event` (the Lambda handlers) and `run_reconcile` (also the CLI's).

An invocation owns its pager for its whole life (`with UserPager(...)`), so sign-in recovery's ListUsers lookups at
the start of a new run are paced like the scan's pages, and nothing stays hooked on the client afterwards.
"""

from __future__ import annotations

import os
from typing import Any

from chalicelib.reconcile.clients import Deps
from chalicelib.reconcile.lease import Deadline
from chalicelib.reconcile.pacing import UserPager
from chalicelib.reconcile.records import ReconcileRequest, RunResult, parse_request
from chalicelib.reconcile.run import Progress, Reconciler
from chalicelib.settings import Settings, get_settings


def run_reconcile(
    request: ReconcileRequest,
    *,
    context: Any = None,
    deps: Deps | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """One invocation in Lambda; one whole run anywhere else.

    The context's remaining time is honoured only where a continuation can start: inside Lambda
    (AWS_LAMBDA_FUNCTION_NAME is always set there) or when a test injects a continuer. Elsewhere (the CLI, chalice
    local, a script calling `app.reconcile` with a stand-in context) there is no 15-minute limit and no function to
    continue in, so the run keeps going to the end.
    """
    settings = settings or get_settings()
    deps = deps or Deps()
    with UserPager(deps.cognito_client(), settings.reconcile_rate_limit, sleep=deps.sleep) as pager:
        reconciler = Reconciler(settings, deps, pager, progress)
        if request.continuation is None and not request.dry_run:  # a new run first re-enqueues lost sign-ins
            from chalicelib.signin_recovery import RecoveryClients, recover_at_run_start

            def recovery_clients() -> RecoveryClients:
                return RecoveryClients(
                    logs=deps.logs_client(),
                    sqs=deps.sqs_client(),
                    s3=deps.s3_client(),
                    cognito=deps.cognito_client,
                    queue_url=reconciler.events_queue_url,
                )

            reconciler.report.signins_recovered = recover_at_run_start(settings, context, recovery_clients)
        in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
        deadline = Deadline(context if in_lambda or deps.continuer else None, settings.reconcile_time_margin_seconds)
        return reconciler.invoke(request, deadline, context)


def handle_scheduled_event(event: dict[str, Any], context: Any, *, deps: Deps | None = None) -> dict[str, Any]:
    """The `reconcile` and `reconcile_continue` handlers: returns this invocation's summary of the run."""
    return run_reconcile(parse_request(event), context=context, deps=deps).summary.to_dict()
