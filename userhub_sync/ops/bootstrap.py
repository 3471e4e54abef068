"""`bootstrap --stage S`: everything a stage needs before `chalice deploy`, created or checked, idempotently.

Chalice creates no queues, buckets or parameters, and `on_sqs_message` needs its queue to exist at deploy time.
So this creates the DLQ, the events queue (redrive, retention, SSE, visibility), the snapshot bucket, the Admin
key's SecureString, then writes the names into `.chalice/config.json` and the per-function IAM policies with the
stage's exact ARNs. A second run changes nothing; drift is reported, and corrected only with `fix=True` (the
`--fix` option), so nobody's hand-made change is silently undone.

Invariant: deliver's whole retry schedule (every wait at its largest) plus RETENTION_MARGIN_SECONDS fits in the
events queue's retention, so SQS never deletes a message before deliver could dead-letter it. A configuration that
does not fit is refused before anything is created; with `check=True` (or on an existing queue) it is reported.
The schedule is read through chalicelib's Settings (`ops.schedule.delivery_schedule`), the one definition deliver uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from chalicelib.sqs_limits import MAX_RETENTION_SECONDS, MAX_VISIBILITY_SECONDS, MIN_RETENTION_SECONDS
from userhub_sync.ops import policies
from userhub_sync.ops.alarms import Names, alarm_settings_of, ensure_alarms
from userhub_sync.ops.aws import aws_errors, caller_identity, client, error_code
from userhub_sync.ops.bucket import ensure_bucket
from userhub_sync.ops.durations import format_span
from userhub_sync.ops.errors import OpsError
from userhub_sync.ops.queues import DLQ_RETENTION_SECONDS, EVENTS_RETENTION_SECONDS, QueueSpec, ensure_queues
from userhub_sync.ops.schedule import RetentionFit, Schedule, delivery_schedule, retention_fit
from userhub_sync.ops.stage import CONNECTION_RE, POOL_ID_RE, StageContext, default_names, write_config
from userhub_sync.ops.steps import Step, StepStatus
from userhub_sync.ops.trail import ensure_trail

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

MIN_RETRY_HORIZON_SECONDS = 24 * 3600
DEFAULT_MAX_RECEIVE_COUNT = 13


@dataclass
class BootstrapOptions:
    max_receive_count: int | None = None  # None: the stage's MAX_RECEIVE_COUNT, else 13
    allow_short_retry: bool = False
    events_retention: int | None = None  # seconds; None: the stage's EVENTS_RETENTION_SECONDS, else 4 days
    kms_key: str | None = None  # None: the stage's KMS_KEY_ARN, else SQS-managed SSE and alias/aws/ssm
    fix: bool = False
    check: bool = False  # read-only: create and write nothing
    user_pool_id: str | None = None
    connection_id: str | None = None
    admin_key: str | None = None  # from USERHUB_ADMIN_KEY (never an argument)
    ask_key: Callable[[], str] | None = None  # a hidden prompt, called only if the parameter must be created
    skip_key: bool = False
    max_concurrency: int | None = None  # the fleet bound; None: the stage's DELIVER_MAX_CONCURRENCY, else 5
    # alarm thresholds and SNS topics; None: the stage's ALARM_* variable, else the default (ops/alarms.py)
    alarm_oldest_age: int | None = None
    alarm_429_percent: float | None = None
    alarm_reconcile_hours: int | None = None
    alarm_actions: list[str] | None = None
    create_trail: bool = False  # create a CloudTrail trail for capture if none feeds it (ops/trail.py)


@dataclass
class BootstrapResult:
    stage: str
    account: str
    region: str
    max_receive_count: int
    retry_horizon_seconds: float
    visibility_timeout: int
    retention: RetentionFit  # of the events queue as it is (or, before it exists, as it will be)
    steps: list[Step] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return any(step.needs_attention for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Every field as it is, but the retention as its report (with the verdict) and the overall verdict."""
        return {**asdict(self), "retention": self.retention.to_dict(), "needs_attention": self.needs_attention}


