"""Capture's prerequisite and its health: a CloudTrail trail that delivers Cognito's API calls to EventBridge.

EventBridge receives "AWS API Call via CloudTrail" events only while a trail with logging on records write
management events in the pool's Region (https://docs.aws.amazon.com/eventbridge/latest/userguide/
eb-service-event-cloudtrail.html). A trail counts if it is in this Region or multi-Region (an organization trail
too), logs, and its selectors keep write management events from cognito-idp: classic selectors with
IncludeManagementEvents and ReadWriteType All or WriteOnly, or advanced selectors on eventCategory Management that do
not filter to read-only calls or leave cognito-idp.amazonaws.com out. No selectors at all is CloudTrail's default
(management events, read and write).

`bootstrap` reports what is missing (a warning: the nightly reconcile still covers every change) and, with
`--create-trail`, creates `<app>-<stage>-capture` and its bucket. `status` says whether capture is live: a usable
trail, the EventBridge rule `chalice deploy` made (`<app>-<stage>-capture-event`) ENABLED, and the age of the newest
`capture_enqueued` datapoint (unknown without CloudWatch data, e.g. on moto, which ingests no EMF).

Invariants: `ensure_trail` reads DescribeTrails once; that answer (typed `Trail`s) both judges the trails and says
whether ours exists. An AWS failure becomes a status line (a warning, "not readable"); anything else is a bug and
propagates as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.capture_rule import capture_enabled
from chalicelib.observability import NAMESPACE
from userhub_sync.ops.aws import Identity, aws_errors, client, error_code
from userhub_sync.ops.stage import StageContext, read_deployed
from userhub_sync.ops.steps import Step, StepStatus

COGNITO_SOURCE = "cognito-idp.amazonaws.com"
LOG_EXPIRY_DAYS = 30  # the trail is a conduit to EventBridge; its S3 copies are not read by userhub-sync


@dataclass(frozen=True)
class Trail:
    """One entry of DescribeTrails' answer: what judging it and finding ours need."""

    name: str
    arn: str  # what GetTrailStatus and GetEventSelectors take: a shadow trail is only found by its ARN
    bucket: str | None  # where it writes its log files
    home_region: str | None
    multi_region: bool
    organization: bool

    @classmethod
    def from_api(cls, entry: Mapping[str, Any]) -> Trail:
        name = str(entry.get("Name") or "?")
        return cls(
            name=name,
            arn=str(entry.get("TrailARN") or name),
            bucket=entry.get("S3BucketName") or None,
            home_region=entry.get("HomeRegion") or None,
            multi_region=bool(entry.get("IsMultiRegionTrail")),
            organization=bool(entry.get("IsOrganizationTrail")),
        )


def read_trails(cloudtrail: Any) -> tuple[Trail, ...]:
    """This Region's trails and every multi-Region one (shadow trails included): one DescribeTrails call."""
    return tuple(Trail.from_api(t) for t in cloudtrail.describe_trails(includeShadowTrails=True).get("trailList") or [])


@dataclass(frozen=True)
class TrailCheck:
    """Is there a trail that feeds capture? `trail` names the one found (or the best candidate), `detail` why not."""

    ok: bool
    trail: str | None
    detail: str


def records_cognito_writes(selectors: dict[str, Any]) -> bool:
    """Do these GetEventSelectors results keep write management events from cognito-idp? (Module docstring.)"""
    classic = selectors.get("EventSelectors") or []
    advanced = selectors.get("AdvancedEventSelectors") or []
    if not classic and not advanced:
        return True  # CloudTrail's default selector (moto returns none for a fresh trail)
    for selector in classic:
        if (
            selector.get("IncludeManagementEvents", True)
            and selector.get("ReadWriteType", "All") in ("All", "WriteOnly")
            and COGNITO_SOURCE not in (selector.get("ExcludeManagementEventSources") or [])
        ):
            return True
    return any(_advanced_keeps_cognito_writes(s) for s in advanced)


def _advanced_keeps_cognito_writes(selector: dict[str, Any]) -> bool:
    fields = {f.get("Field"): f for f in selector.get("FieldSelectors") or []}
    category = fields.get("eventCategory") or {}
    if "Management" not in (category.get("Equals") or []):
        return False
    read_only = fields.get("readOnly") or {}
    if read_only.get("Equals") == ["true"] or "false" in (read_only.get("NotEquals") or []):
        return False
    source = fields.get("eventSource") or {}
    if source.get("Equals") and COGNITO_SOURCE not in source["Equals"]:
        return False
    if COGNITO_SOURCE in (source.get("NotEquals") or []):
        return False
    if any(COGNITO_SOURCE.startswith(prefix) for prefix in source.get("NotStartsWith") or []):
        return False
    starts = source.get("StartsWith") or []
    return not starts or any(COGNITO_SOURCE.startswith(prefix) for prefix in starts)


