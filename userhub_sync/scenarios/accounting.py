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
from dataclasses import asdict, dataclass, field, is_dataclass
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
class TrafficFigures:
    """What post_auth enqueued, the event calls UserHub received and what the fake did to them."""

    enqueued: int = 0
    enqueue_failed: int = 0
    userhub_calls: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    retried: int = 0  # deliver's retries (demo: counted in-process)
    worker_processes: int = 0  # chaos: `userhub-sync worker` processes started, and how many were SIGKILLed
    kills: int = 0


@dataclass
class OutcomeFigures:
    """The sign-ins' fate, as `account` judged it."""

    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_after_timeout: int = 0  # accepted by UserHub but answered after the client gave up
    lost_users: list[str] = field(default_factory=list)


@dataclass
class DeadLetterFigures:
    """What reached the DLQ, against what the scenario meant to send there."""

    dead_lettered: int = 0
    expected_dead: int = 0
    dead_letter_kinds: dict[str, int] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class ReplayFigures:
    """chaos: the DLQ sent back once the rejected users exist, and what became of it."""

    rejected_users: int = 0
    replayed: int = 0
    delivered_after_replay: int = 0
    dlq_after_replay: int = 0
    seconds_replay_drain: float = 0.0


@dataclass
class CaptureFigures:
    """demo: the admin changes the CloudTrail emulator passed to capture."""

    captured: int = 0
    captured_delivered: int = 0  # of them, accepted by UserHub as CHANGED for that user
    capture_seconds: list[float] = field(default_factory=list)  # admin call → UserHub's accepted CHANGED
    capture_failed_calls: int = 0  # admin calls Cognito refused (nothing to capture)


