"""`userhub-sync bootstrap`: creates a stage's resources, is idempotent, reports and fixes drift, hides the key."""

from __future__ import annotations

import json

import boto3

from chalicelib.delivery import RetryPolicy
from tests.support import ADMIN_KEY, CONNECTION, bootstrap, cli, config, create_pool, queue_url
from userhub_sync.ops.bucket import TLS_SID, ensure_bucket
from userhub_sync.ops.durations import format_span
from userhub_sync.ops.queues import QueueSpec, QueueState, ensure_queues


def _attrs(name: str) -> dict[str, str]:
    return boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url(name), AttributeNames=["All"])["Attributes"]


def test_creates_every_resource_and_writes_the_stage(project):
    pool = create_pool()
    result = bootstrap(pool)

    events, dlq = _attrs("userhub-sync-dev-events"), _attrs("userhub-sync-dev-dlq")
    redrive = json.loads(events["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 13}
    assert RetryPolicy().minimum_horizon(13) >= 24 * 3600
    assert events["VisibilityTimeout"] == str(6 * 60)  # 6 × deliver's lambda_timeout in config.json
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 86400 > int(events["MessageRetentionPeriod"]) == 4 * 86400
    assert events["SqsManagedSseEnabled"] == dlq["SqsManagedSseEnabled"] == "true"

    s3 = boto3.client("s3")
    bucket = "userhub-sync-dev-snapshots"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    s3.put_object(Bucket=bucket, Key="reconcile/probe", Body=b"1")  # usable over moto's plain http
    assert s3.get_object(Bucket=bucket, Key="reconcile/probe")["Body"].read() == b"1"

    ssm = boto3.client("ssm")
    parameter = ssm.get_parameter(Name="/userhub-sync/dev/admin-key", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString" and parameter["Value"] == ADMIN_KEY

    env = config(project)["stages"]["dev"]["environment_variables"]
    assert env["EVENTS_QUEUE_NAME"] == "userhub-sync-dev-events"
    assert env["DEAD_LETTER_QUEUE_NAME"] == "userhub-sync-dev-dlq"
    assert env["EVENTS_QUEUE_URL"] == queue_url("userhub-sync-dev-events")
    assert env["SNAPSHOT_BUCKET"] == bucket
    assert env["USERHUB_ADMIN_KEY_PARAMETER"] == "/userhub-sync/dev/admin-key"
    assert env["USER_POOL_ID"] == pool and env["USERHUB_CONNECTION_ID"] == CONNECTION
    assert "USERHUB_ADMIN_KEY" not in env
    # the repo's other stage and per-function settings are kept
    assert config(project)["stages"]["prod"]["environment_variables"]["EVENTS_QUEUE_NAME"] == "userhub-sync-prod-events"
    assert config(project)["stages"]["dev"]["lambda_functions"]["deliver"]["lambda_timeout"] == 60

    policy = json.loads((project / ".chalice" / "policy-dev-deliver.json").read_text())
    resources = [r for statement in policy["Statement"] for r in statement["Resource"]]
    assert "arn:aws:sqs:us-east-1:123456789012:userhub-sync-dev-events" in resources

    assert "29.1 h" in result.output  # the retry horizon is printed
    assert ADMIN_KEY not in result.output


def test_second_run_reports_ok_and_changes_nothing(project):
    pool = create_pool()
    bootstrap(pool, "dev", "--create-trail")  # a stage set up completely (without a trail, that row is a warning)
    config_before = (project / ".chalice" / "config.json").read_text()
    policy_before = (project / ".chalice" / "policy-dev-reconcile.json").read_text()

    result = cli("bootstrap", "--stage", "dev", "--json", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {step["status"] for step in report["steps"]} == {"ok"}, report["steps"]
    assert not report["needs_attention"]
    assert (project / ".chalice" / "config.json").read_text() == config_before
    assert (project / ".chalice" / "policy-dev-reconcile.json").read_text() == policy_before
    version = boto3.client("ssm").get_parameter(Name="/userhub-sync/dev/admin-key")["Parameter"]["Version"]
    assert version == 1  # the same key is not stored again
    assert ADMIN_KEY not in result.output


def test_drift_is_reported_and_fixed_only_with_fix(project):
    bootstrap(create_pool())
    sqs = boto3.client("sqs")
    sqs.set_queue_attributes(QueueUrl=queue_url("userhub-sync-dev-events"), Attributes={"VisibilityTimeout": "30"})
    boto3.client("s3").delete_public_access_block(Bucket="userhub-sync-dev-snapshots")

    drifted = cli("bootstrap", "--stage", "dev")
    assert drifted.exit_code == 2, drifted.output
    assert "VisibilityTimeout is '30', expected '360'" in drifted.output
    assert "public access block" in drifted.output and "--fix" in drifted.output
    assert _attrs("userhub-sync-dev-events")["VisibilityTimeout"] == "30"  # reported, not changed

    fixed = cli("bootstrap", "--stage", "dev", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert _attrs("userhub-sync-dev-events")["VisibilityTimeout"] == "360"
    assert cli("bootstrap", "--stage", "dev").exit_code == 0


def test_check_mode_creates_nothing(project):
    result = cli("bootstrap", "--stage", "dev", "--check", "--json")
    assert result.exit_code == 2
    statuses = {step["name"]: step["status"] for step in json.loads(result.stdout)["steps"]}
    assert statuses["userhub-sync-dev-events"] == statuses["userhub-sync-dev-dlq"] == "missing"
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
    assert not (project / ".chalice" / "policy-dev-deliver.json").exists()


def test_refuses_a_retry_horizon_under_24_hours(project):
    short = cli("bootstrap", "--stage", "dev", "--max-receive-count", "8", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert short.exit_code == 1
    assert "< 24 h" in short.output and "--allow-short-retry" in short.output
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None

    bootstrap(None, "dev", "--max-receive-count", "8", "--allow-short-retry")  # asserts exit 0
    assert json.loads(_attrs("userhub-sync-dev-events")["RedrivePolicy"])["maxReceiveCount"] == 8
    assert config(project)["stages"]["dev"]["environment_variables"]["MAX_RECEIVE_COUNT"] == "8"
    # the count chosen once is the stage's from now on: no drift on the next run
    assert cli("bootstrap", "--stage", "dev").exit_code == 0


def test_key_from_a_hidden_prompt_is_never_echoed(project):
    result = cli("bootstrap", "--stage", "dev", input=ADMIN_KEY + "\n")
    assert result.exit_code == 0, result.output
    assert "Admin API key" in result.output
    assert ADMIN_KEY not in result.output
    value = boto3.client("ssm").get_parameter(Name="/userhub-sync/dev/admin-key", WithDecryption=True)
    assert value["Parameter"]["Value"] == ADMIN_KEY


def test_existing_key_is_left_alone_unless_a_new_one_is_given(project):
    bootstrap()
    ssm = boto3.client("ssm")
    # no key in the environment: no prompt, no change
    assert cli("bootstrap", "--stage", "dev").exit_code == 0
    assert ssm.get_parameter(Name="/userhub-sync/dev/admin-key")["Parameter"]["Version"] == 1
    rotated = cli("bootstrap", "--stage", "dev", env={"USERHUB_ADMIN_KEY": "uh_admin_rotated_9999"})
    assert rotated.exit_code == 0 and "uh_admin_rotated_9999" not in rotated.output
    stored = ssm.get_parameter(Name="/userhub-sync/dev/admin-key", WithDecryption=True)["Parameter"]
    assert stored["Value"] == "uh_admin_rotated_9999" and stored["Version"] == 2


def test_unknown_stage_is_a_clear_error_and_create_stage_adds_it(project):
    unknown = cli("bootstrap", "--stage", "qa")
    assert unknown.exit_code == 1
    assert "stage 'qa' is not in .chalice/config.json" in unknown.output
    assert "userhub-sync bootstrap --stage qa --create-stage" in unknown.output  # says how to add it

    created = cli("bootstrap", "--stage", "qa", "--create-stage", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert created.exit_code == 0, created.output
    stage = config(project)["stages"]["qa"]
    assert stage["environment_variables"]["EVENTS_QUEUE_NAME"] == "userhub-sync-qa-events"
    assert stage["lambda_functions"]["deliver"]["iam_policy_file"] == "policy-qa-deliver.json"
    assert stage["lambda_functions"]["deliver"]["lambda_timeout"] == 60  # copied from dev
    assert (project / ".chalice" / "policy-qa-post_auth.json").exists()
    assert queue_url("userhub-sync-qa-dlq")


def test_rejects_malformed_ids(project):
    result = cli("bootstrap", "--stage", "dev", "--user-pool-id", "not a pool")
    assert result.exit_code == 64 and "is not a user pool id" in result.stderr  # a usage error: nothing done
    assert result.stderr.count("\n") == 1 and "(see userhub-sync bootstrap --help)" in result.stderr
    connection = cli("bootstrap", "--stage", "dev", "--connection-id", "conn with spaces")
    assert connection.exit_code == 64 and "is not a connection id" in connection.stderr
    missing = cli(
        "bootstrap", "--stage", "dev", "--user-pool-id", "us-east-1_Nope123", env={"USERHUB_ADMIN_KEY": ADMIN_KEY}
    )
    assert missing.exit_code == 1 and "not found" in missing.output
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None  # checked before anything is created


def test_a_connection_id_deliver_would_refuse_is_refused_before_anything_is_created(project):
    """deliver and the settings take at most 64 characters after conn_; a stage configured with more would
    dead-letter every message, so bootstrap refuses it as a malformed value."""
    too_long = "conn_" + "a" * 65
    result = cli("bootstrap", "--stage", "dev", "--connection-id", too_long, env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert result.exit_code == 64 and "is not a connection id" in result.stderr
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
    assert (
        cli(
            "bootstrap", "--stage", "dev", "--connection-id", "conn_" + "a" * 64, env={"USERHUB_ADMIN_KEY": ADMIN_KEY}
        ).exit_code
        == 0
    )


def test_customer_managed_key_everywhere(project):
    kms = boto3.client("kms")
    key_arn = kms.create_key(Description="userhub-sync test")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/userhub-sync-test", TargetKeyId=key_arn)
    result = cli(
        "bootstrap", "--stage", "dev", "--kms-key", "alias/userhub-sync-test", env={"USERHUB_ADMIN_KEY": ADMIN_KEY}
    )
    assert result.exit_code == 0, result.output
    assert _attrs("userhub-sync-dev-events")["KmsMasterKeyId"] == key_arn
    assert _attrs("userhub-sync-dev-dlq")["KmsMasterKeyId"] == key_arn
    rule = boto3.client("s3").get_bucket_encryption(Bucket="userhub-sync-dev-snapshots")[
        "ServerSideEncryptionConfiguration"
    ]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
    (parameter,) = boto3.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": ["/userhub-sync/dev/admin-key"]}]
    )["Parameters"]
    assert parameter["KeyId"] == key_arn
    assert config(project)["stages"]["dev"]["environment_variables"]["KMS_KEY_ARN"] == key_arn
    deliver = json.loads((project / ".chalice" / "policy-dev-deliver.json").read_text())
    (statement,) = [s for s in deliver["Statement"] if s["Sid"] == "CustomerManagedKey"]
    assert statement["Resource"] == [key_arn]
    # remembered: the next run without --kms-key expects the same key, so no drift
    assert cli("bootstrap", "--stage", "dev").exit_code == 0


def test_ensure_queues_keeps_its_contract(moto_server):
    """demo and the delivery tests call ensure_queues directly; its signature and result stay as they were."""
    moto_server.reset()
    sqs = boto3.client("sqs")
    state = ensure_queues(sqs, QueueSpec("compat-events", "compat-dlq", max_receive_count=4, visibility_timeout=30))
    assert isinstance(state, QueueState)
    assert state.created == ["compat-dlq", "compat-events"] and state.drift == []
    assert state.events_url.endswith("/compat-events") and state.dlq_arn.endswith(":compat-dlq")
    again = ensure_queues(sqs, QueueSpec("compat-events", "compat-dlq", max_receive_count=5, visibility_timeout=30))
    assert again.created == [] and again.drift and again.fixed  # fix=True stays the default


def test_bucket_gets_a_tls_only_policy_behind_https(moto_server):
    """moto enforces aws:SecureTransport, so over its plain-http endpoint bootstrap leaves the TLS-only policy out;
    behind an https endpoint (AWS) it is applied and checked."""
    moto_server.reset()
    real = boto3.client("s3")

    class HttpsS3:
        meta = type("Meta", (), {"endpoint_url": "https://s3.us-east-1.amazonaws.com"})()

        def __getattr__(self, name):
            return getattr(real, name)

    created = ensure_bucket(HttpsS3(), "tls-bucket", "us-east-1", "aws", None, fix=False, check=False)
    assert created.status == "created" and "TLS-only" in created.detail
    policy = json.loads(real.get_bucket_policy(Bucket="tls-bucket")["Policy"])
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == TLS_SID]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert ensure_bucket(HttpsS3(), "tls-bucket", "us-east-1", "aws", None, fix=False, check=False).status == "ok"
    real.delete_bucket_policy(Bucket="tls-bucket")
    drift = ensure_bucket(HttpsS3(), "tls-bucket", "us-east-1", "aws", None, fix=False, check=False)
    assert drift.status == "drift" and "TLS-only" in drift.detail


def test_a_short_horizon_is_shown_in_minutes_not_as_zero_hours(project):
    result = bootstrap(None, "dev", "--max-receive-count", "3", "--allow-short-retry")  # asserts exit 0
    assert RetryPolicy().minimum_horizon(3) == 90
    assert "at least 1m 30s with maxReceiveCount 3" in result.output
    assert "retries for only 1m 30s before the DLQ" in result.output  # the warning step
    assert "0.0 h" not in result.output


def test_longest_horizon_bounds_every_schedule_deliver_can_draw():
    """The retention check relies on it: no sequence of delays (any jitter) outlasts longest_horizon."""
    import random

    policy, rng = RetryPolicy(), random.Random(5)
    for count in (2, 5, 13, 16):
        drawn = [sum(policy.delay(n, rng=rng) for n in range(1, count)) for _ in range(300)]
        assert policy.minimum_horizon(count) <= min(drawn) <= max(drawn) <= policy.longest_horizon(count)
    full = RetryPolicy(jitter=0.0)
    assert full.longest_horizon(13) == full.minimum_horizon(13)  # without jitter the two agree
    assert RetryPolicy().longest_horizon(13) == 119_963  # 33.3 h: the figure docs/OPERATIONS.md gives


def test_a_schedule_longer_than_the_retention_is_refused_with_the_three_figures(project):
    # 19 receives: up to 4d 09h 20m of waits + the 1 h margin > the 4-day retention
    refused = cli("bootstrap", "--stage", "dev", "--max-receive-count", "19", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert refused.exit_code == 1
    longest = format_span(RetryPolicy().longest_horizon(19))
    for figure in (longest, "margin 1h 00m", "retention of 4d 00h 00m", "up to 14d", "--max-receive-count"):
        assert figure in refused.stderr, (figure, refused.stderr)
    assert refused.stderr.count("\n") == 1
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None  # nothing created

    # the check is the real one, not a rule of thumb: 17 receives (81.3 h + 1 h) fit in 4 days
    assert RetryPolicy().longest_horizon(17) + 3600 <= 4 * 86400
    fits = cli("bootstrap", "--stage", "dev", "--max-receive-count", "17", env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert fits.exit_code == 0, fits.output
    assert "fits the events queue's retention of 4d 00h 00m" in fits.output


def test_a_longer_retention_is_set_remembered_and_checked(project):
    bootstrap(None, "dev", "--max-receive-count", "19", "--events-retention", "6d")  # asserts exit 0
    assert _attrs("userhub-sync-dev-events")["MessageRetentionPeriod"] == str(6 * 86400)
    assert config(project)["stages"]["dev"]["environment_variables"]["EVENTS_RETENTION_SECONDS"] == str(6 * 86400)
    again = cli("bootstrap", "--stage", "dev", "--check", "--json")  # the stage's values from now on: no drift
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["retention"]["ok"] is True
    bad = cli("bootstrap", "--stage", "dev", "--events-retention", "a fortnight")
    assert bad.exit_code == 64 and "not a duration" in bad.stderr
    too_long = cli("bootstrap", "--stage", "dev", "--events-retention", "15d")
    assert too_long.exit_code == 1 and "between 1 minute and 14 days" in too_long.stderr


def test_check_reports_a_queue_whose_retention_no_longer_holds_the_schedule(project):
    bootstrap(create_pool())
    events = queue_url("userhub-sync-dev-events")
    boto3.client("sqs").set_queue_attributes(QueueUrl=events, Attributes={"MessageRetentionPeriod": "86400"})
    result = cli("bootstrap", "--stage", "dev", "--check")
    assert result.exit_code == 2, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("retention:"))
    assert format_span(RetryPolicy().longest_horizon(13)) in line and "margin 1h 00m" in line
    assert "exceeds the events queue's retention of 1d 00h 00m" in line and "up to 14d" in line
    report = json.loads(cli("bootstrap", "--stage", "dev", "--check", "--json").stdout)
    assert report["retention"]["ok"] is False and report["retention"]["retention_seconds"] == 86400


def test_the_schedule_comes_from_the_stage_through_settings(project):
    """RETRY_* and RETENTION_MARGIN_SECONDS are read and validated by chalicelib's Settings fields."""
    bad = cli("bootstrap", "--stage", "dev", env={"USERHUB_ADMIN_KEY": ADMIN_KEY, "RETRY_JITTER": "2"})
    assert bad.exit_code == 1 and "RETRY_JITTER" in bad.stderr and "less than or equal to 1" in bad.stderr
    # a 24 h margin leaves no room for 17 receives in 4 days (81.3 h + 24 h > 96 h)
    margin = {"USERHUB_ADMIN_KEY": ADMIN_KEY, "RETENTION_MARGIN_SECONDS": "86400"}
    refused = cli("bootstrap", "--stage", "dev", "--max-receive-count", "17", env=margin)
    assert refused.exit_code == 1 and "margin 1d 00h 00m" in refused.stderr