def check_horizon(schedule: Schedule, max_receive_count: int, allow_short: bool) -> float:
    """Seconds of retrying before the DLQ, at the least; refuses < 24 h unless allowed (see also `retention_fit`)."""
    if max_receive_count < 1 or max_receive_count > 1000:
        raise OpsError(f"maxReceiveCount must be between 1 and 1000, not {max_receive_count}")
    horizon = schedule.policy.minimum_horizon(max_receive_count)
    if horizon < MIN_RETRY_HORIZON_SECONDS and not allow_short:
        raise OpsError(
            f"maxReceiveCount {max_receive_count} retries for only {format_span(horizon)} (< 24 h) with this "
            f"backoff; raise it (default {DEFAULT_MAX_RECEIVE_COUNT}) or pass --allow-short-retry"
        )
    return horizon


def events_retention(ctx: StageContext, opts: BootstrapOptions) -> int:
    """The events queue's MessageRetentionPeriod: the option, else the stage's EVENTS_RETENTION_SECONDS, else 4 d."""
    chosen = opts.events_retention
    if chosen is None:
        configured = ctx.var("EVENTS_RETENTION_SECONDS")
        try:
            chosen = int(configured) if configured else EVENTS_RETENTION_SECONDS
        except ValueError:
            raise OpsError("EVENTS_RETENTION_SECONDS is not a whole number of seconds") from None
    if not MIN_RETENTION_SECONDS <= chosen <= MAX_RETENTION_SECONDS:
        raise OpsError(
            f"the events queue's retention must be between 1 minute and 14 days (SQS's limits), not "
            f"{format_span(chosen)}"
        )
    return int(chosen)


def fleet_bound_of(ctx: StageContext, opts: BootstrapOptions) -> int:
    """DELIVER_MAX_CONCURRENCY: the option, else the stage's, else the default (checked against Lambda's bounds)."""
    from chalicelib.sqs_limits import deliver_max_concurrency

    chosen = str(opts.max_concurrency) if opts.max_concurrency is not None else ctx.var("DELIVER_MAX_CONCURRENCY")
    try:
        return deliver_max_concurrency(chosen)
    except ValueError as error:
        raise OpsError(f"{error}. Nothing was created or changed.") from None


class EventSourceBatch(NamedTuple):
    size: int  # records per deliver invocation (the mapping's BatchSize)
    window_seconds: int  # MaximumBatchingWindowInSeconds


def event_source_batch_of(ctx: StageContext) -> EventSourceBatch:
    """deliver's batch size and batching window, read as app.py reads them at deploy: a bad value is refused here,
    before anything is created, not later by `chalice deploy`."""
    from chalicelib.sqs_limits import deliver_batch_size, deliver_batching_window

    try:
        size = deliver_batch_size(ctx.deploy_var("DELIVER_BATCH_SIZE"), ctx.deploy_var("DELIVERY_CONCURRENCY"))
        return EventSourceBatch(size, deliver_batching_window(ctx.deploy_var("DELIVER_BATCHING_WINDOW_SECONDS"), size))
    except ValueError as error:
        raise OpsError(f"{error}. Nothing was created or changed.") from None


