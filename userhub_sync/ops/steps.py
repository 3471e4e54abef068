"""One resource's outcome in `bootstrap`: what it is, its name, what happened, and why it needs attention."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StepStatus(StrEnum):
    OK = "ok"
    CREATED = "created"
    UPDATED = "updated"
    FIXED = "fixed"
    DRIFT = "drift"
    MISSING = "missing"
    WARNING = "warning"
    WOULD_UPDATE = "would update"  # --check: a run without it would change this

    @property
    def needs_attention(self) -> bool:
        return self in (StepStatus.DRIFT, StepStatus.MISSING, StepStatus.WOULD_UPDATE)


@dataclass
class Step:
    resource: str
    name: str
    status: StepStatus
    detail: str = ""

    @property
    def needs_attention(self) -> bool:
        return self.status.needs_attention