@dataclass
class Report:
    """The figures of one run, by topic; `rows()` is the table, `summary()` the JSON (flat: one key a figure)."""

    scenario: Scenario
    signins: int = 0
    traffic: TrafficFigures = field(default_factory=TrafficFigures)
    outcome: OutcomeFigures = field(default_factory=OutcomeFigures)
    dead_letters: DeadLetterFigures = field(default_factory=DeadLetterFigures)
    replay: ReplayFigures = field(default_factory=ReplayFigures)
    capture: CaptureFigures = field(default_factory=CaptureFigures)
    seconds_to_drain: float = 0.0
    seconds_total: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)  # scenario-specific figures, for the JSON summary
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.outcome.lost == 0

    def count_traffic(self, signins: list[SignIn], hub: FakeUserHub) -> None:
        """What post_auth enqueued, and the event calls UserHub received and what the fake did to them."""
        journal = [e for e in hub.journal() if e.verb == "event"]
        traffic = self.traffic
        traffic.enqueued = sum(1 for s in signins if s.enqueued)
        traffic.enqueue_failed = len(signins) - traffic.enqueued
        traffic.userhub_calls = len(journal)
        traffic.faults = fault_counts(journal)
        self.outcome.duplicates_after_timeout = accepted_after_timeout(journal)

    def take(self, result: Accounting) -> None:
        """The sign-ins' fate, as `account` judged it."""
        outcome = self.outcome
        outcome.delivered, outcome.duplicates = result.delivered, result.duplicates
        outcome.lost, outcome.lost_users = len(result.lost), result.lost

    def rows(self) -> list[tuple[str, str]]:
        if self.scenario == Scenario.DEMO:
            return self._demo_rows()
        traffic, outcome, dead, replay = self.traffic, self.outcome, self.dead_letters, self.replay
        faults = ", ".join(f"{k} {v}" for k, v in sorted(traffic.faults.items())) or "none"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(dead.dead_letter_kinds.items())) or "none"
        rows = [
            ("sign-ins (events)", str(self.signins)),
            ("enqueued by post_auth", f"{traffic.enqueued} ({traffic.enqueue_failed} failed)"),
            ("UserHub calls", str(traffic.userhub_calls)),
            ("faults injected", faults),
        ]
        if self.scenario == Scenario.CHAOS:
            abandoned = self.notes.get("messages_abandoned_by_killed_workers", 0)
            killed = (
                f"{traffic.worker_processes} / {traffic.kills} (holding {abandoned} received messages, redelivered)"
            )
            rows.append(("worker processes / SIGKILLed", killed))
        rows += [
            ("delivered", str(outcome.delivered)),
            ("lost", str(outcome.lost)),
            ("duplicates", f"{outcome.duplicates} ({outcome.duplicates_after_timeout} after a client timeout)"),
            ("dead-lettered", f"{dead.dead_lettered} ({kinds}; expected {dead.expected_dead})"),
        ]
        if self.scenario == Scenario.CHAOS:
            replayed = (
                f"{replay.replayed} message(s); {replay.delivered_after_replay} of {replay.rejected_users} rejected "
                f"users then delivered; DLQ left {replay.dlq_after_replay}"
            )
            rows.append(("replayed from the DLQ", replayed))
            drain = f"{self.seconds_to_drain:.1f} s (replay: {replay.seconds_replay_drain:.1f} s)"
            rows.append(("time to drain", drain))
        else:
            sequences = "; ".join(f"{k} ×{v}" for k, v in self.notes.get("sequences", {}).items())
            outage = self.notes.get("outage_seconds", 0), self.notes.get("seconds_to_recover", 0)
            rows.append(("visibility sequences", sequences))
            rows.append(("outage / recovered after heal", f"{outage[0]:.1f} s / {outage[1]:.1f} s"))
            rows.append(("time to drain", f"{self.seconds_to_drain:.1f} s"))
        rows.append(("wall time", f"{self.seconds_total:.1f} s"))
        return rows

    def _demo_rows(self) -> list[tuple[str, str]]:
        outcome, dead, capture = self.outcome, self.dead_letters, self.capture
        lowest = self.notes.get("lowest_concurrency_limit", float("inf"))
        seconds = sorted(capture.capture_seconds)
        latency = f"p50 {statistics.median(seconds):.2f} s, max {seconds[-1]:.2f} s" if seconds else "none delivered"
        limit = self.notes.get("rate_limit")
        captured = f"{capture.captured} ({capture.capture_failed_calls} failed call, not captured)"
        return [
            ("signed in", str(self.signins)),
            ("enqueued by post_auth", str(self.traffic.enqueued)),
            ("delivered to UserHub", str(outcome.delivered)),
            ("retried (transient failures)", str(self.traffic.retried)),
            (
                f"UserHub 429s (rate limit {limit or 'off'}/s; injected)",
                f"{self.notes.get('rate_limited', 0)}; {self.notes.get('injected_429', 0)}",
            ),
            ("deliver's lowest concurrency limit", "-" if lowest == float("inf") else f"{lowest:.1f}"),
            ("dead-lettered (permanent 4xx + poison)", f"{dead.dead_lettered} (expected {dead.expected_dead})"),
            ("duplicate deliveries", str(outcome.duplicates)),
            ("admin changes captured", captured),
            ("captured changes delivered as CHANGED", str(capture.captured_delivered)),
            ("admin call → UserHub CHANGED", latency),
            ("lost", str(outcome.lost)),
            ("time to drain", f"{self.seconds_to_drain:.1f} s"),
            ("moto's own errors / double receives", self._moto_figures()),
            ("wall time", f"{self.seconds_total:.1f} s"),
        ]

    def _moto_figures(self) -> str:
        """What scenario_run's watch on moto saw: a defect of the stand-in, not of the pipeline."""
        return f"{self.notes.get('moto_errors_retried', 0)} / {self.notes.get('moto_double_receives', 0)}"

    def summary(self) -> dict[str, Any]:
        """One flat object, as before the figures had topics: each topic's figures at the top level."""
        data: dict[str, Any] = {}
        for name, value in asdict(self).items():
            data.update(value if is_dataclass(getattr(self, name)) else {name: value})
        data = {k: round(v, 1) if isinstance(v, float) else v for k, v in data.items()}
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
        style = ("bold red" if report.outcome.lost else "bold green") if name == "lost" else None
        table.add_row(name, value, style=style)
    console.print(table)
    if report.outcome.lost_users:
        console.print("[red]lost users:[/] ", end="")
        console.print(str(report.outcome.lost_users[:20]), markup=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")
