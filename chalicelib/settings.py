"""Configuration from environment variables, validated once at first use.

Read lazily (not at import) so a cold start pays for pydantic only in the functions that need it, and so a bad
value surfaces as one `ConfigError` naming the variable instead of a stack trace from deep inside a handler.
post_auth does not use this module: to stay light it reads its own variables with `os.environ` (its timing
settings, the connection id, pool, queue and AWS variables, and the logging ones), and so does capture, which sends
through post_auth's queue client; docs/CONFIGURATION.md lists them.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chalicelib.identifiers import CONNECTION_ID_PATTERN, USER_POOL_ID_PATTERN
from chalicelib.sqs_limits import DEFAULT_DELIVERY_CONCURRENCY, MAX_DELIVERY_CONCURRENCY, MAX_VISIBILITY_SECONDS
from chalicelib.token_bucket import LIST_USERS_PER_SECOND

DEFAULT_API_URL = "https://api.userhub.com"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Every variable the functions read, with its default and bounds (docs/CONFIGURATION.md says what each is for)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- UserHub
    userhub_api_url: str = DEFAULT_API_URL
    userhub_connection_id: str = Field(pattern=CONNECTION_ID_PATTERN)
    userhub_admin_key_parameter: str | None = None
    userhub_admin_key_secret_id: str | None = None
    userhub_admin_key: SecretStr | None = None

    # --- AWS resources
    events_queue_name: str = Field(min_length=1, max_length=80)
    dead_letter_queue_name: str = Field(min_length=1, max_length=80)
    user_pool_id: str | None = Field(default=None, pattern=USER_POOL_ID_PATTERN)
    snapshot_bucket: str | None = None

    # --- delivery tunables
    delivery_concurrency: int = Field(default=DEFAULT_DELIVERY_CONCURRENCY, ge=1, le=MAX_DELIVERY_CONCURRENCY)
    adaptive_concurrency: bool = True  # fewer calls in flight on 429/503/timeouts, more on success (delivery/flow.py)
    delivery_rate_limit: float | None = Field(default=None, gt=0, le=10_000)  # calls/s per container; None: no limit
    userhub_connect_timeout: PositiveFloat = 2.0
    userhub_read_timeout: PositiveFloat = 5.0
    retry_base_seconds: int = Field(default=30, ge=0, le=MAX_VISIBILITY_SECONDS)
    retry_max_seconds: int = Field(default=MAX_VISIBILITY_SECONDS, ge=1, le=MAX_VISIBILITY_SECONDS)
    retry_jitter: float = Field(default=0.25, ge=0, le=1)
    max_receive_count: int = Field(default=13, ge=1, le=1000)  # used only when the queue has no redrive policy
    deliver_time_margin_seconds: float = Field(default=1.5, ge=0)
    # the longest a message may wait between becoming visible and being received: the events queue's retention must
    # hold the longest retry schedule plus this (checked by the CLI); deliver dead-letters a message whose next
    # attempt would start after SentTimestamp + retention - margin, before SQS deletes it unseen
    retention_margin_seconds: int = Field(default=3600, ge=0, le=86_400)

    # --- capture: resolving a captured change's user (ListUsers' 30/s quota is the account's, shared with reconcile)
    capture_list_users_rate: float = Field(default=2.0, gt=0, le=LIST_USERS_PER_SECOND)

    # --- reconcile tunables
    reconcile_rate_limit: PositiveFloat = Field(default=5.0, le=LIST_USERS_PER_SECOND)
    reconcile_time_margin_seconds: float = Field(default=60.0, ge=0)
    reconcile_max_invocations: int = Field(default=200, ge=1)
    reconcile_max_restarts: int = Field(default=5, ge=0, le=100)  # scans restarted after a rejected page token
    reconcile_continue_function: str | None = None  # default: derived from the running function's name
    # post_auth's and post_confirmation's log groups, comma-separated; default: derived from the running function
    signin_recovery_log_groups: str | None = Field(default=None, pattern=r"^[.\-_/#A-Za-z0-9]+(,[.\-_/#A-Za-z0-9]+)*$")

    @field_validator("userhub_api_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.userhub.com")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("plain http:// is allowed only for loopback hosts (127.0.0.1, ::1, localhost)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be a base URL without path, query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> Settings:
        if not (self.userhub_admin_key_parameter or self.userhub_admin_key_secret_id or self.userhub_admin_key):
            raise ValueError(
                "USERHUB_ADMIN_KEY_PARAMETER, USERHUB_ADMIN_KEY_SECRET_ID or USERHUB_ADMIN_KEY: one must be set"
            )
        return self

    def require(self, name: str) -> str:
        """The value of an optional variable that this code path cannot do without."""
        value = getattr(self, name.lower())
        if not value:
            raise ConfigError(f"{name.upper()}: required here but not set")
        return value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = "/".join(str(part).upper() for part in item["loc"]) or "configuration"
        message = item["msg"].removeprefix("Value error, ")
        # never echo the input: it may be a secret
        lines.append(f"{loc}: {message}" if item["loc"] else message)
    return "invalid configuration: " + "; ".join(lines)


AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID")
_cached: tuple[tuple[str | None, ...], Settings] | None = None


def environment_key() -> tuple[str | None, ...]:
    """The variables the settings and boto3 clients depend on. In Lambda they never change; a process that drives
    the handlers with other settings (a test, the CLI switching stages) gets fresh settings and clients."""
    return tuple(os.environ.get(name.upper()) for name in Settings.model_fields) + tuple(
        os.environ.get(name) for name in AWS_VARIABLES
    )


def get_settings() -> Settings:
    """The settings for the current environment, validated once per distinct environment."""
    global _cached
    key = environment_key()
    if _cached is None or _cached[0] != key:
        try:
            _cached = (key, Settings())
        except ValidationError as error:
            raise ConfigError(_describe(error)) from None
    return _cached[1]


def reset_settings() -> None:
    """Forget the cached settings (tests)."""
    global _cached
    _cached = None
