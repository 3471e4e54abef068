"""Where the UserHub Admin key comes from, cached, and fetched again when UserHub says it is stale.

A 401 leads to at most one fetch per `REFRESH_INTERVAL_SECONDS` per container, whatever the batch size: a key that
a fresh fetch does not cure (revoked, wrong parameter) must not cost a GetParameter per message.

Order: SSM SecureString (the deployed default), then Secrets Manager, then a plain variable for local runs.
The key is kept in a `SecretStr` and registered with the log redactor, so no repr, log line or DLQ attribute
ever shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from chalicelib.aws_clients import aws_client
from chalicelib.observability import get_logger, register_secret
from chalicelib.settings import Settings

log = get_logger("secrets")


REFRESH_INTERVAL_SECONDS = 60.0
HEADER_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F))  # visible ASCII: what a bearer token may hold


class SecretUnavailable(Exception):
    """The key could not be read (missing parameter, no permission, empty value); retry later."""


class KeyMisconfigured(SecretUnavailable):
    """The stored key cannot be sent at all (a pasted invisible character, say): fix the parameter."""


class AdminKeyProvider:
    """Thread-safe cache of the Admin key with single-flight, rate-limited refresh after a 401."""

    def __init__(
        self,
        settings: Settings,
        ssm: Any = None,
        secretsmanager: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._ssm = ssm
        self._secretsmanager = secretsmanager
        self._clock = clock
        self._key: SecretStr | None = None
        self._refreshed_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0  # for tests and the CLI's report

    def get(self) -> SecretStr:
        with self._lock:
            if self._key is None:
                self._key = self._fetch()
            return self._key

    def refresh(self, stale: SecretStr) -> SecretStr:
        """Fetch again, unless another caller already replaced `stale` or the last refresh is under a minute old."""
        with self._lock:
            now = self._clock()
            recent = self._refreshed_at is not None and now - self._refreshed_at < REFRESH_INTERVAL_SECONDS
            if self._key is None or (self._key.get_secret_value() == stale.get_secret_value() and not recent):
                self._refreshed_at = now
                self._key = self._fetch()
            return self._key

    def _fetch(self) -> SecretStr:
        s = self._settings
        self.fetches += 1
        try:
            if s.userhub_admin_key_parameter:
                if self._ssm is None:
                    self._ssm = aws_client("ssm", connect_timeout=2, read_timeout=3)
                value = self._ssm.get_parameter(Name=s.userhub_admin_key_parameter, WithDecryption=True)["Parameter"][
                    "Value"
                ]
                source = f"SSM parameter {s.userhub_admin_key_parameter}"
            elif s.userhub_admin_key_secret_id:
                if self._secretsmanager is None:
                    self._secretsmanager = aws_client("secretsmanager", connect_timeout=2, read_timeout=3)
                value = self._secretsmanager.get_secret_value(SecretId=s.userhub_admin_key_secret_id).get(
                    "SecretString"
                )
                source = f"secret {s.userhub_admin_key_secret_id}"
            else:
                assert s.userhub_admin_key is not None  # guaranteed by Settings validation
                value = s.userhub_admin_key.get_secret_value()
                source = "USERHUB_ADMIN_KEY"
        except Exception as error:  # botocore errors carry no secret: the name of the parameter at most
            raise SecretUnavailable(f"cannot read the UserHub Admin key: {type(error).__name__}: {error}") from None
        value = (value or "").strip()
        if not value:
            raise SecretUnavailable(f"the UserHub Admin key in {source} is empty")
        bad = next((i for i, char in enumerate(value) if char not in HEADER_SAFE), None)
        if bad is not None:  # name the character and its place, never the key
            raise KeyMisconfigured(
                f"the UserHub Admin key in {source} holds {value[bad]!a} at position {bad}, which an HTTP header "
                "cannot carry (a pasted invisible or non-ASCII character?): fix the stored value"
            )
        register_secret(value)
        log.info("admin key loaded", extra={"key_source": source, "fetch": self.fetches})
        return SecretStr(value)
