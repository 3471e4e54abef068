"""How sign-in recovery pages through FilterLogEvents: the marker phrase as the filter, a half-open time window
(CloudWatch's endTime is inclusive), every page followed by its token, and a token repeated by the service ends the
listing instead of looping for the rest of the invocation.

moto returns every matching event in one page and never repeats a token, so `PagedLogs` stands in for the logs
client here and serves scripted pages (said there); recovery's other tests use moto's CloudWatch Logs.
"""

from __future__ import annotations

from typing import Any

from chalicelib import signin_recovery as sr


class PagedLogs:
    """Stand-in for the logs client: serves `pages` in order (moto cannot page on cue), recording each request."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.requests: list[dict[str, Any]] = []

    def filter_log_events(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(dict(kwargs))
        assert len(self.requests) <= 10, "the listing does not end"
        return self.pages[min(len(self.requests), len(self.pages)) - 1]


def report() -> sr.RecoveryReport:
    return sr.RecoveryReport(["/g"], 0, 1, dry_run=True)


def test_every_page_is_followed_by_its_token_over_a_half_open_window() -> None:
    logs = PagedLogs(
        [
            {"events": [{"eventId": "1"}, {"eventId": "2"}], "nextToken": "t1"},
            {"events": [{"eventId": "3"}], "nextToken": "t2"},
            {"events": []},
        ]
    )
    found = report()
    events = list(sr._events(logs, "/g", 1_000, 2_000, found))
    assert [e["eventId"] for e in events] == ["1", "2", "3"] and found.matched == 3
    assert logs.requests[0] == {
        "logGroupName": "/g",
        "startTime": 1_000,
        "endTime": 1_999,
        "filterPattern": '"userhub-sync/v1"',
    }
    assert [r.get("nextToken") for r in logs.requests] == [None, "t1", "t2"]


def test_a_token_the_service_repeats_ends_the_listing() -> None:
    logs = PagedLogs([{"events": [{"eventId": "1"}], "nextToken": "same"}])  # the same token, forever
    found = report()
    assert [e["eventId"] for e in sr._events(logs, "/g", 0, 10, found)] == ["1", "1"]
    assert len(logs.requests) == 2 and found.matched == 2