def check_trail(cloudtrail: Any, region: str, trails: Sequence[Trail]) -> TrailCheck:
    """The first of `trails` (`read_trails`' answer) that feeds capture in `region`, else what each candidate lacks."""
    problems = []
    for trail in trails:
        name, arn = trail.name, trail.arn
        if not (trail.multi_region or trail.home_region == region):
            continue
        scope = "multi-Region" if trail.multi_region else region
        scope += ", organization" if trail.organization else ""
        home = trail.home_region or region
        reader = cloudtrail if home == region else _regional_cloudtrail(home)  # a trail is read in its home Region
        try:
            logging = bool(reader.get_trail_status(Name=arn).get("IsLogging"))
            writes = records_cognito_writes(reader.get_event_selectors(TrailName=arn))
        except aws_errors() as error:  # an organization trail seen from a member account: assume the owner keeps it on
            if trail.organization:
                return TrailCheck(True, name, f"{scope}; status not readable here ({error_code(error)})")
            problems.append(f"{name}: not readable ({error_code(error)})")
            continue
        if logging and writes:
            return TrailCheck(True, name, f"{scope}, logging, records write management events")
        lacks = [
            text
            for bad, text in (
                (not logging, "logging is off"),
                (not writes, "its selectors drop write management events from cognito-idp"),
            )
            if bad
        ]
        problems.append(f"{name} ({scope}): {' and '.join(lacks)}")
    found = "; ".join(problems) if problems else f"no trail in {region} or multi-Region"
    return TrailCheck(
        False,
        None,
        f"capture gets no events: {found}. Run `bootstrap --create-trail` or fix a trail "
        "(until then the nightly reconcile alone catches changes made outside sign-in)",
    )


def _regional_cloudtrail(region: str) -> Any:
    return client("cloudtrail", region=region)  # the same timeouts and retries as every other ops client


def trail_names(ctx: StageContext, ident: Identity) -> tuple[str, str, str]:
    """The trail `--create-trail` makes, its bucket (bucket names are global: the account makes it unique), ARN."""
    name = f"{ctx.app_name}-{ctx.stage}-capture"
    arn = f"arn:{ident.partition}:cloudtrail:{ident.region}:{ident.account}:trail/{name}"
    return name, f"{ctx.app_name}-{ctx.stage}-trail-{ident.account}", arn


def bucket_policy(bucket: str, trail_arn: str, ident: Identity) -> dict[str, Any]:
    """CloudTrail's bucket policy, limited to this trail by aws:SourceArn
    (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-s3-bucket-policy-for-cloudtrail.html)."""
    principal = {"Service": "cloudtrail.amazonaws.com"}
    bucket_arn = f"arn:{ident.partition}:s3:::{bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AWSCloudTrailAclCheck",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "s3:GetBucketAcl",
                "Resource": bucket_arn,
                "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}},
            },
            {
                "Sid": "AWSCloudTrailWrite",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "s3:PutObject",
                "Resource": f"{bucket_arn}/AWSLogs/{ident.account}/*",
                "Condition": {
                    "StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceArn": trail_arn}
                },
            },
        ],
    }


def ensure_trail(ctx: StageContext, ident: Identity, *, create: bool, check: bool) -> Step:
    """The bootstrap step: OK if a trail feeds capture; else a warning, or with `create` the trail made."""
    if not capture_enabled(ctx.var("CAPTURE")):
        return Step("capture trail", "not needed", StepStatus.OK, "CAPTURE=off: this stage deploys no capture")
    cloudtrail = client("cloudtrail")
    try:
        trails = read_trails(cloudtrail)
        found = check_trail(cloudtrail, ident.region, trails)
    except aws_errors() as error:  # e.g. no cloudtrail:DescribeTrails for this operator: say so, do not fail bootstrap
        return Step("capture trail", "?", StepStatus.WARNING, f"trails not readable ({error_code(error)})")
    name, bucket, arn = trail_names(ctx, ident)
    if found.ok:
        return Step("capture trail", found.trail or "?", StepStatus.OK, found.detail)
    if not create:
        return Step("capture trail", "none", StepStatus.WARNING, found.detail)
    ours = next((t for t in trails if t.name == name and (t.home_region or ident.region) == ident.region), None)
    if check:
        if ours:
            return Step("capture trail", name, StepStatus.WOULD_UPDATE, f"--create-trail would fix it. {found.detail}")
        return Step("capture trail", name, StepStatus.MISSING, f"--create-trail would create it. {found.detail}")
    expiry = f" (expire after {LOG_EXPIRY_DAYS} d)"  # the lifecycle rule _make_bucket gives the bucket it makes
    if ours:
        expiry = "" if ours.bucket and ours.bucket != bucket else expiry
        bucket = ours.bucket or bucket  # it keeps the bucket it has: only its logging and selectors are put right
    else:
        _make_bucket(bucket, arn, ident)
        cloudtrail.create_trail(Name=name, S3BucketName=bucket, IsMultiRegionTrail=False)
    cloudtrail.put_event_selectors(
        TrailName=name, EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}]
    )
    cloudtrail.start_logging(Name=name)
    detail = f"{ident.region}, write management events, logs in s3://{bucket}{expiry}"
    return Step("capture trail", name, StepStatus.FIXED if ours else StepStatus.CREATED, detail)


