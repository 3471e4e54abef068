"""What reconcile talks to: boto3 clients kept for the container's life, or the fakes a test injects in `Deps`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3

from chalicelib.observability import get_logger
from chalicelib.reconcile.errors import ReconcileError
from chalicelib.reconcile.pacing import make_cognito_client
from chalicelib.settings import Settings, environment_key

if TYPE_CHECKING:
    from types_boto3_cognito_idp import CognitoIdentityProviderClient
    from types_boto3_lambda import LambdaClient
    from types_boto3_logs import CloudWatchLogsClient
    from types_boto3_s3 import S3Client
    from types_boto3_sqs import SQSClient

log = get_logger("reconcile")

Continuer = Callable[[dict[str, Any]], None]  # starts the next invocation of the run with this payload
C = TypeVar("C")

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _cached(service: str, build: Callable[[], C]) -> C:
    """boto3 clients built once per container (warm invocations reuse them and their connection pools)."""
    with _clients_lock:
        if _clients.get("_environment") != environment_key():  # never in Lambda; see settings.environment_key
            _clients.clear()
            _clients["_environment"] = environment_key()
        if service not in _clients:
            _clients[service] = build()
        return _clients[service]


def reset_clients() -> None:
    with _clients_lock:
        _clients.clear()


@dataclass
class Deps:
    """Everything reconcile talks to; None means the real (cached) boto3 client. Tests inject fakes here."""

    cognito: CognitoIdentityProviderClient | None = None
    sqs: SQSClient | None = None
    s3: S3Client | None = None
    lambda_client: LambdaClient | None = None
    continuer: Continuer | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def cognito_client(self) -> CognitoIdentityProviderClient:
        return self.cognito or _cached("cognito-idp", make_cognito_client)

    def sqs_client(self) -> SQSClient:
        return self.sqs or _cached("sqs", lambda: boto3.client("sqs"))

    def s3_client(self) -> S3Client:
        return self.s3 or _cached("s3", lambda: boto3.client("s3"))

    def lambda_api(self) -> LambdaClient:
        return self.lambda_client or _cached("lambda", lambda: boto3.client("lambda"))

    def logs_client(self) -> CloudWatchLogsClient:
        return _cached("logs", lambda: boto3.client("logs"))


def continue_function_name(context: Any, settings: Settings) -> str:
    """The function that continues a run: RECONCILE_CONTINUE_FUNCTION, else derived from the running function."""
    if settings.reconcile_continue_function:
        return settings.reconcile_continue_function
    name = str(getattr(context, "function_name", "") or "")
    for suffix in ("-reconcile_continue", "-reconcile"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "-reconcile_continue"
    raise ReconcileError(f"cannot derive the continuation function from {name!r}: set RECONCILE_CONTINUE_FUNCTION")


def lambda_continuer(client: LambdaClient, function_name: str) -> Continuer:
    """A continuer that invokes `function_name` asynchronously (InvocationType Event: Lambda answers 202)."""

    def invoke(payload: dict[str, Any]) -> None:
        response = client.invoke(
            FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
        if response.get("StatusCode") != 202:
            raise ReconcileError(f"starting {function_name} returned {response.get('StatusCode')}")
        log.info("reconcile continues in a new invocation", extra={"function": function_name, **payload})

    return invoke
