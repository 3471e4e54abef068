"""`wire --stage S`: what `chalice deploy` cannot do, done after it, idempotently.

1. ReportBatchItemFailures on deliver's event source mapping (Chalice never sets it, aws/chalice#2029; its later
   UpdateEventSourceMapping calls do not send FunctionResponseTypes, so the setting survives redeploys), and the
   fleet bound: the mapping's ScalingConfig.MaximumConcurrency is the stage's DELIVER_MAX_CONCURRENCY (`chalice
   deploy` sends it too; wire corrects a mapping changed by hand or deployed before the setting, and says from what).
2. Cognito's permission to invoke post_auth, scoped to the pool's ARN (added before the trigger, so there is no
   moment in which sign-ins fail with AccessDenied).
3. The PostAuthentication trigger (PostConfirmation on request). UpdateUserPool resets every setting it is not
   given, so the request is the pool's own DescribeUserPool output cut down to what UpdateUserPool accepts (from
   botocore's model) with only LambdaConfig changed; the pool is then described again and any other difference is
   a loud failure. A different trigger already in place is never replaced without `force`.
4. Lambda's advanced logging controls on the trigger functions (post_auth, and post_confirmation when wired):
   `LoggingConfig` JSON format, system log level WARN, application log level INFO. Lambda then writes no START,
   END and REPORT lines for them (≈300 bytes per sign-in, about $4.50 a month at a million sign-ins a day), while
   our JSON lines, EMF lines and recovery records still reach CloudWatch Logs unchanged (docs/OPERATIONS.md says
   why, with AWS's documentation). Chalice 1.34 cannot set it, and its later UpdateFunctionConfiguration calls do
   not send it, so the setting survives redeploys. `keep_platform_logs` leaves it alone. A function whose
   configuration has no LoggingConfig at all (an endpoint that does not model it, such as moto) is reported as
   such, not changed.

Two runs agree: AdminCreateUserConfig.UnusedAccountValidityDays is deprecated and has no effect once the pool has
PasswordPolicy.TemporaryPasswordValidityDays (AWS: "that value is effective until you set a value for
TemporaryPasswordValidityDays", docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/
API_AdminCreateUserConfigType.html). AWS refuses both in one UpdateUserPool, so the request leaves the deprecated
one out, and its disappearing (whatever its value was) is reported as a note, not as a pool change (exit 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from userhub_sync.ops.aws import aws_errors, caller_identity, client, error_code, queue_arn, queue_url_or_none
from userhub_sync.ops.errors import ExitCode, OpsError
from userhub_sync.ops.stage import POOL_ID_RE, StageContext, read_deployed

if TYPE_CHECKING:
    from types_boto3_cognito_idp import CognitoIdentityProviderClient
    from types_boto3_lambda import LambdaClient
    from types_boto3_lambda.type_defs import LoggingConfigTypeDef

RESPONSE_TYPE: Final = "ReportBatchItemFailures"
# no START/END/REPORT lines; INFO, not higher: our lines and EMF carry no Lambda level, so Lambda files them as INFO
LOGGING_CONFIG: Final = {"LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "WARN"}
COGNITO_PRINCIPAL = "cognito-idp.amazonaws.com"
TRIGGERS = {"post_auth": "PostAuthentication", "post_confirmation": "PostConfirmation"}
# DescribeUserPool fields that change by themselves and are not settings
VOLATILE = {"LastModifiedDate", "EstimatedNumberOfUsers", "Status"}
DEPRECATED_VALIDITY = "AdminCreateUserConfig.UnusedAccountValidityDays"
MOTO_USERNAME_ATTRIBUTES_NOTE = (
    "UsernameAttributes cannot be changed through UpdateUserPool on AWS; moto resets it on every update_user_pool "
    "(a moto bug). On AWS this difference means something else changed the pool."
)


class WireStatus(StrEnum):
    OK = "ok"  # already in place
    SET = "set"
    ADDED = "added"
    WOULD_SET = "would set"  # --dry-run
    WOULD_ADD = "would add"
    LEFT = "left as is"  # --keep-platform-logs
    NOT_SUPPORTED = "not supported"  # the endpoint reports no such setting


@dataclass
class WireStep:
    what: str
    status: WireStatus
    detail: str = ""


@dataclass
class PoolChange:
    path: str
    before: Any
    after: Any


@dataclass
class WireResult:
    steps: list[WireStep] = field(default_factory=list)
    unexpected: list[PoolChange] = field(default_factory=list)  # pool settings other than LambdaConfig that changed

    @property
    def ok(self) -> bool:
        return not self.unexpected

    def to_dict(self, stage: str) -> dict[str, Any]:
        return {
            "stage": stage,
            "ok": self.ok,
            "steps": [asdict(step) for step in self.steps],
            "unexpected_changes": [asdict(change) for change in self.unexpected],
        }


class PoolChangedError(OpsError):
    """UpdateUserPool changed more than LambdaConfig."""

    def __init__(self, result: WireResult) -> None:
        paths = ", ".join(change.path for change in result.unexpected)
        message = f"UpdateUserPool changed settings other than LambdaConfig: {paths}"
        if any(change.path.split(".")[0] == "UsernameAttributes" for change in result.unexpected):
            message += ". " + MOTO_USERNAME_ATTRIBUTES_NOTE
        super().__init__(message, exit_code=ExitCode.POOL_CHANGED)
        self.result = result


@dataclass(frozen=True)
class Functions:
    """The deployed ARNs wire needs, from `.chalice/deployed/<stage>.json` or looked up by name."""

    arns: dict[str, str]
    esm_uuid: str | None
    deployed_file: Path | None  # the deployed file read; None: there is none, the ARNs were found by function name

    @property
    def source(self) -> str:
        return str(self.deployed_file) if self.deployed_file else "function names"


def locate_functions(
    ctx: StageContext,
    lam: LambdaClient,
    overrides: dict[str, str | None],
    wanted: list[str],
    *,
    offer_arn_options: bool = True,  # only `wire` has the --<function>-arn options to name in the error
) -> Functions:
    deployed = read_deployed(ctx.project_dir, ctx.stage)
    arns: dict[str, str] = dict(deployed.functions) if deployed else {}
    for name, arn in overrides.items():
        if arn:
            arns[name] = arn
    for name in wanted:
        if name not in arns:
            try:
                arns[name] = lam.get_function(FunctionName=ctx.function_name(name))["Configuration"]["FunctionArn"]
            except aws_errors() as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise
                hint = f" (or pass --{name.replace('_', '-')}-arn)" if offer_arn_options else ""
                deploy = f"chalice deploy --stage {ctx.stage}"
                raise OpsError(f"function {ctx.function_name(name)} not found: run `{deploy}` first{hint}") from None
    esm = deployed.esm_uuid("deliver") if deployed and not overrides.get("deliver") else None
    return Functions(arns, esm, deployed.path if deployed else None)


def find_mapping(lam: LambdaClient, deliver_arn: str, queue_arn: str | None, uuid: str | None) -> dict[str, Any]:
    """deliver's SQS mapping: by the UUID Chalice recorded, else by listing the function's mappings."""
    if uuid:
        try:
            return document(lam.get_event_source_mapping(UUID=uuid))
        except aws_errors() as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
    mappings: list[dict[str, Any]] = []
    for page in lam.get_paginator("list_event_source_mappings").paginate(FunctionName=deliver_arn):
        mappings.extend(document(m) for m in page.get("EventSourceMappings") or [])
    sqs_mappings = [m for m in mappings if ":sqs:" in (m.get("EventSourceArn") or "")]
    if queue_arn:
        exact = [m for m in sqs_mappings if m.get("EventSourceArn") == queue_arn]
        sqs_mappings = exact or sqs_mappings
    if not sqs_mappings:
        raise OpsError(f"{deliver_arn} has no SQS event source mapping: was `chalice deploy` run for this stage?")
    if len(sqs_mappings) > 1:
        raise OpsError(f"{deliver_arn} has {len(sqs_mappings)} SQS mappings; expected one on {queue_arn}")
    return sqs_mappings[0]


def ensure_mapping(lam: LambdaClient, mapping: dict[str, Any], wanted: int, dry_run: bool) -> list[WireStep]:
    """ReportBatchItemFailures, and at most `wanted` deliver containers (ScalingConfig.MaximumConcurrency), on
    deliver's mapping, in one UpdateEventSourceMapping: Lambda refuses a second update while the first is applied."""
    uuid = mapping["UUID"]
    types = mapping.get("FunctionResponseTypes") or []
    current = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
    types_ok, scaling_ok = RESPONSE_TYPE in types, current == wanted
    was = f"{wanted} containers (was {current if current is not None else 'unbounded'})"
    changes: dict[str, Any] = {}
    if not types_ok:
        changes["FunctionResponseTypes"] = [*types, RESPONSE_TYPE]
    if not scaling_ok:
        changes["ScalingConfig"] = {"MaximumConcurrency": wanted}
    if changes and not dry_run:
        updated = lam.update_event_source_mapping(UUID=uuid, **changes)
        if RESPONSE_TYPE not in (updated.get("FunctionResponseTypes") or []):
            raise OpsError(f"UpdateEventSourceMapping did not keep FunctionResponseTypes on {uuid}")
        if (updated.get("ScalingConfig") or {}).get("MaximumConcurrency") != wanted:
            raise OpsError(f"UpdateEventSourceMapping did not keep MaximumConcurrency {wanted} on {uuid}")
    ok, changed = WireStatus.OK, WireStatus.WOULD_SET if dry_run else WireStatus.SET
    bound = f"{wanted} containers" if scaling_ok else was
    return [
        WireStep("ReportBatchItemFailures on deliver's event source mapping", ok if types_ok else changed, uuid),
        WireStep("fleet bound: MaximumConcurrency of deliver's mapping", ok if scaling_ok else changed, bound),
    ]