def _make_bucket(bucket: str, trail_arn: str, ident: Identity) -> None:
    s3 = client("s3")
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if ident.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ident.region}
    try:
        s3.create_bucket(**kwargs)
    except aws_errors() as error:
        if error_code(error) != "BucketAlreadyOwnedByYou":
            raise
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(bucket_policy(bucket, trail_arn, ident)))
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "expire-trail-logs",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "Expiration": {"Days": LOG_EXPIRY_DAYS},
                }
            ]
        },
    )


@dataclass
class CaptureStatus:
    """Is capture live? Only judged where the capture function is deployed (`expected`)."""

    expected: bool
    trail: TrailCheck
    rule: str  # <app>-<stage>-capture-event
    rule_state: str  # ENABLED, DISABLED, "missing", or "unknown: <error>"
    last_event_age_seconds: float | None = None
    last_event_source: str = ""

    @property
    def live(self) -> bool:
        return self.trail.ok and self.rule_state == "ENABLED"

    @property
    def ok(self) -> bool:
        return self.live or not self.expected

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "live": self.live,
            "trail": {"ok": self.trail.ok, "name": self.trail.trail, "detail": self.trail.detail},
            "rule": self.rule,
            "rule_state": self.rule_state,
            "last_event_age_seconds": self.last_event_age_seconds,
            "last_event_source": self.last_event_source,
        }


def capture_status(ctx: StageContext, region: str) -> CaptureStatus:
    rule = f"{ctx.app_name}-{ctx.stage}-capture-event"  # chalice's name: deploy/appgraph.py, `<name>-event`
    try:
        cloudtrail = client("cloudtrail")
        trail = check_trail(cloudtrail, region, read_trails(cloudtrail))
    except aws_errors() as error:
        trail = TrailCheck(False, None, f"trails not readable: {error_code(error)}")
    try:
        state = str(client("events").describe_rule(Name=rule).get("State") or "unknown")
    except aws_errors() as error:
        state = "missing" if error_code(error) == "ResourceNotFoundException" else f"unknown: {error_code(error)}"
    status = CaptureStatus(_capture_deployed(ctx), trail, rule, state)
    newest = _newest_capture()
    if newest is None:
        status.last_event_source = "unknown: no capture_enqueued datapoint in CloudWatch (14 days)"
    else:
        status.last_event_age_seconds = round((datetime.now(UTC) - newest[0]).total_seconds(), 1)
        status.last_event_source = newest[1]
    return status


def _capture_deployed(ctx: StageContext) -> bool:
    deployed = read_deployed(ctx.project_dir, ctx.stage)
    if deployed and "capture" in deployed.functions:
        return True
    try:
        client("lambda").get_function(FunctionName=ctx.function_name("capture"))
        return True
    except aws_errors():  # not found, or not readable: not judged
        return False


def _newest_capture() -> tuple[datetime, str] | None:
    """The newest `capture_enqueued` datapoint: by minute over 3 h, else by hour over 14 days."""
    end = datetime.now(UTC)
    cloudwatch = client("cloudwatch", max_attempts=2)
    for span, period, grain in ((timedelta(hours=3), 60, "minute"), (timedelta(days=14), 3600, "hour")):
        try:
            points = (
                cloudwatch.get_metric_statistics(
                    Namespace=NAMESPACE,
                    MetricName="capture_enqueued",
                    Dimensions=[{"Name": "service", "Value": "capture"}],
                    StartTime=end - span,
                    EndTime=end,
                    Period=period,
                    Statistics=["Sum"],
                ).get("Datapoints")
                or []
            )
        except aws_errors():  # no permission or no CloudWatch here: the age is simply unknown
            return None
        points = [p for p in points if p.get("Sum")]
        if points:
            return max(p["Timestamp"] for p in points), f"cloudwatch, to the {grain}"
    return None