def fleet_step(ctx: StageContext, bound: int, batch: EventSourceBatch) -> Step:
    """The arithmetic an operator agrees with UserHub: containers × calls in flight, containers × calls/s (with the
    values the deployed functions get, as the batch is read)."""
    from chalicelib.sqs_limits import DEFAULT_DELIVERY_CONCURRENCY

    concurrency = ctx.deploy_var("DELIVERY_CONCURRENCY") or str(DEFAULT_DELIVERY_CONCURRENCY)
    rate = ctx.deploy_var("DELIVERY_RATE_LIMIT")
    detail = f"at most {bound} deliver containers × DELIVERY_CONCURRENCY {concurrency}"
    if concurrency.isdigit():
        detail += f" = {bound * int(concurrency)} UserHub calls in flight"
    try:
        detail += f"; × DELIVERY_RATE_LIMIT {rate} = {bound * float(rate):g} calls/s at most" if rate else ""
    except ValueError:
        detail += f"; DELIVERY_RATE_LIMIT {rate!r} is not a number"
    if not rate:
        detail += "; no DELIVERY_RATE_LIMIT: calls/s not capped"
    detail += f"; batches of up to {batch.size} records, {batch.window_seconds} s batching window"
    return Step("fleet bound", f"DELIVER_MAX_CONCURRENCY {bound}", StepStatus.OK, detail)


def resolve_kms_key(key: str | None) -> str | None:
    """A key id, alias or ARN → the key's ARN (IAM policies can only name keys by ARN)."""
    if not key:
        return None
    try:
        return client("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    except aws_errors() as error:
        raise OpsError(f"KMS key {key!r} not found or not readable ({error_code(error)})") from None


def ensure_parameter(ssm: SSMClient, name: str, stage: str, kms_key_arn: str | None, opts: BootstrapOptions) -> Step:
    """The Admin key's SecureString. The key is never printed, logged or put in an exception message."""
    found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}]).get("Parameters") or []
    info = found[0] if found else None
    key = (opts.admin_key or "").strip() or None
    if opts.skip_key:
        if info is None:
            return Step(
                "admin key",
                name,
                StepStatus.MISSING,
                "--skip-key: create it with `aws ssm put-parameter --type SecureString` before the first delivery",
            )
        return Step(
            "admin key",
            name,
            StepStatus.OK if info.get("Type") == "SecureString" else StepStatus.DRIFT,
            f"{info.get('Type')}, version {info.get('Version')} (not changed: --skip-key)",
        )
    if info is None:
        if opts.check:
            return Step(
                "admin key", name, StepStatus.MISSING, "run bootstrap (with USERHUB_ADMIN_KEY or at the prompt)"
            )
        if key is None and opts.ask_key is not None:
            key = (opts.ask_key() or "").strip() or None
        if key is None:
            return Step(
                "admin key", name, StepStatus.MISSING, "no key given: set USERHUB_ADMIN_KEY or answer the prompt"
            )
        version = _put_key(ssm, name, key, stage, kms_key_arn, overwrite=False)
        return Step("admin key", name, StepStatus.CREATED, f"SecureString, version {version}")
    if info.get("Type") != "SecureString":
        if not (opts.fix and not opts.check):
            return Step(
                "admin key",
                name,
                StepStatus.DRIFT,
                f"is a {info.get('Type')} parameter, not SecureString: rerun with --fix to re-store it",
            )
        value = key or ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        ssm.delete_parameter(Name=name)  # SSM cannot change a parameter's type in place
        version = _put_key(ssm, name, value, stage, kms_key_arn, overwrite=False)
        return Step("admin key", name, StepStatus.FIXED, f"re-stored as SecureString, version {version}")
    if key is None:
        return Step("admin key", name, StepStatus.OK, f"SecureString, version {info.get('Version')} (left as it is)")
    current = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    if current == key:
        return Step("admin key", name, StepStatus.OK, f"SecureString, version {info.get('Version')} (same key)")
    if opts.check:
        return Step("admin key", name, StepStatus.WOULD_UPDATE, "USERHUB_ADMIN_KEY differs from the stored key")
    version = _put_key(ssm, name, key, stage, kms_key_arn, overwrite=True)
    return Step("admin key", name, StepStatus.UPDATED, f"new key stored, version {version}")