def _logging_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {config.get(key) or '-'}" for key in LOGGING_CONFIG)


def ensure_logging_config(
    lam: LambdaClient, function_arn: str, label: str, dry_run: bool, keep_platform_logs: bool
) -> WireStep:
    """`LOGGING_CONFIG` on a trigger function (module docstring, step 4); drift is reported with what it was."""
    what = f"{label}: no START/END/REPORT lines (LoggingConfig)"
    current = lam.get_function_configuration(FunctionName=function_arn).get("LoggingConfig")
    if current is None:
        return WireStep(what, WireStatus.NOT_SUPPORTED, "the Lambda endpoint reports no LoggingConfig; nothing set")
    if keep_platform_logs:
        return WireStep(what, WireStatus.LEFT, f"--keep-platform-logs: {_logging_text(current)}")
    if all(current.get(key) == value for key, value in LOGGING_CONFIG.items()):
        return WireStep(what, WireStatus.OK, _logging_text(current))
    was = f"{_logging_text(LOGGING_CONFIG)} (was {_logging_text(current)})"
    if dry_run:
        return WireStep(what, WireStatus.WOULD_SET, was)
    # right after `chalice deploy` the function may still be updating: a second update would be refused
    lam.get_waiter("function_updated_v2").wait(FunctionName=function_arn, WaiterConfig={"Delay": 2, "MaxAttempts": 60})
    updated = lam.update_function_configuration(
        FunctionName=function_arn, LoggingConfig=cast("LoggingConfigTypeDef", dict(LOGGING_CONFIG))
    )
    kept = updated.get("LoggingConfig") or {}
    if any(kept.get(key) != value for key, value in LOGGING_CONFIG.items()):
        raise OpsError(f"UpdateFunctionConfiguration did not keep LoggingConfig on {function_arn}: {kept}")
    return WireStep(what, WireStatus.SET, was)


