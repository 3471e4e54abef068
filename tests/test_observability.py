"""What reaches CloudWatch: every line written whatever it holds, no secret in it, usernames hashed on request."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import app
from chalicelib.observability import get_logger, log_user
from chalicelib.secrets import AdminKeyProvider
from chalicelib.settings import get_settings, reset_settings
from tests.support import ADMIN_KEY, attrs, message_body, receive_all, receive_event, send
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import patched_environ

HASH_KEY = "a-log-hashing-key-for-tests-only"


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_line_holding_a_lone_surrogate_is_still_written(capfd) -> None:
    get_logger("test").warning("odd input", extra={"user": "x\ud800y"})
    [line] = [entry for entry in lines(capfd.readouterr().err) if entry["message"] == "odd input"]
    assert line["user"] == "x\ufffdy"


def test_a_loaded_admin_key_is_redacted_from_any_line(pipeline, capfd) -> None:
    """The client strips the key from UserHub's answers; this is the net behind it, for any other text."""
    key = AdminKeyProvider(get_settings()).get()
    get_logger("test").error(f"something printed {key.get_secret_value()} by mistake")
    err = capfd.readouterr().err
    assert "something printed *** by mistake" in err and ADMIN_KEY not in err


def test_with_hashed_usernames_logs_carry_a_keyed_hash_and_the_dlq_the_name(pipeline, hub, capfd) -> None:
    hub.add_fault(Fault(status=400, match_external_id="alice@example.com"))
    hub.add_fault(Fault(status=503, match_external_id="bob@example.com"))
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": HASH_KEY}):
        reset_settings()
        send(
            pipeline.sqs, pipeline.queues.events_url, message_body("alice@example.com"), message_body("bob@example.com")
        )
        app.deliver(receive_event(pipeline.sqs, pipeline.queues.events_url, 2), LambdaContext("deliver", 60))
        expected = {
            name: "h:" + hmac.new(HASH_KEY.encode(), name.encode(), hashlib.sha256).hexdigest()[:16]
            for name in ("alice@example.com", "bob@example.com")
        }
        assert log_user("bob@example.com") == expected["bob@example.com"]
    err = capfd.readouterr().err
    assert "example.com" not in err
    logged = {entry["user"] for entry in lines(err) if entry.get("user")}
    assert logged == set(expected.values())
    [dead] = receive_all(pipeline.sqs, pipeline.queues.dlq_url)
    assert attrs(dead)["username"] == "alice@example.com"  # replay needs the name itself


def test_hashed_usernames_without_a_key_never_fall_back_to_the_name() -> None:
    with patched_environ({"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": None}):
        assert log_user("alice@example.com") == "h:unset-LOG_USERNAME_KEY"
    with patched_environ({"LOG_USERNAMES": None}):
        assert log_user("alice@example.com") == "alice@example.com"


def test_the_logger_writes_json_at_the_configured_level(capfd) -> None:
    logger = get_logger("test")
    assert logging.getLogger("userhub_sync").propagate is False
    logger.info("plain", extra={"n": 1})
    [entry] = [e for e in lines(capfd.readouterr().err) if e["message"] == "plain"]
    assert (entry["level"], entry["logger"], entry["n"]) == ("INFO", "userhub_sync.test", 1)


def test_user_hash_prints_what_the_stages_log_lines_show(tmp_path, monkeypatch, moto_server) -> None:
    from tests.support import cli, make_project

    make_project(tmp_path, monkeypatch, moto_server)
    hashed = {"LOG_USERNAMES": "hashed", "LOG_USERNAME_KEY": HASH_KEY}
    result = cli("user-hash", "alice@example.com", "--stage", "dev", env=hashed)
    expected = "h:" + hmac.new(HASH_KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()[:16]
    assert (result.exit_code, result.stdout.strip()) == (0, expected)
    assert cli("user-hash", "alice@example.com", "--stage", "dev").stdout.strip() == "alice@example.com"
    unkeyed = cli("user-hash", "alice@example.com", "--stage", "dev", env={"LOG_USERNAMES": "hashed"})
    assert unkeyed.exit_code == 1 and "LOG_USERNAME_KEY" in unkeyed.output
