"""What the operator commands share: the stage's names, AWS clients and identity, Chalice's deployed state, durations.

Every command resolves the stage the same way (`apply_stage`, so shell variables win over config.json) and names
AWS resources by the same conventions as `chalice deploy`, so `bootstrap`, `wire`, `status` and `dlq` always agree
on which queue, pool, bucket or function they mean.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from userhub_sync.ops.stage import StageError, apply_stage, find_project_dir, read_config

if TYPE_CHECKING:
    from rich.console import Console

    from chalicelib.delivery import RetryPolicy

DEFAULT_APP_NAME = "userhub-sync"
CHALICE_DEFAULT_TIMEOUT = 60  # chalice/constants.py: DEFAULT_LAMBDA_TIMEOUT
FUNCTIONS = ("post_auth", "post_confirmation", "deliver", "reconcile", "reconcile_continue")


class ExitCode(IntEnum):
    """Every exit code of the operator commands; docs/OPERATIONS.md and `--help` show the same table."""

    OK = 0  # done, or already as it should be
    ERROR = 1  # an error: missing stage or resource, AWS refused a call, no credentials or region
    ATTENTION = 2  # needs attention: drift, unhealthy, messages left behind or not seen
    POOL_CHANGED = 3  # wire: UpdateUserPool changed pool settings other than LambdaConfig
    TRIGGER_CONFLICT = 4  # wire: the pool has a different trigger; nothing changed
    USAGE = 64  # the command line is wrong (EX_USAGE in sysexits.h); nothing was done


EXIT_CODES_HELP = "\n\n".join(
    [
        "Exit codes:",
        "0  done, or already as it should be",
        "1  error: missing stage or resource, AWS refused a call, no credentials or region",
        "2  needs attention: drift, not healthy (--check), messages left behind or not seen",
        "3  wire: UpdateUserPool changed pool settings other than LambdaConfig",
        "4  wire: the pool has a different trigger; nothing was changed (--force replaces it)",
        "64 usage: unknown command or option, missing or malformed value; nothing was done",
    ]
)


class OpsError(Exception):
    """A failure the operator can act on; the CLI prints the message (no traceback) and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageProblem(OpsError):
    """Options that are well-formed one by one but cannot go together: a usage error (exit 64), nothing done."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


# ----------------------------------------------------------------------------------------------- output
PIPE_WIDTH = 200  # table width when the output is not a terminal and COLUMNS is not set


def console(stderr: bool = False) -> Console:
    """A rich console that never breaks a line it cannot see the end of.

    Off a terminal (cron, CI, a pipe) rich cannot detect a width and wraps at 80 columns, which splits error lines
    and table cells for whatever reads them. There, plain lines are never wrapped and tables get $COLUMNS or
    PIPE_WIDTH columns.
    """
    from rich.console import Console

    made = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if made.is_terminal:
        return made
    try:
        width = int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    except ValueError:
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=max(width, 40))


def print_error(message: str) -> None:
    """`error: <message>` as exactly one line on stderr (no markup is read from the message, nothing wraps)."""
    from rich.text import Text

    line = Text("error: ", style="red") + Text(" ".join(str(message).splitlines()))
    console(stderr=True).print(line, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- AWS clients
def client(service: str, *, max_attempts: int = 3, read_timeout: float = 30.0) -> Any:
    """A boto3 client that honours AWS_ENDPOINT_URL / AWS_DEFAULT_REGION like the Lambdas do."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=read_timeout,
            user_agent_appid="userhub-sync-ops",
        ),
    )


@dataclass(frozen=True)
class Identity:
    account: str
    region: str
    partition: str = "aws"