def _statements(lam: LambdaClient, function_arn: str) -> list[dict[str, Any]]:
    try:
        policy = lam.get_policy(FunctionName=function_arn)["Policy"]
    except aws_errors() as error:
        if error_code(error) == "ResourceNotFoundException":  # no resource policy yet
            return []
        raise
    return json.loads(policy).get("Statement") or []


def _source_arn(statement: dict[str, Any]) -> str | None:
    condition = statement.get("Condition") or {}
    for operator in ("ArnLike", "ArnEquals", "StringEquals", "StringLike"):
        block = condition.get(operator) or {}
        for key, value in block.items():
            if key.lower() == "aws:sourcearn":
                return value[0] if isinstance(value, list) and len(value) == 1 else value
    return None


def has_cognito_permission(lam: LambdaClient, function_arn: str, pool_arn: str) -> bool:
    for statement in _statements(lam, function_arn):
        principal = statement.get("Principal") or {}
        service = principal.get("Service") if isinstance(principal, dict) else principal
        actions = statement.get("Action")
        actions = actions if isinstance(actions, list) else [actions]
        if (
            statement.get("Effect") == "Allow"
            and service == COGNITO_PRINCIPAL
            and any(a in ("lambda:InvokeFunction", "lambda:*") for a in actions)
            and _source_arn(statement) == pool_arn
        ):
            return True
    return False


