"""The fleet bound: DELIVER_MAX_CONCURRENCY, the most deliver containers the SQS mapping runs (its
ScalingConfig.MaximumConcurrency), written by `bootstrap`, applied by `wire`, checked by `status`."""

from __future__ import annotations

import json

import boto3

from tests.support import bootstrap, cli, config, create_pool, enable_mapping, fake_chalice_deploy


def _bound(uuid: str) -> int | None:
    mapping = boto3.client("lambda").get_event_source_mapping(UUID=uuid)
    return (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")


def _variables(project) -> dict[str, str]:
    return config(project)["stages"]["dev"]["environment_variables"]


def test_bootstrap_writes_the_default_bound_and_the_arithmetic(project):
    result = bootstrap(create_pool(), "dev", "--json")
    assert _variables(project)["DELIVER_MAX_CONCURRENCY"] == "5"
    [step] = [s for s in json.loads(result.stdout)["steps"] if s["resource"] == "fleet bound"]
    assert step["status"] == "ok"
    # config.json's dev stage: DELIVERY_CONCURRENCY 16, no DELIVERY_RATE_LIMIT
    assert "5 deliver containers × DELIVERY_CONCURRENCY 16 = 80 UserHub calls in flight" in step["detail"]
    assert "calls/s not capped" in step["detail"]


def test_bootstrap_option_is_kept_by_later_runs_and_the_rate_limit_gives_a_ceiling(project):
    pool = create_pool()
    bootstrap(pool, "dev", "--max-concurrency", "7")
    assert _variables(project)["DELIVER_MAX_CONCURRENCY"] == "7"
    again = cli("bootstrap", "--stage", "dev", "--json", env={"DELIVERY_RATE_LIMIT": "2.5"})
    assert again.exit_code == 0, again.output
    assert _variables(project)["DELIVER_MAX_CONCURRENCY"] == "7"  # not reset to the default
    [step] = [s for s in json.loads(again.stdout)["steps"] if s["resource"] == "fleet bound"]
    assert "× DELIVERY_RATE_LIMIT 2.5 = 17.5 calls/s at most" in step["detail"]


def test_bootstrap_refuses_a_bound_outside_lambdas_limits_before_creating_anything(project):
    refused = cli("bootstrap", "--stage", "dev", env={"DELIVER_MAX_CONCURRENCY": "1", "USERHUB_ADMIN_KEY": "k" * 20})
    assert refused.exit_code != 0
    assert "DELIVER_MAX_CONCURRENCY must be between 2 and 1000" in refused.output
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
    assert cli("bootstrap", "--stage", "dev", "--max-concurrency", "1001").exit_code == 64  # the option's own bounds


def test_bootstrap_refuses_a_batch_lambda_would_refuse_before_creating_anything(project):
    """app.py reads DELIVER_BATCH_SIZE at deploy; bootstrap reads it the same way, so the stage fails here, not in
    the middle of `chalice deploy`."""
    refused = cli("bootstrap", "--stage", "dev", env={"DELIVER_BATCH_SIZE": "20000", "USERHUB_ADMIN_KEY": "k" * 20})
    assert refused.exit_code == 1
    assert "DELIVER_BATCH_SIZE must be between 1 and 10000" in refused.output
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
    result = bootstrap(create_pool(), "dev", "--json")
    [step] = [s for s in json.loads(result.stdout)["steps"] if s["resource"] == "fleet bound"]
    assert "batches of up to 512 records, 5 s batching window" in step["detail"]

    # config.json's value is the one `chalice deploy` gives app.py, whatever a stale shell says
    data = config(project)
    data["stages"]["dev"]["environment_variables"]["DELIVER_BATCH_SIZE"] = "20000"
    (project / ".chalice" / "config.json").write_text(json.dumps(data))
    stale_shell = cli("bootstrap", "--stage", "dev", env={"DELIVER_BATCH_SIZE": "100"})
    assert stale_shell.exit_code == 1 and "DELIVER_BATCH_SIZE must be between 1 and 10000" in stale_shell.output


def test_wire_applies_the_bound_reports_what_it_was_and_status_flags_drift(project):
    bootstrap(create_pool(), "dev", "--max-concurrency", "7")
    deployed = fake_chalice_deploy(project)  # a mapping made without ScalingConfig (unbounded)
    assert _bound(deployed["uuid"]) is None

    dry = cli("wire", "--stage", "dev", "--dry-run", "--json")
    [step] = [s for s in json.loads(dry.stdout)["steps"] if s["what"].startswith("fleet bound")]
    assert (step["status"], step["detail"]) == ("would set", "7 containers (was unbounded)")
    assert _bound(deployed["uuid"]) is None

    updates: list[dict] = []  # Lambda refuses a second update of a mapping while the first is being applied
    boto3._get_default_session().events.register(
        "provide-client-params.lambda.UpdateEventSourceMapping", lambda params, **_: updates.append(params)
    )
    wired = cli("wire", "--stage", "dev", "--json")
    assert wired.exit_code == 0, wired.output
    assert len(updates) == 1 and {"FunctionResponseTypes", "ScalingConfig"} <= set(updates[0])
    [step] = [s for s in json.loads(wired.stdout)["steps"] if s["what"].startswith("fleet bound")]
    assert step["status"] == "set" and _bound(deployed["uuid"]) == 7
    assert boto3.client("lambda").get_event_source_mapping(UUID=deployed["uuid"])["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]
    again = cli("wire", "--stage", "dev", "--json")
    assert {s["status"] for s in json.loads(again.stdout)["steps"]} == {"ok"}

    enable_mapping(deployed["uuid"])
    healthy = cli("status", "--stage", "dev", "--json", "--check")
    assert healthy.exit_code == 0, healthy.output
    mapping = json.loads(healthy.stdout)["wiring"]["event_source_mapping"]
    assert (mapping["maximum_concurrency"], mapping["expected_maximum_concurrency"]) == (7, 7)

    # someone raises the bound by hand: status says so, --check fails, wire puts it back and says from what
    boto3.client("lambda").update_event_source_mapping(UUID=deployed["uuid"], ScalingConfig={"MaximumConcurrency": 50})
    drifted = cli("status", "--stage", "dev", "--check")
    assert drifted.exit_code == 2, drifted.output
    assert "the fleet bound drifted: MaximumConcurrency is 50, DELIVER_MAX_CONCURRENCY says 7" in " ".join(
        drifted.stdout.split()
    )
    fixed = cli("wire", "--stage", "dev", "--json")
    [step] = [s for s in json.loads(fixed.stdout)["steps"] if s["what"].startswith("fleet bound")]
    assert (step["status"], step["detail"]) == ("set", "7 containers (was 50)")
    assert cli("status", "--stage", "dev", "--check").exit_code == 0