def _put_key(ssm: SSMClient, name: str, value: str, stage: str, kms_key_arn: str | None, *, overwrite: bool) -> int:
    kwargs: dict[str, Any] = {
        "Name": name,
        "Value": value,
        "Type": "SecureString",
        "Overwrite": overwrite,
        "Description": f"UserHub Admin API key for userhub-sync stage {stage}",
    }
    if kms_key_arn:
        kwargs["KeyId"] = kms_key_arn
    try:
        return int(ssm.put_parameter(**kwargs).get("Version", 1))
    except Exception as error:  # broad: any error's text might quote the request, which carries the key
        raise OpsError(f"could not store the Admin key in {name}: {error_code(error)}") from None


def new_stage_block(config: dict[str, Any], stage: str, template_stage: str | None) -> dict[str, Any]:
    """A stage copied from `template_stage` (tunables, timeouts, memory) with this stage's names."""
    stages = config.get("stages") or {}
    base = copy.deepcopy(stages.get(template_stage or "", {})) if template_stage else {}
    if template_stage and template_stage not in stages:
        raise OpsError(f"--from-stage {template_stage!r} is not in .chalice/config.json")
    app = str(config.get("app_name") or "userhub-sync")
    base["api_gateway_stage"] = stage
    base["autogen_policy"] = False
    env = base.setdefault("environment_variables", {})
    for key in ("EVENTS_QUEUE_URL", "USER_POOL_ID", "USERHUB_ADMIN_KEY"):
        env.pop(key, None)
    env.update(default_names(app, stage))
    env.setdefault("USERHUB_CONNECTION_ID", "conn_CHANGEME")
    functions = base.setdefault("lambda_functions", {})
    for function, role in policies.FUNCTION_ROLES.items():
        functions.setdefault(function, {})["iam_policy_file"] = policies.default_policy_file(stage, role)
    return base


def updated_config(config: dict[str, Any], stage: str, values: dict[str, str]) -> dict[str, Any]:
    """A copy of config.json with the stage's variables set and every function on its own policy file."""
    result = copy.deepcopy(config)
    block = result.setdefault("stages", {}).setdefault(stage, {})
    block["autogen_policy"] = False
    env = block.setdefault("environment_variables", {})
    env.update(values)
    functions = block.setdefault("lambda_functions", {})
    for function, role in policies.FUNCTION_ROLES.items():
        functions.setdefault(function, {}).setdefault("iam_policy_file", policies.default_policy_file(stage, role))
    return result