def statement_id(pool_id: str) -> str:
    return f"userhub-sync-cognito-{pool_id}"[:100]


def ensure_permission(
    lam: LambdaClient, function_arn: str, pool_arn: str, pool_id: str, label: str, dry_run: bool
) -> WireStep:
    what = f"Cognito may invoke {label}"
    if has_cognito_permission(lam, function_arn, pool_arn):
        return WireStep(what, WireStatus.OK, f"source {pool_arn}")
    if dry_run:
        return WireStep(what, WireStatus.WOULD_ADD, f"source {pool_arn}")
    sid = statement_id(pool_id)

    def add() -> None:
        lam.add_permission(
            FunctionName=function_arn,
            StatementId=sid,
            Action="lambda:InvokeFunction",
            Principal=COGNITO_PRINCIPAL,
            SourceArn=pool_arn,
        )

    try:
        add()
    except aws_errors() as error:
        if error_code(error) != "ResourceConflictException":
            raise
        # our statement id exists but does not match (e.g. edited by hand): replace it, it is ours
        if has_cognito_permission(lam, function_arn, pool_arn):
            return WireStep(what, WireStatus.OK, f"source {pool_arn}")
        lam.remove_permission(FunctionName=function_arn, StatementId=sid)
        add()
    if not has_cognito_permission(lam, function_arn, pool_arn):
        raise OpsError(f"AddPermission on {function_arn} did not produce a statement for {pool_arn}")
    return WireStep(what, WireStatus.ADDED, f"source {pool_arn}")


def document(value: Mapping[str, Any]) -> dict[str, Any]:
    """An AWS response as the plain document wire compares and copies key by key."""
    return dict(value)


def describe_pool(cognito: CognitoIdentityProviderClient, pool_id: str) -> dict[str, Any]:
    return document(cognito.describe_user_pool(UserPoolId=pool_id)["UserPool"])