def caller_identity() -> Identity:
    """Account from STS GetCallerIdentity, region from the session (the one boto3 and `chalice deploy` use)."""
    import boto3

    region = boto3.session.Session().region_name
    if not region:
        raise OpsError("no AWS region configured: set AWS_DEFAULT_REGION (or AWS_REGION, or a profile's region)")
    ident = client("sts").get_caller_identity()
    arn = ident.get("Arn", "")
    partition = arn.split(":")[1] if arn.startswith("arn:") and arn.count(":") >= 2 else "aws"
    return Identity(account=ident["Account"], region=region, partition=partition or "aws")


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ClientError (or the exception's class name)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or type(error).__name__)
    return type(error).__name__


# ----------------------------------------------------------------------------------------------- schedule
SCHEDULE_SETTINGS = (
    "retry_base_seconds",
    "retry_max_seconds",
    "retry_jitter",
    "max_receive_count",
    "retention_margin_seconds",
)


@dataclass(frozen=True)
class Schedule:
    """deliver's retry schedule as the stage configures it: the fields and defaults of chalicelib's Settings (one
    definition), read from the same environment deliver gets, so the CLI checks the schedule that will run."""

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
        values = model()
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


# ----------------------------------------------------------------------------------------------- stage
@dataclass
class StageContext:
    """The stage's resource names, after `apply_stage` (shell variables win over config.json)."""

    stage: str
    project_dir: Path
    config: dict[str, Any]
    variables: dict[str, str]

    @property
    def app_name(self) -> str:
        return str(self.config.get("app_name") or DEFAULT_APP_NAME)

    def var(self, name: str, default: str | None = None) -> str | None:
        value = os.environ.get(name)
        if value is None or value == "":
            value = self.variables.get(name)
        return value if value not in (None, "") else default

    @property
    def events_queue(self) -> str:
        return self.var("EVENTS_QUEUE_NAME") or f"{self.app_name}-{self.stage}-events"

    @property
    def dead_letter_queue(self) -> str:
        return self.var("DEAD_LETTER_QUEUE_NAME") or f"{self.app_name}-{self.stage}-dlq"

    @property
    def bucket(self) -> str:
        return self.var("SNAPSHOT_BUCKET") or f"{self.app_name}-{self.stage}-snapshots"

    @property
    def key_parameter(self) -> str:
        return self.var("USERHUB_ADMIN_KEY_PARAMETER") or f"/{self.app_name}/{self.stage}/admin-key"

    @property
    def user_pool_id(self) -> str | None:
        pool = self.var("USER_POOL_ID")
        return None if is_placeholder(pool) else pool

    def function_name(self, function: str) -> str:
        """The deployed name, as `chalice deploy` builds it (`{app_name}-{stage}-{name}`)."""
        return f"{self.app_name}-{self.stage}-{function}"

    def stage_block(self) -> dict[str, Any]:
        return (self.config.get("stages") or {}).get(self.stage) or {}

    def function_setting(self, function: str, key: str, default: Any = None) -> Any:
        """Chalice's lookup order: stage's per-function block, stage, top-level per-function block, top level."""
        stage = self.stage_block()
        for scope in (
            ((stage.get("lambda_functions") or {}).get(function) or {}),
            stage,
            ((self.config.get("lambda_functions") or {}).get(function) or {}),
            self.config,
        ):
            if key in scope:
                return scope[key]
        return default

    def deliver_timeout(self) -> int:
        return int(self.function_setting("deliver", "lambda_timeout", CHALICE_DEFAULT_TIMEOUT))


def is_placeholder(value: str | None) -> bool:
    return not value or "CHANGEME" in value


def load_stage(stage: str, project_dir: Path | None = None) -> StageContext:
    """Read config.json, put the stage's variables into os.environ (shell wins) and return its names."""
    project = project_dir or find_project_dir()
    try:
        variables = apply_stage(stage, project_dir=project)
        config = read_config(project)
    except StageError as error:
        raise OpsError(str(error)) from None
    return StageContext(stage=stage, project_dir=project, config=config, variables=variables)


# ----------------------------------------------------------------------------------------------- deployed state
@dataclass
class DeployedState:
    """What `chalice deploy` recorded in `.chalice/deployed/<stage>.json`."""

    path: Path
    functions: dict[str, str] = field(default_factory=dict)  # chalice name -> lambda ARN
    sqs_events: dict[str, dict[str, str]] = field(default_factory=dict)  # resource name -> record

    def esm_uuid(self, function: str = "deliver") -> str | None:
        record = self.sqs_events.get(f"{function}-sqs-event-source")
        if record is None:  # a custom name= on the decorator: find it by the function's ARN
            arn = self.functions.get(function)
            record = next((r for r in self.sqs_events.values() if arn and r.get("lambda_arn") == arn), None)
        return (record or {}).get("event_uuid")


def read_deployed(project_dir: Path, stage: str) -> DeployedState | None:
    path = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise OpsError(f"{path} is not valid JSON: {error}") from None
    state = DeployedState(path=path)
    for resource in data.get("resources") or []:
        kind = resource.get("resource_type")
        if kind == "lambda_function" and resource.get("lambda_arn"):
            state.functions[resource["name"]] = resource["lambda_arn"]
        elif kind == "sqs_event":
            state.sqs_events[resource.get("name", "")] = resource
    return state


# ----------------------------------------------------------------------------------------------- time
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


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 time (as `dlq_attributes` writes it) or SQS epoch milliseconds."""
    if not text:
        return None
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def to_jsonable(value: Any) -> Any:
    """json.dumps default: datetimes as ISO strings."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
