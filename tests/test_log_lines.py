"""What one log line holds: a JSON object with level, time, logger, message, the `extra=` fields and the error, with
every registered secret cut out and every character written as itself (or U+FFFD where UTF-8 cannot hold it)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date

from chalicelib import observability
from chalicelib.observability import JsonFormatter, redact, register_secret


def line(message: str = "hello %s", *args: object, exc_info=None, **extra: object) -> str:
    record = logging.LogRecord("userhub_sync.test", logging.WARNING, __file__, 1, message, args or None, exc_info)
    record.__dict__.update(extra)
    record.created = 1_795_980_801.123456
    return JsonFormatter().format(record)


def test_a_line_is_one_json_object_with_level_time_logger_and_message() -> None:
    text = line("hello %s", "world")
    assert "\n" not in text
    assert json.loads(text) == {
        "level": "WARNING",
        "ts": 1_795_980_801.123,
        "logger": "userhub_sync.test",
        "message": "hello world",
    }


def test_extra_fields_are_kept_and_private_ones_left_out() -> None:
    entry = json.loads(line("m", message_id="m-1", attempt=3, _internal="no", when=date(2026, 11, 29)))
    assert (entry["message_id"], entry["attempt"], entry["when"]) == ("m-1", 3, "2026-11-29")
    assert "_internal" not in entry and "args" not in entry and "pathname" not in entry


def test_an_exception_is_one_error_field_with_its_type_and_text() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        entry = json.loads(line("failed", exc_info=sys.exc_info()))
    assert entry["error"] == "ValueError: bad value"
    assert "error" not in json.loads(line("fine", exc_info=(None, None, None)))


def test_characters_are_written_as_themselves_and_surrogates_as_replacement() -> None:
    text = line("m", user="ü € x\ud800y")
    assert "ü €" in text and json.loads(text)["user"] == "ü € x\ufffdy"
    text.encode("utf-8")  # writable as UTF-8


def test_a_registered_secret_is_cut_from_the_message_and_every_field() -> None:
    secret = "log-lines-secret-0123456789"
    register_secret(secret)
    text = line(f"key {secret} in the message", error=f"echo {secret} {secret}")
    assert secret not in text
    entry = json.loads(text)
    assert (entry["message"], entry["error"]) == ("key *** in the message", "echo *** ***")


def test_too_short_or_missing_values_are_never_registered_as_secrets() -> None:
    saved = set(observability._secrets)
    try:
        register_secret("abc")
        register_secret("")
        register_secret(None)
        assert redact("abc abcd") == "abc abcd"
        register_secret("wxyz")  # four characters: the shortest a secret may be
        assert redact("wxyz!") == "***!"
    finally:  # a four-letter secret would blank those letters in every later test's output
        observability._secrets.clear()
        observability._secrets.update(saved)