def bootstrap(ctx: StageContext, opts: BootstrapOptions) -> BootstrapResult:
    """Create or check every resource of the stage; see the module docstring."""
    if opts.user_pool_id and not POOL_ID_RE.match(opts.user_pool_id):
        raise OpsError(f"--user-pool-id {opts.user_pool_id!r} is not a user pool id (like us-east-1_AbC123)")
    if opts.connection_id and not CONNECTION_RE.match(opts.connection_id):
        raise OpsError(f"--connection-id {opts.connection_id!r} is not a connection id (like conn_...)")
    stage_count = ctx.var("MAX_RECEIVE_COUNT")
    max_receive = opts.max_receive_count or int(stage_count or DEFAULT_MAX_RECEIVE_COUNT)
    # a short count already in config.json was accepted with --allow-short-retry once; keep accepting it
    accepted_before = opts.max_receive_count is None and stage_count is not None
    schedule = delivery_schedule()
    horizon = check_horizon(schedule, max_receive, opts.allow_short_retry or accepted_before)
    retention = events_retention(ctx, opts)
    planned = retention_fit(schedule, max_receive, retention)
    if not planned.ok and not opts.check:
        raise OpsError(f"{planned.describe()}. Nothing was created or changed.")
    fleet_bound = fleet_bound_of(ctx, opts)
    batch = event_source_batch_of(ctx)
    alarm_settings, alarm_values = alarm_settings_of(ctx, opts)  # refused here, before anything is created
    visibility = 6 * ctx.deliver_timeout()
    if visibility > MAX_VISIBILITY_SECONDS:
        raise OpsError(f"6 × deliver's lambda_timeout = {visibility} s exceeds SQS's 12 h visibility maximum")
    ident = caller_identity()
    kms_key_arn = resolve_kms_key(opts.kms_key or ctx.var("KMS_KEY_ARN"))
    result = BootstrapResult(ctx.stage, ident.account, ident.region, max_receive, horizon, visibility, planned)
    steps = result.steps

    if horizon < MIN_RETRY_HORIZON_SECONDS:
        steps.append(
            Step(
                "retry horizon",
                f"maxReceiveCount {max_receive}",
                StepStatus.WARNING,
                f"retries for only {format_span(horizon)} before the DLQ (< 24 h)",
            )
        )
    if ctx.var("USERHUB_ADMIN_KEY") and "USERHUB_ADMIN_KEY" in ctx.variables:
        steps.append(
            Step(
                "config",
                "USERHUB_ADMIN_KEY",
                StepStatus.WARNING,
                "config.json holds the key itself: remove it (it would be deployed in plain text)",
            )
        )

    # pool first (only checked: it belongs to the customer), so a wrong id fails before anything is created
    pool_id = opts.user_pool_id or ctx.user_pool_id
    if pool_id:
        try:
            client("cognito-idp").describe_user_pool(UserPoolId=pool_id)
            steps.append(
                Step("user pool", pool_id, StepStatus.OK, "exists (wire sets its trigger after chalice deploy)")
            )
        except aws_errors() as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            raise OpsError(f"user pool {pool_id} not found in {ident.region}") from None
    else:
        steps.append(
            Step(
                "user pool",
                "USER_POOL_ID",
                StepStatus.WARNING,
                "not set: pass --user-pool-id (reconcile and wire need it; its policy names a placeholder)",
            )
        )

    spec = QueueSpec(
        ctx.events_queue,
        ctx.dead_letter_queue,
        max_receive_count=max_receive,
        visibility_timeout=visibility,
        events_retention=retention,
        dlq_retention=DLQ_RETENTION_SECONDS,
        kms_key=kms_key_arn,
    )
    sqs = client("sqs")
    state = ensure_queues(sqs, spec, fix=opts.fix, create=not opts.check)
    for name, label in ((spec.dlq_name, "dead-letter queue"), (spec.events_name, "events queue")):
        mine = [d.split(": ", 1)[1] for d in state.drift if d.startswith(name + ": ")]
        if name in state.created:
            steps.append(Step(label, name, StepStatus.CREATED, _queue_detail(spec, label)))
        elif name in state.missing:
            steps.append(Step(label, name, StepStatus.MISSING, "run bootstrap without --check to create it"))
        elif mine:
            steps.append(
                Step(
                    label, name, StepStatus.FIXED if opts.fix and not opts.check else StepStatus.DRIFT, "; ".join(mine)
                )
            )
        else:
            steps.append(Step(label, name, StepStatus.OK, _queue_detail(spec, label)))
    if state.events_url and spec.events_name not in state.created and not (opts.fix and not opts.check):
        attrs = sqs.get_queue_attributes(QueueUrl=state.events_url, AttributeNames=["MessageRetentionPeriod"])
        actual = int(attrs["Attributes"].get("MessageRetentionPeriod", retention))
        result.retention = retention_fit(schedule, max_receive, actual)
    fit = result.retention
    steps.append(
        Step(
            "retry schedule",
            f"maxReceiveCount {max_receive}",
            StepStatus.OK if fit.ok else StepStatus.DRIFT,
            fit.describe(),
        )
    )

    steps.append(
        ensure_bucket(
            client("s3"), ctx.bucket, ident.region, ident.partition, kms_key_arn, fix=opts.fix, check=opts.check
        )
    )
    steps.append(ensure_parameter(client("ssm"), ctx.key_parameter, ctx.stage, kms_key_arn, opts))

    values = {
        "EVENTS_QUEUE_NAME": spec.events_name,
        "DEAD_LETTER_QUEUE_NAME": spec.dlq_name,
        "SNAPSHOT_BUCKET": ctx.bucket,
        "USERHUB_ADMIN_KEY_PARAMETER": ctx.key_parameter,
        "MAX_RECEIVE_COUNT": str(max_receive),
    }
    if retention != EVENTS_RETENTION_SECONDS or ctx.var("EVENTS_RETENTION_SECONDS"):
        values["EVENTS_RETENTION_SECONDS"] = str(retention)
    if state.events_url:
        values["EVENTS_QUEUE_URL"] = state.events_url
    if opts.user_pool_id:
        values["USER_POOL_ID"] = opts.user_pool_id
    if opts.connection_id:
        values["USERHUB_CONNECTION_ID"] = opts.connection_id
    if kms_key_arn:
        values["KMS_KEY_ARN"] = kms_key_arn
    values["DELIVER_MAX_CONCURRENCY"] = str(fleet_bound)
    steps.append(fleet_step(ctx, fleet_bound, batch))
    values.update(alarm_values)
    names = Names(f"{ctx.app_name}-{ctx.stage}", spec.events_name, spec.dlq_name, ident.region)
    steps.extend(ensure_alarms(client("cloudwatch"), names, alarm_settings, fix=opts.fix, check=opts.check))
    steps.append(ensure_trail(ctx, ident, create=opts.create_trail, check=opts.check))
    new_config = updated_config(ctx.config, ctx.stage, values)
    config_path = ctx.project_dir / ".chalice" / "config.json"
    if new_config == ctx.config:
        steps.append(Step("config", str(config_path), StepStatus.OK, "stage variables up to date"))
    elif opts.check:
        steps.append(Step("config", str(config_path), StepStatus.WOULD_UPDATE, "stage variables differ"))
    else:
        write_config(new_config, ctx.project_dir)
        changed = sorted(
            k for k, v in values.items() if (ctx.stage_block().get("environment_variables") or {}).get(k) != v
        )
        steps.append(Step("config", str(config_path), StepStatus.UPDATED, ", ".join(changed) or "policy file settings"))
        ctx.config = new_config

    targets = policies.PolicyTargets(
        app_name=ctx.app_name,
        stage=ctx.stage,
        account=ident.account,
        region=ident.region,
        partition=ident.partition,
        events_queue=spec.events_name,
        dead_letter_queue=spec.dlq_name,
        user_pool_id=pool_id or "CHANGEME",
        bucket=ctx.bucket,
        key_parameter=ctx.key_parameter,
        kms_key_arn=kms_key_arn,
    )
    steps.extend(_policy_steps(ctx.project_dir, new_config, targets, opts.check))
    return result


