"""What AWS refuses is a status or a clear message; a bug in our code is a traceback (ops/aws.py's house rule).

Each place that turns a failure into output catches `aws_errors()` (plus OpsError where it raises one), not
Exception. The first table shows that an AWS failure met by an operator reads as it did before; the second, that a
planted TypeError now propagates instead of becoming a wrong status line or a misleading message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

import chalicelib.reconcile
from tests.support import ADMIN_KEY, bootstrap, cli, create_pool, fake_chalice_deploy, iam_enforced, queue_url
from userhub_sync.cli import dlq as dlq_commands
from userhub_sync.ops import bootstrap as bootstrap_module
from userhub_sync.ops import status as status_module

BUCKET = "userhub-sync-dev-snapshots"
EVENTS, DLQ = "userhub-sync-dev-events", "userhub-sync-dev-dlq"
KEY_ENV = {"USERHUB_ADMIN_KEY": "unused-by-this-test"}
CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens on loopback here, so the connection is refused


def _bug(*_args: Any, **_kwargs: Any) -> Any:
    raise TypeError("a planted bug")


def _poison_letter() -> None:
    boto3.client("sqs").send_message(QueueUrl=queue_url(DLQ), MessageBody="{not json")


# --- an AWS failure reads as it did before -------------------------------------------------------------------


def _kms_key_aws_does_not_know(project: Any) -> None:
    result = cli("bootstrap", "--stage", "dev", "--kms-key", "alias/no-such-key", env=KEY_ENV)
    assert result.exit_code == 1, result.output
    assert "KMS key 'alias/no-such-key' not found or not readable (NotFoundException)" in result.output


def _bucket_aws_does_not_let_us_see(project: Any) -> None:
    bootstrap()
    # AWS checks s3:ListBucket for HeadBucket; moto checks an action it calls s3:HeadBucket: both denied
    with iam_enforced([{"Effect": "Allow", "Action": "*", "Resource": "*"}, _deny("s3:ListBucket", "s3:HeadBucket")]):
        result = cli("bootstrap", "--stage", "dev", env=KEY_ENV)
    assert result.exit_code == 1, result.output
    assert f"bucket {BUCKET} exists but is not yours" in result.output


def _dashboard_aws_does_not_know(project: Any) -> None:
    result = cli("bootstrap", "--stage", "dev", "--check", "--json", env=KEY_ENV)  # GetDashboard: ResourceNotFound
    [dashboard] = [step for step in json.loads(result.stdout)["steps"] if step["resource"] == "dashboard"]
    assert (dashboard["name"], dashboard["status"]) == ("userhub-sync-dev", "missing")


def _pool_aws_does_not_know(project: Any) -> None:
    pool_id = create_pool()
    bootstrap(pool_id)
    fake_chalice_deploy(project)
    boto3.client("cognito-idp").delete_user_pool(UserPoolId=pool_id)
    result = cli("wire", "--stage", "dev")
    assert result.exit_code == 1, result.output
    assert f"user pool {pool_id} not found" in result.output


def _status_without_cloudwatch_or_bucket(project: Any) -> None:
    bootstrap()
    boto3.client("s3").delete_bucket(Bucket=BUCKET)
    boto3.client("sqs").send_message(QueueUrl=queue_url(EVENTS), MessageBody="{}")  # an age to look up
    result = cli("status", "--stage", "dev", "--json", env={"AWS_ENDPOINT_URL_CLOUDWATCH": CLOSED_PORT})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["last_reconcile"]["status"] == "error"
    assert report["last_reconcile"]["detail"].startswith("NoSuchBucket: ")
    assert report["alarms"]["error"].startswith("EndpointConnectionError: ")
    assert report["events_queue"]["oldest_age_source"] == "unknown: no CloudWatch datapoint (use --peek)"


def _purge_aws_refuses_to_delete(project: Any) -> None:
    bootstrap()
    _poison_letter()
    with iam_enforced([{"Effect": "Allow", "Action": "*", "Resource": "*"}, _deny("sqs:DeleteMessage*")]):
        result = cli("dlq", "purge", "--stage", "dev", "--kind", "poison", "--yes", "--json", "--wait-seconds", "0")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["failed"] == 1


def _summary_that_does_not_parse(project: Any) -> None:
    """Not AWS's failure but bad data: last_reconcile still says `error` rather than raising."""
    bootstrap()
    boto3.client("s3").put_object(Bucket=BUCKET, Key="reconcile/last-run.json", Body=b"{not json")
    report = json.loads(cli("status", "--stage", "dev", "--json").stdout)
    assert report["last_reconcile"]["status"] == "error"
    assert report["last_reconcile"]["detail"].startswith("ValidationError: ")


