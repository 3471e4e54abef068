"""What reconcile talks to: boto3 clients kept for the container's life, or the fakes a test injects in `Deps`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.observability import get_logger
from chalicelib.reconcile.errors import ReconcileError
from chalicelib.reconcile.pacing import make_cognito_client
from chalicelib.settings import Settings, environment_key

log = get_logger("reconcile")

Continuer = Callable[[dict[str, Any]], None]  # starts the next invocation of the run with this payload

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def cached_client(service: str) -> Any:
    """boto3 clients built once per container (warm invocations reuse them and their connection pools)."""
    with _clients_lock:
        if _clients.get("_environment") != environment_key():  # never in Lambda; see settings.environment_key
            _clients.clear()
            _clients["_environment"] = environment_key()
        if service not in _clients:
            if service == "cognito-idp":
                _clients[service] = make_cognito_client()
            else:
                import boto3

                _clients[service] = boto3.client(service)
        return _clients[service]


def reset_clients() -> None:
    with _clients_lock:
        _clients.clear()


@dataclass
class Deps:
    """Everything reconcile talks to; None means the real (cached) boto3 client. Tests inject fakes here."""

    cognito: Any = None
    sqs: Any = None
    s3: Any = None
    lambda_client: Any = None
    continuer: Continuer | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def continue_function_name(context: Any, settings: Settings) -> str:
    """The function that continues a run: RECONCILE_CONTINUE_FUNCTION, else derived from the running function."""
    if settings.reconcile_continue_function:
        return settings.reconcile_continue_function
    name = str(getattr(context, "function_name", "") or "")
    for suffix in ("-reconcile_continue", "-reconcile"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "-reconcile_continue"
    raise ReconcileError(f"cannot derive the continuation function from {name!r}: set RECONCILE_CONTINUE_FUNCTION")


def lambda_continuer(client: Any, function_name: str) -> Continuer:
    """A continuer that invokes `function_name` asynchronously (InvocationType Event: Lambda answers 202)."""

    def invoke(payload: dict[str, Any]) -> None:
        response = client.invoke(
            FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
        if response.get("StatusCode") != 202:
            raise ReconcileError(f"starting {function_name} returned {response.get('StatusCode')}")
        log.info("reconcile continues in a new invocation", extra={"function": function_name, **payload})

    return invoke