def _shape_filter(value: Any, shape: Any) -> Any:
    """Keep only what the UpdateUserPool input shape accepts, recursively (Describe returns read-only extras)."""
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, dict):
        return {k: _shape_filter(v, shape.members[k]) for k, v in value.items() if k in shape.members}
    if shape.type_name == "list" and isinstance(value, list):
        return [_shape_filter(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: _shape_filter(v, shape.value) for k, v in value.items()}
    return value


def update_request(
    cognito: CognitoIdentityProviderClient, pool: dict[str, Any], lambda_config: dict[str, Any]
) -> dict[str, Any]:
    """The UpdateUserPool request that leaves everything but LambdaConfig as DescribeUserPool shows it."""
    shape = cognito.meta.service_model.operation_model("UpdateUserPool").input_shape
    assert shape is not None  # UpdateUserPool takes input
    request = _shape_filter({k: v for k, v in pool.items() if k in shape.members}, shape)
    if "PoolName" in shape.members and pool.get("Name"):
        request["PoolName"] = pool["Name"]  # newer APIs take PoolName; Describe calls it Name
    # AWS rejects the deprecated UnusedAccountValidityDays next to TemporaryPasswordValidityDays,
    # and Describe returns both
    temporary = ((request.get("Policies") or {}).get("PasswordPolicy") or {}).get("TemporaryPasswordValidityDays")
    if temporary is not None:
        (request.get("AdminCreateUserConfig") or {}).pop("UnusedAccountValidityDays", None)
    request["UserPoolId"] = pool["Id"]
    request["LambdaConfig"] = lambda_config
    return request


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        if not value and prefix:
            yield prefix, {}
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def diff_pool(before: dict[str, Any], after: dict[str, Any], ignore: set[str]) -> list[PoolChange]:
    """Every leaf that differs between two DescribeUserPool outputs, except the ignored top-level keys."""
    left = {p: v for p, v in _flatten({k: v for k, v in before.items() if k not in ignore})}
    right = {p: v for p, v in _flatten({k: v for k, v in after.items() if k not in ignore})}
    return [
        PoolChange(path, left.get(path), right.get(path))
        for path in sorted(set(left) | set(right))
        if left.get(path) != right.get(path)
    ]


def check_conflicts(pool: dict[str, Any], wanted: dict[str, str], force: bool) -> dict[str, str]:
    """Triggers set to another function; an error unless `force` (checked before wire changes anything)."""
    current = pool.get("LambdaConfig") or {}
    conflicts = {t: current[t] for t, arn in wanted.items() if current.get(t) and current[t] != arn}
    if conflicts and not force:
        listed = "; ".join(f"{t} is {arn}" for t, arn in conflicts.items())
        raise OpsError(
            f"pool {pool['Id']} already has a different trigger ({listed}); nothing was changed. "
            "Pass --force to replace it.",
            exit_code=ExitCode.TRIGGER_CONFLICT,
        )
    return conflicts


def _temporary_password_days(pool: dict[str, Any]) -> Any:
    return ((pool.get("Policies") or {}).get("PasswordPolicy") or {}).get("TemporaryPasswordValidityDays")


def _deprecated_alias(change: PoolChange, before: dict[str, Any]) -> bool:
    """UnusedAccountValidityDays has no effect once TemporaryPasswordValidityDays is set (see the module docstring):
    update_request leaves it out, so its disappearing or changing is not a change of the pool's behaviour."""
    return change.path == DEPRECATED_VALIDITY and _temporary_password_days(before) is not None


def ensure_triggers(
    cognito: CognitoIdentityProviderClient,
    pool_id: str,
    wanted: dict[str, str],
    force: bool,
    dry_run: bool,
    result: WireResult,
) -> None:
    """Merge `wanted` ({"PostAuthentication": arn, ...}) into the pool's LambdaConfig, changing nothing else."""
    before = describe_pool(cognito, pool_id)
    current = dict(before.get("LambdaConfig") or {})
    conflicts = check_conflicts(before, wanted, force)
    todo = {t: arn for t, arn in wanted.items() if current.get(t) != arn}
    for trigger, arn in wanted.items():
        if trigger not in todo:
            result.steps.append(WireStep(f"{trigger} trigger", WireStatus.OK, arn))
    if not todo:
        return
    if dry_run:
        for trigger, arn in todo.items():
            result.steps.append(WireStep(f"{trigger} trigger", WireStatus.WOULD_SET, arn))
        return
    merged = {**current, **todo}
    cognito.update_user_pool(**update_request(cognito, before, merged))
    after = describe_pool(cognito, pool_id)
    changes = diff_pool(before, after, VOLATILE | {"LambdaConfig"})
    result.unexpected = [c for c in changes if not _deprecated_alias(c, before)]
    for change in changes:
        if _deprecated_alias(change, before):
            result.steps.append(
                WireStep(
                    "deprecated UnusedAccountValidityDays",
                    WireStatus.OK,
                    f"{change.before} → {change.after}: no effect, TemporaryPasswordValidityDays "
                    f"({_temporary_password_days(before)}) applies; UpdateUserPool takes only one of the two",
                )
            )
    lost = diff_pool({"LambdaConfig": merged}, {"LambdaConfig": after.get("LambdaConfig") or {}}, set())
    result.unexpected.extend(lost)
    for trigger, arn in todo.items():
        replaced = f"replaced {conflicts[trigger]}" if trigger in conflicts else ""
        result.steps.append(WireStep(f"{trigger} trigger", WireStatus.SET, f"{arn} {replaced}".strip()))


def wire(
    ctx: StageContext,
    *,
    user_pool_id: str | None = None,
    post_confirmation: bool = False,
    force: bool = False,
    dry_run: bool = False,
    skip_esm: bool = False,
    keep_platform_logs: bool = False,
    arns: dict[str, str | None] | None = None,
) -> WireResult:
    """Run the four steps of the module docstring; raises PoolChangedError if the pool changed unexpectedly."""
    pool_id = user_pool_id or ctx.user_pool_id
    if not pool_id:
        raise OpsError("no user pool: pass --user-pool-id or set USER_POOL_ID for the stage (bootstrap does it)")
    if not POOL_ID_RE.match(pool_id):
        raise OpsError(f"{pool_id!r} is not a user pool id (like us-east-1_AbC123)")
    fleet_bound = ctx.deliver_max_concurrency()  # a bad value fails before anything changes
    lam = client("lambda")
    cognito = client("cognito-idp")
    try:
        pool = describe_pool(cognito, pool_id)
    except aws_errors() as error:
        if error_code(error) == "ResourceNotFoundException":
            raise OpsError(f"user pool {pool_id} not found") from None
        raise
    pool_arn = pool.get("Arn") or _pool_arn(pool_id)
    triggers = ["post_auth"] + (["post_confirmation"] if post_confirmation else [])
    functions = locate_functions(ctx, lam, arns or {}, triggers + ([] if skip_esm else ["deliver"]))
    wanted = {TRIGGERS[n]: functions.arns[n] for n in triggers}
    check_conflicts(pool, wanted, force)
    result = WireResult()

    if not skip_esm:
        queue_arn = events_queue_arn(ctx)
        mapping = find_mapping(lam, functions.arns["deliver"], queue_arn, functions.esm_uuid)
        result.steps.extend(ensure_mapping(lam, mapping, fleet_bound, dry_run))

    for name in triggers:
        result.steps.append(ensure_permission(lam, functions.arns[name], pool_arn, pool_id, name, dry_run))
    for name in triggers:
        arn = functions.arns[name]
        result.steps.append(ensure_logging_config(lam, arn, name, dry_run, keep_platform_logs))
    ensure_triggers(cognito, pool_id, wanted, force, dry_run, result)
    if result.unexpected:
        raise PoolChangedError(result)
    return result


def _pool_arn(pool_id: str) -> str:
    ident = caller_identity()
    return f"arn:{ident.partition}:cognito-idp:{ident.region}:{ident.account}:userpool/{pool_id}"


def events_queue_arn(ctx: StageContext) -> str | None:
    sqs = client("sqs")
    url = queue_url_or_none(sqs, ctx.events_queue)
    return queue_arn(sqs, url) if url else None
