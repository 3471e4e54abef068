"""LOG_USERNAMES=hashed: a username in a log line is `h:` and the first 16 hex digits of HMAC-SHA256(LOG_USERNAME_KEY,
the name's UTF-8), so that one user's lines can be found (`userhub-sync user-hash`) and no e-mail address is logged."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from chalicelib.observability import log_user
from userhub_sync.local.moto import patched_environ


def expected(key: str, data: bytes) -> str:
    return "h:" + hmac.new(key.encode(), data, hashlib.sha256).hexdigest()[:16]


@pytest.mark.parametrize("length", [16, 40])
def test_a_key_of_sixteen_characters_or_more_hashes(length: int) -> None:
    key = "k" * length
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": key}):
        assert log_user("alice@example.com") == expected(key, b"alice@example.com")


def test_a_shorter_key_never_falls_back_to_the_name() -> None:
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": "k" * 15}):
        assert log_user("alice@example.com") == "h:unset-LOG_USERNAME_KEY"


def test_a_name_with_a_lone_surrogate_still_hashes() -> None:
    key = "a-key-of-enough-length"
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": key}):
        assert log_user("x\ud800y") == expected(key, b"x\xed\xa0\x80y")


def test_plain_is_the_default_and_no_user_stays_none() -> None:
    with patched_environ({"LOG_USERNAMES": None, "LOG_USERNAME_KEY": "k" * 16}):
        assert log_user("alice@example.com") == "alice@example.com"
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": "k" * 16}):
        assert log_user(None) is None
