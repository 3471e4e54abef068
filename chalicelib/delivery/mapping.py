"""Whether Lambda will honour `batchItemFailures` for the mapping that invoked us.

Lambda reads a partial batch response only when the SQS event source mapping has `FunctionResponseTypes:
["ReportBatchItemFailures"]`; without it a normal return means "all succeeded" and Lambda deletes every record,
the ones `deliver` wanted retried included. Chalice never sets it (aws/chalice#2029): `userhub-sync wire` does,
after `chalice deploy`. So when a batch has records to retry, `deliver` asks Lambda (ListEventSourceMappings, at
most every few minutes per container) and, unless the setting is confirmed, deletes the settled records itself and
fails the invocation, which makes Lambda keep the rest.

Outside Lambda (`AWS_LAMBDA_FUNCTION_NAME` unset) the caller is `userhub-sync worker` or a test, which honour partial
responses exactly as a mapping with the setting does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from chalicelib.observability import get_logger

log = get_logger("deliver")
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"
RECHECK_SECONDS = 300.0
RECHECK_AFTER_ERROR_SECONDS = 30.0


class MappingProbe:
    def __init__(self, lambda_client: Callable[[], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self._lambda_client = lambda_client
        self._clock = clock
        self._known: dict[str, tuple[float, bool]] = {}  # source ARN -> (valid until, honours partial responses)

    def honours_partial_responses(self, source_arn: str | None) -> bool:
        function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        if not function:
            return True
        if not source_arn:
            return False
        now = self._clock()
        known = self._known.get(source_arn)
        if known is not None and now < known[0]:
            return known[1]
        try:
            mappings = self._lambda_client().list_event_source_mappings(
                FunctionName=function, EventSourceArn=source_arn
            )["EventSourceMappings"]
        except Exception as error:  # no permission, throttled: assume the worst, ask again soon
            log.warning(
                "cannot read the SQS mapping's FunctionResponseTypes: failing the invocation to keep the retries",
                extra={"error": f"{type(error).__name__}: {error}"[:300]},
            )
            self._known[source_arn] = (now + RECHECK_AFTER_ERROR_SECONDS, False)
            return False
        honours = any(REPORT_BATCH_ITEM_FAILURES in (m.get("FunctionResponseTypes") or []) for m in mappings)
        if not honours:
            log.error(
                "the SQS mapping lacks ReportBatchItemFailures: run `userhub-sync wire --stage <stage>`; until then "
                "each batch with retries fails as a whole after its settled records are deleted",
                extra={"function": function, "queue_arn": source_arn},
            )
        self._known[source_arn] = (now + RECHECK_SECONDS, honours)
        return honours
