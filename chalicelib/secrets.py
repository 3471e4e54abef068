"""Where the UserHub Admin key comes from, cached, and fetched again once when UserHub says it is stale.

Order: SSM SecureString (the deployed default), then Secrets Manager, then a plain variable for local runs.
The key is kept in a `SecretStr` and registered with the log redactor, so no repr, log line or DLQ attribute
ever shows it.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import SecretStr

from chalicelib.observability import get_logger, register_secret
from chalicelib.settings import Settings

log = get_logger("secrets")


class SecretUnavailable(Exception):
    """The key could not be read (missing parameter, no permission, empty value); retry later."""


class AdminKeyProvider:
    """Thread-safe cache of the Admin key with single-flight refresh after a 401."""

    def __init__(self, settings: Settings, ssm: Any = None, secretsmanager: Any = None) -> None:
        self._settings = settings
        self._ssm = ssm
        self._secretsmanager = secretsmanager
        self._key: SecretStr | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self) -> SecretStr:
        with self._lock:
            if self._key is None:
                self._key = self._fetch()
            return self._key

    def refresh(self, stale: SecretStr) -> SecretStr:
        """Fetch again unless another caller already replaced `stale`: many 401s in a batch cost one fetch."""
        with self._lock:
            if self._key is None or self._key.get_secret_value() == stale.get_secret_value():
                self._key = self._fetch()
            return self._key

    def _fetch(self) -> SecretStr:
        s = self._settings
        self.fetches += 1
        try:
            if s.userhub_admin_key_parameter:
                if self._ssm is None:
                    import boto3

                    self._ssm = boto3.client("ssm")
                value = self._ssm.get_parameter(Name=s.userhub_admin_key_parameter, WithDecryption=True)["Parameter"][
                    "Value"
                ]
                source = f"SSM parameter {s.userhub_admin_key_parameter}"
            elif s.userhub_admin_key_secret_id:
                if self._secretsmanager is None:
                    import boto3

                    self._secretsmanager = boto3.client("secretsmanager")
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
        register_secret(value)
        log.info("admin key loaded", extra={"key_source": source, "fetch": self.fetches})
        return SecretStr(value)