def _admin_key_aws_refuses_to_store(project: Any) -> None:
    """The one broad block left in ops: whatever fails, the key stays out of the output."""
    with iam_enforced([{"Effect": "Allow", "Action": "*", "Resource": "*"}, _deny("ssm:PutParameter")]):
        result = cli("bootstrap", "--stage", "dev", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert result.exit_code == 1, result.output
    assert "could not store the Admin key in /userhub-sync/dev/admin-key: " in result.output
    assert ADMIN_KEY not in result.output


def _deny(*actions: str) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": list(actions), "Resource": "*"}


@pytest.mark.parametrize(
    "scenario",
    [
        _kms_key_aws_does_not_know,
        _bucket_aws_does_not_let_us_see,
        _dashboard_aws_does_not_know,
        _pool_aws_does_not_know,
        _status_without_cloudwatch_or_bucket,
        _purge_aws_refuses_to_delete,
        _summary_that_does_not_parse,
        _admin_key_aws_refuses_to_store,
    ],
    ids=lambda scenario: scenario.__name__.strip("_"),
)
def test_an_aws_failure_reads_as_before(project, scenario: Callable[[Any], None]):
    scenario(project)


# --- a bug in our code is a traceback, not a status line ---------------------------------------------------------
# The bug is planted with monkeypatch: nothing in the code raises a TypeError on purpose, so it is the only way to
# make a programming error appear inside the blocks that report AWS failures.


def _client_with_bug(module: Any, monkeypatch: pytest.MonkeyPatch, service: str, method: str) -> None:
    """`module.client(service)` is the real client but for `method`, which has a bug."""
    real = module.client

    def client(name: str, **kwargs: Any) -> Any:
        made = real(name, **kwargs)
        if name == service:
            setattr(made, method, _bug)
        return made

    monkeypatch.setattr(module, "client", client)


def _plant_in_kms_lookup(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    _client_with_bug(bootstrap_module, monkeypatch, "kms", "describe_key")  # was: "KMS key … not readable"
    return ("bootstrap", "--stage", "dev", "--kms-key", "alias/any")


def _plant_in_last_reconcile(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    monkeypatch.setattr(chalicelib.reconcile, "read_last_summary", _bug)  # was: last_reconcile "error"
    return ("status", "--stage", "dev", "--json")


def _plant_in_alarm_states(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    monkeypatch.setattr(status_module, "alarm_states", _bug)  # was: alarms "could not be read"
    return ("status", "--stage", "dev", "--json")


def _plant_in_purge_delete(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    _poison_letter()
    _client_with_bug(dlq_commands, monkeypatch, "sqs", "delete_message_batch")  # was: "failed": 1
    return ("dlq", "purge", "--stage", "dev", "--kind", "poison", "--yes", "--wait-seconds", "0")


@pytest.mark.parametrize(
    "plant",
    [_plant_in_kms_lookup, _plant_in_last_reconcile, _plant_in_alarm_states, _plant_in_purge_delete],
    ids=lambda plant: plant.__name__.removeprefix("_plant_in_"),
)
def test_a_bug_is_a_traceback_not_a_status(project, monkeypatch, plant: Callable[[pytest.MonkeyPatch], tuple]):
    bootstrap()
    result = cli(*plant(monkeypatch), env=KEY_ENV)
    assert isinstance(result.exception, TypeError), result.output
    assert str(result.exception) == "a planted bug"
