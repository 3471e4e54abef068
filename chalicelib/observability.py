"""Structured JSON logs and CloudWatch embedded metrics, with the standard library only.

Powertools' Logger and Metrics would do this too, but importing them costs tens of milliseconds on a cold start
(docs/PERFORMANCE.md gives the measurement and how to repeat it), and post_auth sits on the sign-in path. This module
imports only the standard library. Every log line and metric goes through `redact`, so an Admin key registered
with `register_secret` can never reach CloudWatch even if an exception text carries it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
import time
from collections import defaultdict
from typing import Any

NAMESPACE = "UserHubSync"
MAX_VALUES_PER_METRIC = 100  # EMF's limit on the values of one metric in one document
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from everything we print."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def log_user(username: str | None) -> str | None:
    """A username as log lines show it: itself, or with LOG_USERNAMES=hashed an HMAC-SHA256 of it keyed with
    LOG_USERNAME_KEY (`h:` and 16 hex digits), so that logs carry no e-mail address yet one user's lines can still be
    found (`userhub-sync user-hash NAME`). The DLQ keeps the name itself: a replay needs it."""
    if username is None or os.environ.get("LOG_USERNAMES", "plain") != "hashed":
        return username
    key = os.environ.get("LOG_USERNAME_KEY", "")
    if len(key) < 16:  # never fall back to the plain name; say what is wrong instead, in the line itself
        return "h:unset-LOG_USERNAME_KEY"
    digest = hmac.new(key.encode(), username.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return "h:" + digest[:16]


_SURROGATES = re.compile(r"[\ud800-\udfff]")  # cannot be written as UTF-8: one in a line would lose the line
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, logger, message and whatever `extra=` carried (message id, user...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname,
            "ts": round(record.created, 3),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return _SURROGATES.sub("\ufffd", redact(json.dumps(entry, default=str, ensure_ascii=False)))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (test capture, the CLI's redirection), not what it was at setup."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def get_logger(name: str) -> logging.Logger:
    """A logger under `userhub_sync` whose lines are JSON on stderr (Lambda sends both streams to CloudWatch)."""
    root = logging.getLogger("userhub_sync")
    if not getattr(root, "_userhub_sync_configured", False):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        root.propagate = False
        root._userhub_sync_configured = True  # type: ignore[attr-defined]
    return logging.getLogger(f"userhub_sync.{name}")


class Metrics:
    """Counters and timings flushed as one EMF line per invocation: no PutMetricData call, no added latency."""

    def __init__(self, service: str, stream: Any = None) -> None:
        self.service = service
        self._stream = stream
        self._counts: dict[str, float] = defaultdict(float)
        self._timings: dict[str, list[float]] = defaultdict(list)
        self._gauges: dict[str, float] = {}
        self._lock = threading.Lock()
        self.totals: dict[str, float] = defaultdict(float)  # since process start: for the CLI and tests

    def count(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._counts[name] += value
            self.totals[name] += value

    def timing(self, name: str, *milliseconds: float) -> None:
        """One or more durations (deliver records a whole batch's calls at once, off the calls' hot path)."""
        with self._lock:
            self._timings[name].extend(round(value, 2) for value in milliseconds)

    def gauge(self, name: str, value: float) -> None:
        """A level at flush time (the last value set), such as the current concurrency limit."""
        with self._lock:
            self._gauges[name] = value

    def discard(self) -> None:
        """Drop what this invocation counted without writing it; `totals` keep it (the CLI, tests, the local
        worker). post_auth calls this on a plain success: CloudWatch gets that count from Lambda's own metrics."""
        self._take()

    def _take(self) -> tuple[dict[str, float], dict[str, list[float]], dict[str, float]]:
        """This invocation's counts, timings and gauges, which start again from nothing."""
        with self._lock:
            taken = dict(self._counts), dict(self._timings), dict(self._gauges)
            self._counts.clear()
            self._timings.clear()
            self._gauges.clear()
        return taken

    def flush(self) -> None:
        """One EMF line for the invocation; more only when a timing has more than MAX_VALUES_PER_METRIC values
        (EMF takes at most 100 values per metric in one document), the counts and gauges in the first."""
        counts, timings, gauges = self._take()
        if not counts and not timings and not gauges:
            return
        if os.environ.get("USERHUB_SYNC_METRICS", "on") == "off":
            return
        stream = self._stream or sys.stdout
        first = True
        while first or timings:
            chunk = {name: values[:MAX_VALUES_PER_METRIC] for name, values in timings.items()}
            timings = {n: v[MAX_VALUES_PER_METRIC:] for n, v in timings.items() if len(v) > MAX_VALUES_PER_METRIC}
            print(redact(self._document(counts if first else {}, chunk, gauges if first else {})), file=stream)
            first = False
        stream.flush()

    def _document(self, counts: dict[str, float], timings: dict[str, list[float]], gauges: dict[str, float]) -> str:
        metrics = (
            [{"Name": n, "Unit": "Count"} for n in counts]
            + [{"Name": n, "Unit": "Milliseconds"} for n in timings]
            + [{"Name": n, "Unit": "None"} for n in gauges]
        )
        document = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["service"]], "Metrics": metrics}],
            },
            "service": self.service,
            **{n: _number(v) for n, v in counts.items()},
            **timings,
            **gauges,
        }
        return json.dumps(document, separators=(",", ":"))  # compact: CloudWatch Logs bills every byte


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
