"""AWS as the operator commands see it: clients that honour AWS_ENDPOINT_URL like the Lambdas, who we are, and the
lookups every command needs the same way.

Invariant: a queue that does not exist is `None` from `queue_url_or_none`, whatever spelling of "no such queue"
the endpoint uses; every other failure propagates, so a missing permission never reads as a missing queue. A check
that reports an AWS failure as a status catches `aws_errors()` only: a bug (TypeError, KeyError) stays a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from userhub_sync.ops.errors import OpsError

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError
    from types_boto3_cloudwatch import CloudWatchClient
    from types_boto3_cognito_idp import CognitoIdentityProviderClient
    from types_boto3_lambda import LambdaClient
    from types_boto3_logs import CloudWatchLogsClient
    from types_boto3_s3 import S3Client
    from types_boto3_sqs import SQSClient
    from types_boto3_ssm import SSMClient
    from types_boto3_sts import STSClient

# SQS's query protocol and its JSON protocol name a missing queue differently
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


@overload
def client(service: Literal["sqs"], *, max_attempts: int = ..., read_timeout: float = ...) -> SQSClient: ...
@overload
def client(service: Literal["s3"], *, max_attempts: int = ..., read_timeout: float = ...) -> S3Client: ...
@overload
def client(service: Literal["ssm"], *, max_attempts: int = ..., read_timeout: float = ...) -> SSMClient: ...
@overload
def client(service: Literal["sts"], *, max_attempts: int = ..., read_timeout: float = ...) -> STSClient: ...
@overload
def client(service: Literal["lambda"], *, max_attempts: int = ..., read_timeout: float = ...) -> LambdaClient: ...
@overload
def client(
    service: Literal["cognito-idp"], *, max_attempts: int = ..., read_timeout: float = ...
) -> CognitoIdentityProviderClient: ...
@overload
def client(
    service: Literal["cloudwatch"], *, max_attempts: int = ..., read_timeout: float = ...
) -> CloudWatchClient: ...
@overload
def client(service: Literal["logs"], *, max_attempts: int = ..., read_timeout: float = ...) -> CloudWatchLogsClient: ...
@overload
def client(service: str, *, max_attempts: int = ..., read_timeout: float = ..., region: str | None = ...) -> Any: ...
def client(service: str, *, max_attempts: int = 3, read_timeout: float = 30.0, region: str | None = None) -> Any:
    """A boto3 client that honours AWS_ENDPOINT_URL / AWS_DEFAULT_REGION like the Lambdas do (or `region`, for a
    resource read in its home Region)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
        user_agent_appid="userhub-sync-ops",  # type: ignore[call-arg]  # botocore has it; botocore-stubs lag
    )
    return boto3.client(  # type: ignore[call-overload]  # any service, typed by the overloads
        service, region_name=region, config=config
    )


@dataclass(frozen=True)
class Identity:
    account: str
    region: str
    partition: str = "aws"


def caller_identity() -> Identity:
    """Account from STS GetCallerIdentity, region from the session (the one boto3 and `chalice deploy` use)."""
    import boto3

    region = boto3.session.Session().region_name
    if not region:
        raise OpsError("no AWS region configured: set AWS_DEFAULT_REGION (or AWS_REGION, or a profile's region)")
    ident = client("sts").get_caller_identity()
    arn = ident.get("Arn", "")
    partition = arn.split(":")[1] if arn.startswith("arn:") and arn.count(":") >= 2 else "aws"
    return Identity(account=ident["Account"], region=region, partition=partition or "aws")


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ClientError (or the exception's class name)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or type(error).__name__)
    return type(error).__name__


def aws_errors() -> tuple[type[ClientError], type[BotoCoreError]]:
    """What AWS and the way to it raise (a refused call; no credentials, a timeout, a dropped connection), for
    `except aws_errors():`. Imported when an exception is being matched: the CLI starts without botocore."""
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def queue_url_or_none(sqs: SQSClient, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except aws_errors() as error:
        if error_code(error) in MISSING_QUEUE_CODES:
            return None
        raise


def queue_arn(sqs: SQSClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
