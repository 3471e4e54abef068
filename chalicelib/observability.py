"""Structured JSON logs and CloudWatch embedded metrics, with the standard library only.

Powertools' Logger and Metrics would do this too, but importing them costs ~43 ms on this machine (measured with
`python -X importtime`), about 30 % of `import boto3`, and post_auth sits on the sign-in path. This module is
~1 ms. Every log line and metric goes through `redact`, so an Admin key registered with `register_secret` can
never reach CloudWatch even if an exception text carries it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

NAMESPACE = "UserHubSync"
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
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (test capture, the CLI's redirection), not what it was at setup."""

    @property  # type: ignore[override]
    def stream(self):
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
        self._lock = threading.Lock()
        self.totals: dict[str, float] = defaultdict(float)  # since process start: for the CLI and tests

    def count(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._counts[name] += value
            self.totals[name] += value

    def timing(self, name: str, milliseconds: float) -> None:
        with self._lock:
            self._timings[name].append(round(milliseconds, 2))

    def flush(self) -> None:
        with self._lock:
            counts, timings = dict(self._counts), dict(self._timings)
            self._counts.clear()
            self._timings.clear()
        if not counts and not timings:
            return
        metrics = [{"Name": n, "Unit": "Count"} for n in counts] + [
            {"Name": n, "Unit": "Milliseconds"} for n in timings
        ]
        document = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["service"]], "Metrics": metrics}],
            },
            "service": self.service,
            **counts,
            **timings,
        }
        if os.environ.get("USERHUB_SYNC_METRICS", "on") != "off":
            print(redact(json.dumps(document)), file=self._stream or sys.stdout, flush=True)
