"""A bad configuration is one `ConfigError` whose text an operator can act on: the variable, then what is wrong."""

from __future__ import annotations

import pytest

from chalicelib.settings import ConfigError, get_settings, reset_settings
from tests.support import stage_environ
from userhub_sync.local.moto import patched_environ


def error_for(**overrides: str | None) -> str:
    reset_settings()
    try:
        with patched_environ(stage_environ(**overrides)), pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        reset_settings()
    return str(raised.value)


def test_a_field_error_reads_variable_colon_problem_without_pydantics_prefix() -> None:
    assert error_for(USERHUB_API_URL="ftp://x") == (
        "invalid configuration: USERHUB_API_URL: must be an http(s) URL such as https://api.userhub.com"
    )


def test_an_error_of_the_whole_configuration_reads_as_the_problem_alone() -> None:
    assert error_for(USERHUB_ADMIN_KEY=None) == (
        "invalid configuration: USERHUB_ADMIN_KEY_PARAMETER, USERHUB_ADMIN_KEY_SECRET_ID or USERHUB_ADMIN_KEY: "
        "one must be set"
    )


def test_every_bad_variable_is_named_in_one_error() -> None:
    text = error_for(DELIVERY_CONCURRENCY="0", RETRY_JITTER="2")
    assert text.startswith("invalid configuration: ") and "; " in text
    assert "DELIVERY_CONCURRENCY: " in text and "RETRY_JITTER: " in text
