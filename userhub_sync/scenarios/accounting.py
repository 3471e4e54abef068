"""The one account of every sign-in a scenario sent, and the report it ends with.

Durable delivery is judged by what was lost and what was duplicated: a sign-in counts as delivered only if UserHub
accepted a SIGNIN for that user, on this stage's connection, at or after the moment it was enqueued (each event
makes UserHub re-pull the user, so a later event covers an earlier sign-in); a permanent failure counts only if its
message is in the DLQ; everything else is lost. More accepted calls for a user than sign-ins of that user are
duplicates.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from userhub_sync.local.faults import FaultKind
from userhub_sync.scenarios.traffic import SignIn

if TYPE_CHECKING:
    from rich.console import Console

    from userhub_sync.local.fake_userhub import FakeUserHub, JournalEntry, RecordedEvent


class Scenario(StrEnum):
    DEMO = "demo"
    CHAOS = "chaos"
    OUTAGE = "outage"


@dataclass
class Accounting:
    delivered: int = 0
    dead: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    extra_dead: int = 0  # DLQ copies beyond the sign-ins they stand for (a worker died after the DLQ send)


def account(
    signins: Iterable[SignIn],
    events: Iterable[RecordedEvent],
    dead_users: Counter[str],
    connection_id: str | None = None,
) -> Accounting:
    """Match each enqueued sign-in to an accepted SIGNIN (on `connection_id`, if given) at or after its enqueue
    time, else to a DLQ message of that user."""
    accepted: dict[str, list[float]] = {}
    for event in events:
        if event.type == "SIGNIN" and connection_id in (None, event.connection_id):
            accepted.setdefault(event.external_id, []).append(event.ts)
    enqueued = [signin for signin in signins if signin.enqueued]
    dead = Counter(dead_users)
    result = Accounting()
    for signin in enqueued:
        if any(t >= signin.ts for t in accepted.get(signin.user, ())):
            result.delivered += 1
        elif dead[signin.user] > 0:
            dead[signin.user] -= 1
            result.dead += 1
        else:
            result.lost.append(signin.user)
    result.extra_dead = sum(dead.values())
    messages = Counter(signin.user for signin in enqueued)
    result.duplicates = sum(max(len(accepted.get(user, ())) - n, 0) for user, n in messages.items())
    return result


def fault_counts(journal: Iterable[JournalEntry]) -> dict[str, int]:
    """What the fake actually did to the calls it received, by kind."""
    counts: Counter[str] = Counter()
    for entry in journal:
        if entry.fault == FaultKind.STATUS and entry.status is not None:
            if entry.status >= 500:
                counts["5xx"] += 1
            elif entry.status == 429:
                counts["429"] += 1
            else:
                counts[f"{entry.status} (permanent)"] += 1
        elif entry.fault == FaultKind.LATENCY:
            counts["slower than timeout"] += 1
        elif entry.fault == FaultKind.DROP:
            counts["dropped"] += 1
        elif entry.status == 401:
            counts["401"] += 1
    return dict(counts)


def accepted_after_timeout(journal: Iterable[JournalEntry]) -> int:
    """Calls UserHub accepted although the client had already timed out: retried, so a duplicate by design."""
    return sum(1 for e in journal if e.fault == FaultKind.LATENCY and e.status == 200 and e.verb == "event")


@dataclass
class Report:
    """The figures of one run; `rows()` is the table, `summary()` the JSON."""

    scenario: Scenario
    signins: int = 0
    enqueued: int = 0
    enqueue_failed: int = 0
    userhub_calls: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    retried: int = 0  # deliver's retries (demo: counted in-process)
    worker_processes: int = 0
    kills: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_after_timeout: int = 0  # accepted by UserHub but answered after the client gave up
    dead_lettered: int = 0
    dead_letter_kinds: dict[str, int] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    expected_dead: int = 0
    rejected_users: int = 0
    replayed: int = 0
    delivered_after_replay: int = 0
    dlq_after_replay: int = 0
    seconds_to_drain: float = 0.0
    seconds_replay_drain: float = 0.0
    seconds_total: float = 0.0
    captured: int = 0  # demo: admin changes the CloudTrail emulator passed to capture
    captured_delivered: int = 0  # of them, accepted by UserHub as CHANGED for that user
    capture_seconds: list[float] = field(default_factory=list)  # admin call → UserHub's accepted CHANGED
    capture_failed_calls: int = 0  # admin calls Cognito refused (nothing to capture)
    notes: dict[str, Any] = field(default_factory=dict)  # scenario-specific figures, for the JSON summary
    problems: list[str] = field(default_factory=list)
    lost_users: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0

    def count_traffic(self, signins: list[SignIn], hub: FakeUserHub) -> None:
        """What post_auth enqueued, and the event calls UserHub received and what the fake did to them."""
        journal = [e for e in hub.journal() if e.verb == "event"]
        self.enqueued = sum(1 for s in signins if s.enqueued)
        self.enqueue_failed = len(signins) - self.enqueued
        self.userhub_calls = len(journal)
        self.faults = fault_counts(journal)
        self.duplicates_after_timeout = accepted_after_timeout(journal)

    def take(self, result: Accounting) -> None:
        """The sign-ins' fate, as `account` judged it."""
        self.delivered, self.duplicates = result.delivered, result.duplicates
        self.lost, self.lost_users = len(result.lost), result.lost

    def rows(self) -> list[tuple[str, str]]:
        if self.scenario == Scenario.DEMO:
            return self._demo_rows()
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letter_kinds.items())) or "none"
        rows = [
            ("sign-ins (events)", str(self.signins)),
            ("enqueued by post_auth", f"{self.enqueued} ({self.enqueue_failed} failed)"),
            ("UserHub calls", str(self.userhub_calls)),
            ("faults injected", faults),
        ]
        if self.scenario == Scenario.CHAOS:
            abandoned = self.notes.get("messages_abandoned_by_killed_workers", 0)
            killed = f"{self.worker_processes} / {self.kills} (holding {abandoned} received messages, redelivered)"
            rows.append(("worker processes / SIGKILLed", killed))
        rows += [
            ("delivered", str(self.delivered)),
            ("lost", str(self.lost)),
            ("duplicates", f"{self.duplicates} ({self.duplicates_after_timeout} after a client timeout)"),
            ("dead-lettered", f"{self.dead_lettered} ({dead}; expected {self.expected_dead})"),
        ]
        if self.scenario == Scenario.CHAOS:
            replayed = (
                f"{self.replayed} message(s); {self.delivered_after_replay} of {self.rejected_users} rejected users "
                f"then delivered; DLQ left {self.dlq_after_replay}"
            )
            rows.append(("replayed from the DLQ", replayed))
            rows.append(("time to drain", f"{self.seconds_to_drain:.1f} s (replay: {self.seconds_replay_drain:.1f} s)"))
        else:
            sequences = "; ".join(f"{k} ×{v}" for k, v in self.notes.get("sequences", {}).items())
            outage = self.notes.get("outage_seconds", 0), self.notes.get("seconds_to_recover", 0)
            rows.append(("visibility sequences", sequences))
            rows.append(("outage / recovered after heal", f"{outage[0]:.1f} s / {outage[1]:.1f} s"))
            rows.append(("time to drain", f"{self.seconds_to_drain:.1f} s"))
        rows.append(("wall time", f"{self.seconds_total:.1f} s"))
        return rows

    def _demo_rows(self) -> list[tuple[str, str]]:
        lowest = self.notes.get("lowest_concurrency_limit", float("inf"))
        seconds = sorted(self.capture_seconds)
        latency = f"p50 {statistics.median(seconds):.2f} s, max {seconds[-1]:.2f} s" if seconds else "none delivered"
        limit = self.notes.get("rate_limit")
        return [
            ("signed in", str(self.signins)),
            ("enqueued by post_auth", str(self.enqueued)),
            ("delivered to UserHub", str(self.delivered)),
            ("retried (transient failures)", str(self.retried)),
            (
                f"UserHub 429s (rate limit {limit or 'off'}/s; injected)",
                f"{self.notes.get('rate_limited', 0)}; {self.notes.get('injected_429', 0)}",
            ),
            ("deliver's lowest concurrency limit", "-" if lowest == float("inf") else f"{lowest:.1f}"),
            ("dead-lettered (permanent 4xx + poison)", f"{self.dead_lettered} (expected {self.expected_dead})"),
            ("duplicate deliveries", str(self.duplicates)),
            ("admin changes captured", f"{self.captured} ({self.capture_failed_calls} failed call, not captured)"),
            ("captured changes delivered as CHANGED", str(self.captured_delivered)),
            ("admin call → UserHub CHANGED", latency),
            ("lost", str(self.lost)),
            ("time to drain", f"{self.seconds_to_drain:.1f} s"),
        ]

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}
        data["lost_users"] = data["lost_users"][:50]
        data["ok"] = self.ok
        return data


def print_report(report: Report, console: Console) -> None:
    from rich.table import Table

    title = f"userhub-sync {report.scenario}: {report.signins} sign-ins"
    table = Table(title=title, show_header=True)
    table.add_column("what")
    table.add_column("figure", justify="right" if report.scenario == Scenario.DEMO else "left", overflow="fold")
    for name, value in report.rows():
        style = ("bold red" if report.lost else "bold green") if name == "lost" else None
        table.add_row(name, value, style=style)
    console.print(table)
    if report.lost_users:
        console.print("[red]lost users:[/] ", end="")
        console.print(str(report.lost_users[:20]), markup=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")
