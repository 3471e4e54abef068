"""When deliver believes Lambda honours its partial batch response, and for how long it keeps believing it.

A wrong "yes" loses the retries of a batch (Lambda deletes every record of a normal return); a wrong "no" only
costs a failed invocation. So: asked of Lambda's real API (moto over HTTP), remembered for 5 minutes, an unanswered
question counts as "no" and is asked again after 30 s.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.delivery.mapping import RECHECK_AFTER_ERROR_SECONDS, RECHECK_SECONDS, MappingProbe
from userhub_sync.local.moto import MOTO_ACCOUNT, patched_environ

FUNCTION = "userhub-sync-probe-test"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:test-events"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0  # every test starts here

    def __call__(self) -> float:
        return self.now


class Lambda:
    """moto's Lambda API, counting ListEventSourceMappings calls; `failing` makes them fail as AccessDenied would."""

    def __init__(self) -> None:
        self.client = boto3.client("lambda")
        self.calls = 0
        self.failing = False
        self.client.meta.events.register("before-call.lambda.ListEventSourceMappings", self._before)

    def _before(self, **_: object) -> None:
        self.calls += 1
        if self.failing:  # moto grants every permission: the refusal a real account can give is simulated here
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListEventSourceMappings")


@pytest.fixture
def mapping(aws) -> Iterator[str]:
    """A deployed `deliver` and its SQS mapping (disabled, so moto does not invoke it); yields the mapping's UUID."""
    role = boto3.client("iam").create_role(RoleName="probe-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "")
    lam = boto3.client("lambda")
    lam.create_function(
        FunctionName=FUNCTION, Runtime="python3.11", Role=role, Handler="app.deliver", Code={"ZipFile": code.getvalue()}
    )
    uuid = lam.create_event_source_mapping(EventSourceArn=QUEUE_ARN, FunctionName=FUNCTION, Enabled=False)["UUID"]
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": FUNCTION}):
        yield uuid


def set_partial_responses(uuid: str, on: bool) -> None:
    boto3.client("lambda").update_event_source_mapping(
        UUID=uuid, FunctionResponseTypes=["ReportBatchItemFailures"] if on else []
    )


def test_the_answer_is_asked_once_and_kept_for_five_minutes(mapping: str) -> None:
    set_partial_responses(mapping, True)
    api, clock = Lambda(), Clock()
    probe = MappingProbe(lambda: api.client, clock)
    assert probe.honours_partial_responses(QUEUE_ARN) is True
    set_partial_responses(mapping, False)
    clock.now = 1000.0 + RECHECK_SECONDS - 1
    assert probe.honours_partial_responses(QUEUE_ARN) is True and api.calls == 1
    clock.now = 1000.0 + RECHECK_SECONDS  # five minutes on: asked again, and the change is seen
    assert probe.honours_partial_responses(QUEUE_ARN) is False and api.calls == 2


def test_a_mapping_without_the_setting_is_a_no(mapping: str) -> None:
    api = Lambda()
    assert MappingProbe(lambda: api.client, Clock()).honours_partial_responses(QUEUE_ARN) is False


def test_an_unanswered_question_is_a_no_asked_again_after_thirty_seconds(mapping: str) -> None:
    set_partial_responses(mapping, True)
    api, clock = Lambda(), Clock()
    probe = MappingProbe(lambda: api.client, clock)
    api.failing = True
    assert probe.honours_partial_responses(QUEUE_ARN) is False
    api.failing = False
    clock.now = 1000.0 + RECHECK_AFTER_ERROR_SECONDS - 1
    assert probe.honours_partial_responses(QUEUE_ARN) is False and api.calls == 1
    clock.now = 1000.0 + RECHECK_AFTER_ERROR_SECONDS
    assert probe.honours_partial_responses(QUEUE_ARN) is True and api.calls == 2


def test_each_queue_is_asked_about_separately(mapping: str) -> None:
    set_partial_responses(mapping, True)
    api = Lambda()
    probe = MappingProbe(lambda: api.client, Clock())
    other = QUEUE_ARN.replace("test-events", "other-events")
    assert (probe.honours_partial_responses(QUEUE_ARN), probe.honours_partial_responses(other)) == (True, False)
    assert api.calls == 2


def test_a_record_without_a_source_queue_is_a_no_without_asking(mapping: str) -> None:
    api = Lambda()
    assert MappingProbe(lambda: api.client, Clock()).honours_partial_responses(None) is False
    assert api.calls == 0


def test_outside_lambda_the_caller_honours_partial_responses(aws) -> None:
    with patched_environ({"AWS_LAMBDA_FUNCTION_NAME": None}):
        assert MappingProbe(lambda: pytest.fail("no Lambda API call outside Lambda")).honours_partial_responses(None)


def test_the_question_costs_at_most_seconds_of_an_invocation(aws) -> None:
    """Asked with a client of short timeouts and one retry, like the settling calls: a slow Lambda API must not eat
    the time the batch needs."""
    from chalicelib.delivery import Deliverer
    from chalicelib.settings import get_settings

    deliverer = Deliverer(get_settings())
    client = deliverer._lambda_client()
    assert deliverer._lambda_client() is client  # one per container
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (1, 3)
    assert client.meta.config.retries["total_max_attempts"] == 2
