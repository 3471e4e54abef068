"""The one time format the project writes (ISO 8601, UTC, whole seconds, `Z`) and the forms it reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chalicelib.timefmt import parse_time, utc_iso

MOMENT = datetime(2026, 11, 29, 19, 33, 21, tzinfo=UTC)


def test_utc_iso_writes_whole_seconds_in_utc_with_a_z() -> None:
    assert utc_iso(MOMENT.replace(microsecond=999_999)) == "2026-11-29T19:33:21Z"
    assert utc_iso(MOMENT.astimezone(timezone(timedelta(hours=-5)))) == "2026-11-29T19:33:21Z"
    assert utc_iso(MOMENT.timestamp()) == "2026-11-29T19:33:21Z"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29T19:33:21Z",
        "2026-11-29T19:33:21+00:00",
        "2026-11-29T14:33:21-05:00",
        "2026-11-29T19:33:21",  # naive means UTC
        "1795980801000",  # SQS's SentTimestamp: epoch milliseconds
    ],
)
def test_parse_time_reads_what_the_project_and_sqs_write(text: str) -> None:
    assert parse_time(text) == MOMENT


@pytest.mark.parametrize("text", ["2026-11-29T19:33:21", "1795980801000"])
def test_a_time_without_an_offset_is_read_as_utc(text: str) -> None:
    moment = parse_time(text)
    assert moment is not None and moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


def test_parse_time_reads_back_what_utc_iso_writes() -> None:
    assert parse_time(utc_iso(MOMENT)) == MOMENT


def test_epoch_milliseconds_keep_their_fraction() -> None:
    assert parse_time("1795980801500") == MOMENT + timedelta(milliseconds=500)


@pytest.mark.parametrize("text", [None, "", "yesterday", "2026-13-01T00:00:00Z", "9" * 30])
def test_anything_else_is_none_not_an_error(text: str | None) -> None:
    assert parse_time(text) is None
