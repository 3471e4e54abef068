"""Where the UserHub Admin key comes from (SSM, then Secrets Manager, then USERHUB_ADMIN_KEY), what a stored value
may hold, and when a 401 may fetch it again: at most once a minute per container, and never for a key another
caller already replaced. Over moto's SSM and Secrets Manager on real HTTP.
"""

from __future__ import annotations

import boto3
import pytest
from pydantic import SecretStr

from chalicelib.observability import redact
from chalicelib.secrets import REFRESH_INTERVAL_SECONDS, AdminKeyProvider, KeyMisconfigured, SecretUnavailable
from chalicelib.settings import get_settings, reset_settings
from tests.support import stage_environ
from userhub_sync.local.moto import patched_environ

PARAMETER = "/test/userhub-admin-key"
SECRET = "test/userhub-admin-key"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def provider(clock: Clock | None = None, **variables: str | None) -> AdminKeyProvider:
    reset_settings()
    with patched_environ(stage_environ(**variables)):
        settings = get_settings()
    reset_settings()
    return AdminKeyProvider(settings, clock=clock or Clock())


def put_parameter(value: str) -> None:
    boto3.client("ssm").put_parameter(Name=PARAMETER, Value=value, Type="SecureString", Overwrite=True)


def put_secret(value: str) -> None:
    client = boto3.client("secretsmanager")
    try:
        client.create_secret(Name=SECRET, SecretString=value)
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=SECRET, SecretString=value)


def test_the_ssm_parameter_comes_first(aws) -> None:
    put_parameter("key-from-ssm-0001")
    put_secret("key-from-secrets-manager-0001")
    keys = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER, USERHUB_ADMIN_KEY_SECRET_ID=SECRET, USERHUB_ADMIN_KEY="env")
    assert keys.get().get_secret_value() == "key-from-ssm-0001" and keys.fetches == 1


def test_then_secrets_manager(aws) -> None:
    put_secret("key-from-secrets-manager-0002")
    keys = provider(USERHUB_ADMIN_KEY_SECRET_ID=SECRET, USERHUB_ADMIN_KEY="key-from-the-environment")
    assert keys.get().get_secret_value() == "key-from-secrets-manager-0002"


def test_then_the_plain_variable_for_local_runs(aws) -> None:
    assert provider(USERHUB_ADMIN_KEY=" key-from-the-environment\n").get().get_secret_value() == (
        "key-from-the-environment"
    )


def test_surrounding_whitespace_of_a_stored_key_is_dropped_and_the_key_redacted(aws) -> None:
    put_parameter("  key-with-a-newline-0003\n")
    key = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER).get().get_secret_value()
    assert key == "key-with-a-newline-0003"
    assert redact(f"sent {key}") == "sent ***"


def test_the_key_is_fetched_once_and_kept(aws) -> None:
    put_parameter("key-kept-0004")
    keys = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER)
    assert keys.get() is keys.get() and keys.fetches == 1


def test_a_missing_parameter_is_unavailable_and_names_only_the_parameter(aws) -> None:
    with pytest.raises(SecretUnavailable) as raised:
        provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER).get()
    assert type(raised.value) is SecretUnavailable
    assert str(raised.value).startswith("cannot read the UserHub Admin key: ParameterNotFound: ")


def test_an_empty_secret_is_unavailable_and_says_where_it_looked(aws) -> None:
    put_secret("   ")
    with pytest.raises(SecretUnavailable) as raised:
        provider(USERHUB_ADMIN_KEY_SECRET_ID=SECRET).get()
    assert type(raised.value) is SecretUnavailable
    assert str(raised.value) == f"the UserHub Admin key in secret {SECRET} is empty"


@pytest.mark.parametrize(
    ("value", "char", "position"),
    [("abc def", "' '", 3), ("abc\x7fdef", "'\\x7f'", 3), ("\u200babc", "'\\u200b'", 0), ("ab\tc", "'\\t'", 2)],
)
def test_a_character_no_http_header_can_carry_is_named_with_its_place_never_the_key(
    aws, value: str, char: str, position: int
) -> None:
    put_parameter(value)
    with pytest.raises(KeyMisconfigured) as raised:
        provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER).get()
    assert str(raised.value) == (
        f"the UserHub Admin key in SSM parameter {PARAMETER} holds {char} at position {position}, which an HTTP "
        "header cannot carry (a pasted invisible or non-ASCII character?): fix the stored value"
    )
    assert "abc" not in str(raised.value)


def test_a_bad_key_in_the_variable_names_the_variable(aws) -> None:
    with pytest.raises(
        KeyMisconfigured, match=r"^the UserHub Admin key in USERHUB_ADMIN_KEY holds '\\xe9' at position 2"
    ):
        provider(USERHUB_ADMIN_KEY="ab\u00e9cd").get()


def test_the_key_is_read_with_short_timeouts_and_one_retry(aws) -> None:
    """Read on the deliver path: a slow SSM or Secrets Manager must not eat the invocation."""
    put_parameter("key-0008")
    put_secret("key-0008")
    by_ssm = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER)
    by_secret = provider(USERHUB_ADMIN_KEY_SECRET_ID=SECRET)
    by_ssm.get(), by_secret.get()
    for client in (by_ssm._ssm, by_secret._secretsmanager):
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (2, 3, 2)


def test_every_visible_ascii_character_may_be_in_a_key(aws) -> None:
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    put_parameter(visible)
    assert provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER).get().get_secret_value() == visible


def test_a_stale_key_is_fetched_again_at_most_once_a_minute(aws) -> None:
    put_parameter("first-key-0005")
    clock = Clock()
    keys = provider(clock, USERHUB_ADMIN_KEY_PARAMETER=PARAMETER)
    first = keys.get()
    put_parameter("second-key-0005")
    second = keys.refresh(first)
    assert second.get_secret_value() == "second-key-0005" and keys.fetches == 2
    put_parameter("third-key-0005")
    clock.now += REFRESH_INTERVAL_SECONDS - 1
    assert keys.refresh(second) is second and keys.fetches == 2  # under a minute since the last refresh
    clock.now = 500.0 + REFRESH_INTERVAL_SECONDS
    assert keys.refresh(second).get_secret_value() == "third-key-0005" and keys.fetches == 3


def test_a_key_another_caller_already_replaced_is_not_fetched_again(aws) -> None:
    put_parameter("old-key-0006")
    keys = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER)
    old = keys.get()
    put_parameter("new-key-0006")
    new = keys.refresh(old)
    assert keys.refresh(old) is new and keys.fetches == 2  # the second 401 of the same batch


def test_a_refresh_before_any_get_fetches(aws) -> None:
    put_parameter("only-key-0007")
    keys = provider(USERHUB_ADMIN_KEY_PARAMETER=PARAMETER)
    assert keys.refresh(SecretStr("whatever")).get_secret_value() == "only-key-0007" and keys.fetches == 1
