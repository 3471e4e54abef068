"""The one time format this project writes (ISO 8601, UTC, whole seconds, `Z`) and the forms it reads back.

Standard library only, so any module can use it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime | float) -> str:
    """`2026-11-29T19:33:21Z` for an aware datetime or epoch seconds."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time (naive means UTC) or SQS's epoch milliseconds; None for anything else."""
    if not text:
        return None
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
