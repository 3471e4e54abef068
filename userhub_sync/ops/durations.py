"""Lengths of time as operators type and read them ('90s', '1h30m', '1d 09h 20m'). Points in time are
chalicelib/timefmt.py's."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h30m', '2d' → seconds; a bare number is seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h30m, 2d)")
    return sum(float(number) * _UNITS[unit.lower()] for number, unit in parts)


def format_duration(seconds: float | None) -> str:
    """An age in its two largest units ('1d 02h', '3m 05s'), rounded down; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_span(seconds: float) -> str:
    """A length of time with up to three units ('1d 09h 20m', '1h 30m', '1m 30s', '38s'), rounded up to the
    unit shown last so a comparison of two printed figures never looks the wrong way round."""
    total = int(-(-max(seconds, 0) // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        minutes += 1 if secs else 0
        hours, minutes = hours + minutes // 60, minutes % 60
        days, hours = days + hours // 24, hours % 24
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        minutes += 1 if secs else 0
        hours, minutes = hours + minutes // 60, minutes % 60
        return f"{hours}h {minutes:02d}m" if hours < 24 else "1d 00h 00m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
