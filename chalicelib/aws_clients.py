"""boto3 clients with explicit, short timeouts. boto3's defaults (60 s to connect, 60 s per read, retries) would let
one slow AWS call eat a Lambda's whole time budget; every client this project builds states its own bounds.
"""

from __future__ import annotations

from typing import Any


def aws_client(service: str, *, connect_timeout: float, read_timeout: float, max_attempts: int = 2) -> Any:
    """A client whose worst case is about `max_attempts × (connect_timeout + read_timeout)` plus backoff."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        tcp_keepalive=True,
    )
    return boto3.client(service, config=config)  # type: ignore[call-overload]


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
