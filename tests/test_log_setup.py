"""How a fresh process sets up its logs: JSON lines on stderr, under `userhub_sync`, at LOG_LEVEL (default INFO).

The set-up runs once per process, at the first `get_logger`; these tests undo it and run it again, as a new Lambda
container would, then put the process's own set-up back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from chalicelib.observability import JsonFormatter, get_logger
from userhub_sync.local.moto import patched_environ

ROOT = "userhub_sync"


@pytest.fixture
def fresh_process() -> Iterator[None]:
    """The logging state of a process that has not called `get_logger` yet; restored afterwards."""
    root, top = logging.getLogger(ROOT), logging.getLogger()
    saved = (root.handlers[:], root.level, root.propagate, root.__dict__.pop("_userhub_sync_configured", None))
    saved_top = (top.handlers[:], top.level)
    root.handlers.clear()
    root.setLevel(logging.NOTSET)
    root.propagate = True
    try:
        yield
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
        root.__dict__.pop("_userhub_sync_configured", None)
        if saved[3] is not None:
            root._userhub_sync_configured = saved[3]  # type: ignore[attr-defined]
        top.handlers[:], top.level = saved_top


def json_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_a_fresh_process_writes_json_lines_at_info_by_default(fresh_process, capfd) -> None:
    with patched_environ({"LOG_LEVEL": None}):
        log = get_logger("setup")
    log.debug("hidden")
    log.info("shown", extra={"n": 1})
    [line] = json_lines(capfd.readouterr().err)
    assert (line["level"], line["logger"], line["message"], line["n"]) == ("INFO", "userhub_sync.setup", "shown", 1)


@pytest.mark.parametrize("level", ["WARNING", "warning"])
def test_log_level_sets_the_threshold_in_either_case(fresh_process, capfd, level: str) -> None:
    with patched_environ({"LOG_LEVEL": level}):
        log = get_logger("setup")
    log.info("hidden")
    log.warning("shown")
    assert [line["message"] for line in json_lines(capfd.readouterr().err)] == ["shown"]


def test_the_setup_is_made_once_and_owned_by_the_userhub_sync_logger(fresh_process, capfd) -> None:
    get_logger("a")
    get_logger("b").warning("once")
    root = logging.getLogger(ROOT)
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.propagate is False  # one line per record, not a second one through Lambda's root handler
    assert not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
    assert [line["message"] for line in json_lines(capfd.readouterr().err)] == ["once"]
