"""deliver's retry schedule as a stage configures it, and whether it fits in the events queue's retention.

Invariant: the schedule is read through chalicelib's Settings fields (one definition, the one deliver uses), from
the same environment deliver gets, so the CLI checks the schedule that will run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from userhub_sync.ops.durations import format_span
from userhub_sync.ops.errors import OpsError

if TYPE_CHECKING:
    from chalicelib.delivery import RetryPolicy

SCHEDULE_SETTINGS = (
    "retry_base_seconds",
    "retry_max_seconds",
    "retry_jitter",
    "max_receive_count",
    "retention_margin_seconds",
)


@dataclass(frozen=True)
class Schedule:
    policy: RetryPolicy
    max_receive_count: int  # deliver's own count, used only when the queue has no redrive policy
    retention_margin: int  # RETENTION_MARGIN_SECONDS


def delivery_schedule() -> Schedule:
    """The stage's RETRY_*, MAX_RECEIVE_COUNT and RETENTION_MARGIN_SECONDS, validated by Settings' own fields.

    Only these fields are read, so a stage that lacks what deliver needs elsewhere (a connection id, a key
    source) can still be bootstrapped; a malformed value is one error naming the variable.
    """
    from pydantic import ValidationError, create_model
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from chalicelib.delivery import RetryPolicy
    from chalicelib.settings import Settings

    class _Environment(BaseSettings):
        model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    fields: dict[str, Any] = {
        name: (Settings.model_fields[name].annotation, Settings.model_fields[name]) for name in SCHEDULE_SETTINGS
    }
    model = create_model("ScheduleSettings", __base__=_Environment, **fields)
    try:
        values: Any = model()  # its fields are built at run time, from Settings
    except ValidationError as error:
        problems = "; ".join(
            f"{'/'.join(str(part).upper() for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise OpsError(f"invalid configuration: {problems}") from None  # the value is never echoed
    return Schedule(
        policy=RetryPolicy(values.retry_base_seconds, values.retry_max_seconds, values.retry_jitter),
        max_receive_count=values.max_receive_count,
        retention_margin=values.retention_margin_seconds,
    )


@dataclass(frozen=True)
class RetentionFit:
    """Does deliver's whole retry schedule, plus the margin, fit in the events queue's retention?

    A message older than the retention is deleted by SQS unseen, before deliver could dead-letter it. The longest
    schedule (every wait at its largest) plus RETENTION_MARGIN_SECONDS (the time a visible message may wait for a
    receive) must not exceed MessageRetentionPeriod.
    """

    retention: int
    longest: float
    margin: int
    max_receive_count: int

    @property
    def needed(self) -> float:
        return self.longest + self.margin

    @property
    def ok(self) -> bool:
        return self.needed <= self.retention

    def describe(self) -> str:
        figures = (
            f"retry schedule up to {format_span(self.longest)} (maxReceiveCount {self.max_receive_count}, "
            f"largest waits) + margin {format_span(self.margin)} = {format_span(self.needed)}"
        )
        if self.ok:
            return f"{figures} fits the events queue's retention of {format_span(self.retention)}"
        return (
            f"{figures} exceeds the events queue's retention of {format_span(self.retention)}: messages would "
            "expire before deliver dead-letters them; raise the retention (bootstrap --events-retention, up to "
            "14d) or allow fewer receives (bootstrap --max-receive-count)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "retention_seconds": self.retention,
            "longest_schedule_seconds": self.longest,
            "margin_seconds": self.margin,
            "max_receive_count": self.max_receive_count,
            "detail": self.describe(),
        }


def retention_fit(schedule: Schedule, max_receive_count: int, retention: int) -> RetentionFit:
    return RetentionFit(
        retention=int(retention),
        longest=schedule.policy.longest_horizon(max_receive_count),
        margin=schedule.retention_margin,
        max_receive_count=max_receive_count,
    )
