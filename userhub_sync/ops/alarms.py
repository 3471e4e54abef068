"""The stage's CloudWatch alarms and dashboard: defined once, created or checked by `bootstrap`, read by `status`,
and rendered for infra/merge-template.json (`cloudformation_resources`).

Five alarms, named `<app>-<stage>-<kind>`: the DLQ holds a message; the events queue's oldest message is older than
a threshold; post_auth could not enqueue (it wrote a recovery record instead); the share of UserHub calls answered
429 is high (userhub_429 / userhub_calls, deliver's EMF counts); no reconcile completed in 26 h (reconcile counts
`reconcile_completed` once per completed run; with no datapoint an hour counts as "none completed"). The dashboard
shows depth, age, delivery rate, the 429 share and the current concurrency from the same metrics, and the sign-ins
post_auth enqueued by metric math: post_auth writes no metrics line on a plain success (chalicelib/post_auth.py), so
enqueued = AWS/Lambda Invocations − Errors (of post_auth and post_confirmation, which share service `post_auth`)
− enqueue_failed − trigger_ignored (its EMF counts, written on every invocation that is not a plain success).

Invariant: a second `bootstrap` changes nothing. An alarm or dashboard that differs from its definition is reported
as drift and rewritten only with `fix` (PutMetricAlarm and PutDashboard replace the whole definition, so a fix
leaves exactly the definition here). Creating them makes no claim about their state: `status` reads that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.observability import NAMESPACE  # the EMF namespace; dimension `service`
from userhub_sync.ops.aws import aws_errors, error_code
from userhub_sync.ops.errors import OpsError
from userhub_sync.ops.steps import Step, StepStatus

if TYPE_CHECKING:
    from userhub_sync.ops.stage import StageContext


class AlarmOptions(Protocol):
    """The part of BootstrapOptions this module reads."""

    alarm_oldest_age: int | None
    alarm_429_percent: float | None
    alarm_reconcile_hours: int | None
    alarm_actions: list[str] | None


DEFAULT_OLDEST_AGE_SECONDS = 3600
DEFAULT_THROTTLED_PERCENT = 10.0
DEFAULT_RECONCILE_HOURS = 26
FIVE_MINUTES = 300
SHARE = "100 * FILL(throttled, 0) / calls"  # no calls: no datapoint, not a division by zero
# post_auth never raises, so each invocation Lambda counts and does not count as an error either enqueued or wrote
# enqueue_failed / trigger_ignored in its EMF line; FILL: a function not deployed (post_confirmation) has no data
ENQUEUED = (
    "FILL(invoked, 0) + FILL(confirmInvoked, 0) - FILL(errors, 0) - FILL(confirmErrors, 0)"
    " - FILL(failed, 0) - FILL(ignored, 0)"
)


class AlarmKind(StrEnum):
    DLQ_NOT_EMPTY = "dlq-not-empty"
    OLDEST_MESSAGE = "oldest-message"
    ENQUEUE_FAILURES = "enqueue-failures"
    USERHUB_429_SHARE = "userhub-429-share"
    NO_RECONCILE = "no-completed-reconcile"


@dataclass(frozen=True)
class AlarmSettings:
    """What the operator chooses: the thresholds and where the alarms notify (SNS topic ARNs)."""

    oldest_age_seconds: int = DEFAULT_OLDEST_AGE_SECONDS
    throttled_percent: float = DEFAULT_THROTTLED_PERCENT
    reconcile_hours: int = DEFAULT_RECONCILE_HOURS
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Names:
    """Resource names; for the template they hold `${Stage}` and are wrapped in Fn::Sub."""

    prefix: str  # <app>-<stage>
    events_queue: str
    dead_letter_queue: str
    region: str


def alarm_settings_of(ctx: StageContext, opts: AlarmOptions) -> tuple[AlarmSettings, dict[str, str]]:
    """The options, else the stage's ALARM_* variables, else the defaults; and the variables to write (those given
    now or already in config.json, so a later run without the options keeps them)."""
    given = {
        "ALARM_OLDEST_AGE_SECONDS": opts.alarm_oldest_age,
        "ALARM_429_PERCENT": opts.alarm_429_percent,
        "ALARM_RECONCILE_HOURS": opts.alarm_reconcile_hours,
        "ALARM_ACTIONS": ",".join(opts.alarm_actions) if opts.alarm_actions else None,
    }
    chosen = {k: str(v) if v is not None else ctx.var(k) for k, v in given.items()}
    try:
        settings = AlarmSettings(
            oldest_age_seconds=int(chosen["ALARM_OLDEST_AGE_SECONDS"] or DEFAULT_OLDEST_AGE_SECONDS),
            throttled_percent=float(chosen["ALARM_429_PERCENT"] or DEFAULT_THROTTLED_PERCENT),
            reconcile_hours=int(chosen["ALARM_RECONCILE_HOURS"] or DEFAULT_RECONCILE_HOURS),
            actions=tuple(a.strip() for a in (chosen["ALARM_ACTIONS"] or "").split(",") if a.strip()),
        )
    except ValueError as error:
        raise OpsError(f"an ALARM_* variable is not a number: {error}") from None
    if settings.oldest_age_seconds < 60 or not 0 < settings.throttled_percent <= 100:
        raise OpsError("the oldest-message alarm needs at least 60 s, the 429 share a percentage in (0, 100]")
    if not 2 <= settings.reconcile_hours <= 168:  # hourly periods, 7 days at most (CloudWatch's limit)
        raise OpsError(f"the reconcile alarm's window must be 2 to 168 hours, not {settings.reconcile_hours}")
    if any(not a.startswith("arn:") for a in settings.actions):
        raise OpsError("alarm actions must be ARNs (an SNS topic: arn:aws:sns:REGION:ACCOUNT:NAME)")
    return settings, {k: v for k, v in chosen.items() if v}


def _metric(name: str, service: str) -> dict[str, Any]:
    return {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": [{"Name": "service", "Value": service}]}


def _queue(queue: str, metric: str) -> dict[str, Any]:
    return {"Namespace": "AWS/SQS", "MetricName": metric, "Dimensions": [{"Name": "QueueName", "Value": queue}]}


def alarm_definitions(names: Names, settings: AlarmSettings) -> dict[AlarmKind, dict[str, Any]]:
    """PutMetricAlarm's arguments for each alarm (also the template's AWS::CloudWatch::Alarm properties)."""
    hours = settings.reconcile_hours
    definitions: dict[AlarmKind, dict[str, Any]] = {
        AlarmKind.DLQ_NOT_EMPTY: {
            **_queue(names.dead_letter_queue, "ApproximateNumberOfMessagesVisible"),
            "AlarmDescription": "The DLQ holds messages: see `userhub-sync dlq list`, fix the cause, `dlq replay`.",
            "Statistic": "Maximum",
            "Period": FIVE_MINUTES,
            "EvaluationPeriods": 1,
            "Threshold": 0.0,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        AlarmKind.OLDEST_MESSAGE: {
            **_queue(names.events_queue, "ApproximateAgeOfOldestMessage"),
            "AlarmDescription": f"A message has waited over {settings.oldest_age_seconds} s in the events queue: "
            "deliver is not keeping up, or UserHub keeps failing it (see `userhub-sync status`).",
            "Statistic": "Maximum",
            "Period": FIVE_MINUTES,
            "EvaluationPeriods": 1,
            "Threshold": float(settings.oldest_age_seconds),
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        AlarmKind.ENQUEUE_FAILURES: {
            **_metric("enqueue_failed", "post_auth"),
            "AlarmDescription": "post_auth could not enqueue sign-ins and wrote recovery records: check SQS access; "
            "`userhub-sync recover-signins` (or the nightly reconcile) replays them.",
            "Statistic": "Sum",
            "Period": FIVE_MINUTES,
            "EvaluationPeriods": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
        },
        AlarmKind.USERHUB_429_SHARE: {
            "AlarmDescription": f"Over {settings.throttled_percent:g} % of UserHub calls were answered 429 for 15 "
            "minutes: lower DELIVER_MAX_CONCURRENCY or DELIVERY_RATE_LIMIT, or agree a higher limit with UserHub.",
            "Metrics": [
                {"Id": "share", "Expression": SHARE, "Label": "429 share (%)", "ReturnData": True},
                {
                    "Id": "throttled",
                    "MetricStat": {"Metric": _metric("userhub_429", "deliver"), "Period": FIVE_MINUTES, "Stat": "Sum"},
                    "ReturnData": False,
                },
                {
                    "Id": "calls",
                    "MetricStat": {
                        "Metric": _metric("userhub_calls", "deliver"),
                        "Period": FIVE_MINUTES,
                        "Stat": "Sum",
                    },
                    "ReturnData": False,
                },
            ],
            "EvaluationPeriods": 3,
            "DatapointsToAlarm": 3,
            "Threshold": float(settings.throttled_percent),
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        AlarmKind.NO_RECONCILE: {
            **_metric("reconcile_completed", "reconcile"),
            "AlarmDescription": f"No reconcile run completed in {hours} h: see `userhub-sync status` (last reconcile) "
            "and the reconcile function's logs.",
            "Statistic": "Sum",
            "Period": 3600,  # hourly periods: CloudWatch allows up to 7 days of them (< 1 h periods: 1 day)
            "EvaluationPeriods": hours,
            "DatapointsToAlarm": hours,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",  # an hour without the metric is an hour without a completed run
        },
    }
    for kind, definition in definitions.items():
        definition["AlarmName"] = f"{names.prefix}-{kind}"
        definition["AlarmActions"] = list(settings.actions)  # always given: a topic removed from config is drift
        definition["OKActions"] = list(settings.actions)  # whoever was paged also learns that it has passed
    return definitions


def dashboard_body(names: Names) -> dict[str, Any]:
    """Depth, age, delivery rate, 429 share and concurrency, from SQS's metrics and deliver's EMF metrics; sign-ins
    enqueued from Lambda's metrics of the trigger functions and post_auth's EMF failure counts."""

    def emf(name: str, service: str = "deliver", **options: Any) -> list[Any]:
        return [NAMESPACE, name, "service", service, options]

    def invocations(metric: str, function: str, **options: Any) -> list[Any]:
        return ["AWS/Lambda", metric, "FunctionName", f"{names.prefix}-{function}", {"stat": "Sum", **options}]

    def counts(*metrics: str) -> list[list[Any]]:
        return [emf(m, stat="Sum") for m in metrics]

    def widget(x: int, y: int, title: str, metrics: list[list[Any]], **extra: Any) -> dict[str, Any]:
        properties = {"title": title, "region": names.region, "metrics": metrics, "period": 60, "view": "timeSeries"}
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": {**properties, **extra}}

    sqs = "AWS/SQS"
    return {
        "widgets": [
            widget(
                0,
                0,
                "Queue depth",
                [
                    [sqs, "ApproximateNumberOfMessagesVisible", "QueueName", names.events_queue, {"label": "waiting"}],
                    [
                        sqs,
                        "ApproximateNumberOfMessagesNotVisible",
                        "QueueName",
                        names.events_queue,
                        {"label": "in flight"},
                    ],
                    [sqs, "ApproximateNumberOfMessagesVisible", "QueueName", names.dead_letter_queue, {"label": "DLQ"}],
                ],
                stat="Maximum",
            ),
            widget(
                12,
                0,
                "Oldest message age (s)",
                [[sqs, "ApproximateAgeOfOldestMessage", "QueueName", names.events_queue]],
                stat="Maximum",
            ),
            widget(0, 6, "Delivery per minute", counts("delivered", "retry", "dead_letter", "userhub_calls")),
            widget(
                12,
                6,
                "UserHub 429 share (%)",
                [
                    [{"expression": SHARE, "label": "429 share", "id": "share"}],
                    emf("userhub_429", id="throttled", stat="Sum", visible=False),
                    emf("userhub_calls", id="calls", stat="Sum", visible=False),
                ],
            ),
            widget(
                0,
                12,
                "Concurrency",
                [
                    [
                        "AWS/Lambda",
                        "ConcurrentExecutions",
                        "FunctionName",
                        f"{names.prefix}-deliver",
                        {"label": "containers"},
                    ],
                    emf("concurrency_limit", label="calls in flight allowed, per container"),
                ],
                stat="Maximum",
            ),
            widget(
                12,
                12,
                "Sign-ins enqueued per minute",
                [
                    [{"expression": ENQUEUED, "label": "sign-ins enqueued", "id": "enqueued"}],
                    invocations("Invocations", "post_auth", id="invoked", visible=False),
                    invocations("Invocations", "post_confirmation", id="confirmInvoked", visible=False),
                    invocations("Errors", "post_auth", id="errors", visible=False),
                    invocations("Errors", "post_confirmation", id="confirmErrors", visible=False),
                    emf("enqueue_failed", "post_auth", id="failed", stat="Sum", label="enqueue failed"),
                    emf("trigger_ignored", "post_auth", id="ignored", stat="Sum", visible=False),
                    emf("enqueue_retried", "post_auth", id="retried", stat="Sum", label="first attempt failed"),
                ],
            ),
        ]
    }


def _same(wanted: Any, actual: Any) -> bool:
    """Is every field of `wanted` in `actual` (numbers compared as numbers, lists in order)?"""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(_same(v, actual.get(k)) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(wanted) == len(actual) and all(map(_same, wanted, actual))
    if isinstance(wanted, int | float) and not isinstance(wanted, bool) and isinstance(actual, int | float):
        return float(wanted) == float(actual)
    return bool(wanted == actual)


def ensure_alarms(cloudwatch: Any, names: Names, settings: AlarmSettings, *, fix: bool, check: bool) -> list[Step]:
    """Create what is missing; report (or with `fix`, rewrite) what differs; see the module docstring."""
    definitions = alarm_definitions(names, settings)
    wanted_names = [d["AlarmName"] for d in definitions.values()]
    found = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=wanted_names)["MetricAlarms"]}
    steps = []
    for definition in definitions.values():
        name = definition["AlarmName"]
        detail = _describe(definition)
        current = found.get(name)
        if current is not None and _same(definition, current):
            steps.append(Step("alarm", name, StepStatus.OK, detail))
        elif check:
            steps.append(
                Step("alarm", name, StepStatus.MISSING if current is None else StepStatus.WOULD_UPDATE, detail)
            )
        elif current is None:
            cloudwatch.put_metric_alarm(**definition)
            steps.append(Step("alarm", name, StepStatus.CREATED, detail))
        elif fix:
            cloudwatch.put_metric_alarm(**definition)
            steps.append(Step("alarm", name, StepStatus.FIXED, detail))
        else:
            differs = sorted(k for k, v in definition.items() if not _same(v, current.get(k)))
            steps.append(Step("alarm", name, StepStatus.DRIFT, f"differs in {', '.join(differs)}: rerun with --fix"))
    steps.append(ensure_dashboard(cloudwatch, names, fix=fix, check=check))
    return steps


def ensure_dashboard(cloudwatch: Any, names: Names, *, fix: bool, check: bool) -> Step:
    body = dashboard_body(names)
    name = names.prefix
    try:
        current = json.loads(cloudwatch.get_dashboard(DashboardName=name)["DashboardBody"])
    except aws_errors() as error:
        if error_code(error) not in ("ResourceNotFound", "ResourceNotFoundException"):
            raise
        current = None
    detail = "depth, age, delivery rate, 429 share, concurrency"
    if current == body:
        return Step("dashboard", name, StepStatus.OK, detail)
    if check:
        return Step("dashboard", name, StepStatus.MISSING if current is None else StepStatus.WOULD_UPDATE, detail)
    if current is not None and not fix:
        return Step("dashboard", name, StepStatus.DRIFT, "edited since bootstrap wrote it: rerun with --fix")
    cloudwatch.put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    return Step("dashboard", name, StepStatus.CREATED if current is None else StepStatus.FIXED, detail)


def _describe(definition: dict[str, Any]) -> str:
    metric = definition.get("MetricName") or "429 share (%)"
    operator = {"GreaterThanThreshold": ">", "GreaterThanOrEqualToThreshold": "≥", "LessThanThreshold": "<"}
    periods = definition["EvaluationPeriods"]
    period = definition.get("Period", FIVE_MINUTES)
    return (
        f"{metric} {operator[definition['ComparisonOperator']]} {definition['Threshold']:g} over {periods} × {period} s"
    )


@dataclass(frozen=True)
class AlarmState:
    name: str
    kind: AlarmKind
    state: str  # OK, ALARM, INSUFFICIENT_DATA, or "missing"
    reason: str = ""

    @property
    def firing(self) -> bool:
        return self.state == "ALARM"


def alarm_states(cloudwatch: Any, prefix: str) -> list[AlarmState]:
    """The state of each of the stage's alarms (`missing` for one bootstrap has not created)."""
    names = {f"{prefix}-{kind}": kind for kind in AlarmKind}
    found = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=list(names))["MetricAlarms"]}
    return [
        AlarmState(name, kind, found[name]["StateValue"], found[name].get("StateReason") or "")
        if name in found
        else AlarmState(name, kind, "missing", "run `userhub-sync bootstrap`")
        for name, kind in names.items()
    ]


def cloudformation_resources() -> dict[str, Any]:
    """The alarms and the dashboard as infra/merge-template.json carries them (default thresholds, `${Stage}`)."""
    names = Names(
        "userhub-sync-${Stage}", "userhub-sync-${Stage}-events", "userhub-sync-${Stage}-dlq", "${AWS::Region}"
    )
    resources: dict[str, Any] = {}
    for kind, definition in alarm_definitions(names, AlarmSettings()).items():
        logical = "Alarm" + "".join(part.capitalize() for part in kind.split("-"))
        resources[logical] = {"Type": "AWS::CloudWatch::Alarm", "Properties": _sub(definition)}
    resources["Dashboard"] = {
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": {
            "DashboardName": {"Fn::Sub": names.prefix},
            "DashboardBody": {"Fn::Sub": json.dumps(dashboard_body(names), separators=(",", ":"))},
        },
    }
    return resources


def _sub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v) for v in value]
    if isinstance(value, str) and "${" in value:
        return {"Fn::Sub": value}
    return value
