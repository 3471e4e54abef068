"""The stage's two queues: what they must look like, and creating or checking them (idempotent).

Shared by `bootstrap`, `demo` and the tests so that every queue this project meets has the same redrive, retention
and encryption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chalicelib.sqs_limits import MAX_RETENTION_SECONDS
from userhub_sync.ops.aws import queue_url_or_none

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.literals import QueueAttributeNameType

    Attributes = dict[QueueAttributeNameType, str]

DLQ_RETENTION_SECONDS = MAX_RETENTION_SECONDS  # longer than the events queue's (redrive keeps the enqueue time)
EVENTS_RETENTION_SECONDS = 4 * 24 * 3600  # SQS default; holds the default schedule (≤ 33.4 h) plus the margin


@dataclass(frozen=True)
class QueueSpec:
    events_name: str
    dlq_name: str
    max_receive_count: int = 13
    visibility_timeout: int = 360  # ≥ 6 × deliver's 60 s timeout, as AWS advises for Lambda event sources
    events_retention: int = EVENTS_RETENTION_SECONDS
    dlq_retention: int = DLQ_RETENTION_SECONDS
    kms_key: str | None = None  # None: SQS-managed SSE (SqsManagedSseEnabled)

    def encryption(self) -> Attributes:
        if self.kms_key:
            return {"KmsMasterKeyId": self.kms_key}
        return {"SqsManagedSseEnabled": "true"}

    def dlq_attributes(self) -> Attributes:
        return {"MessageRetentionPeriod": str(self.dlq_retention), **self.encryption()}

    def events_attributes(self, dlq_arn: str) -> Attributes:
        return {
            "MessageRetentionPeriod": str(self.events_retention),
            "VisibilityTimeout": str(self.visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.max_receive_count}),
            **self.encryption(),
        }


@dataclass
class QueueState:
    events_url: str
    dlq_url: str
    dlq_arn: str
    created: list[str]
    drift: list[str]
    missing: list[str] = field(default_factory=list)  # only with create=False
    fixed: bool = False  # drift was found and corrected


def _drift(actual: Attributes, wanted: Attributes, name: str) -> list[str]:
    problems = []
    for key, value in wanted.items():
        have = actual.get(key)
        if key == "RedrivePolicy":
            same = have is not None and json.loads(have) == json.loads(value)
        else:
            same = have == value
        if not same:
            problems.append(f"{name}: {key} is {have!r}, expected {value!r}")
    return problems


def ensure_queues(sqs: SQSClient, spec: QueueSpec, *, fix: bool = True, create: bool = True) -> QueueState:
    """Create the DLQ and the events queue if absent; report (and with `fix`, correct) attributes that drifted.

    With `create=False` nothing is created or changed: absent queues are listed in `missing` (a read-only check).
    """
    created: list[str] = []
    drift: list[str] = []
    missing: list[str] = []
    fixed = False
    dlq_url = queue_url_or_none(sqs, spec.dlq_name)
    dlq_arn = ""
    if dlq_url is None and not create:
        missing.append(spec.dlq_name)
    else:
        if dlq_url is None:
            dlq_url = sqs.create_queue(QueueName=spec.dlq_name, Attributes=spec.dlq_attributes())["QueueUrl"]
            created.append(spec.dlq_name)
        attrs = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        dlq_arn = attrs["QueueArn"]
        if spec.dlq_name not in created:
            found = _drift(attrs, spec.dlq_attributes(), spec.dlq_name)
            drift += found
            if found and fix and create:
                sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes=spec.dlq_attributes())
                fixed = True
    events_url = queue_url_or_none(sqs, spec.events_name)
    if not dlq_arn:  # no DLQ to point at: only report on the events queue
        if events_url is None:
            missing.append(spec.events_name)
        return QueueState(events_url or "", dlq_url or "", dlq_arn, created, drift, missing, fixed)
    wanted = spec.events_attributes(dlq_arn)
    if events_url is None and not create:
        missing.append(spec.events_name)
    elif events_url is None:
        events_url = sqs.create_queue(QueueName=spec.events_name, Attributes=wanted)["QueueUrl"]
        created.append(spec.events_name)
    else:
        attrs = sqs.get_queue_attributes(QueueUrl=events_url, AttributeNames=["All"])["Attributes"]
        found = _drift(attrs, wanted, spec.events_name)
        drift += found
        if found and fix and create:
            sqs.set_queue_attributes(QueueUrl=events_url, Attributes=wanted)
            fixed = True
    return QueueState(events_url or "", dlq_url or "", dlq_arn, created, drift, missing, fixed)


@dataclass(frozen=True)
class QueueDepths:
    """SQS's approximate counts of one queue."""

    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        """Zero means nothing is left to deliver."""
        return self.visible + self.in_flight + self.delayed


DEPTH_ATTRIBUTES: tuple[QueueAttributeNameType, ...] = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def queue_depths(sqs: SQSClient, url: str) -> QueueDepths:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(DEPTH_ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attrs.get(name, "0")) for name in DEPTH_ATTRIBUTES)
    return QueueDepths(visible, in_flight, delayed)