def _policy_steps(
    project_dir: Path, config: dict[str, Any], targets: policies.PolicyTargets, check: bool
) -> list[Step]:
    if check:
        steps = []
        for name, (role, functions) in policies.policy_files(config, targets.stage).items():
            path = project_dir / ".chalice" / name
            text = policies.render(policies.build_policy(role, functions, targets))
            same = path.exists() and path.read_text() == text
            steps.append(
                Step("IAM policy", name, StepStatus.OK if same else StepStatus.WOULD_UPDATE, ", ".join(functions))
            )
        return steps
    outcome = policies.write_policies(project_dir, config, targets)
    files = policies.policy_files(config, targets.stage)
    return [
        Step(
            "IAM policy",
            name,
            StepStatus.OK if status == policies.FileStatus.UNCHANGED else StepStatus(status),
            ", ".join(files[name][1]),
        )
        for name, status in outcome.items()
    ]


def _queue_detail(spec: QueueSpec, label: str) -> str:
    sse = "SSE-KMS" if spec.kms_key else "SSE-SQS"
    if label == "dead-letter queue":
        return f"retention {format_span(spec.dlq_retention)}, {sse}"
    return (
        f"maxReceiveCount {spec.max_receive_count}, visibility {spec.visibility_timeout} s, "
        f"retention {format_span(spec.events_retention)}, {sse}"
    )
