"""End to end: several `userhub-sync worker` processes (each one warm deliver container, as Lambda would run them)
drain a backlog against the fake UserHub in its rate-limit mode. The containers share UserHub's limit without
talking to each other; each learns its pace from the 429s it meets."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import bootstrap, cli, create_pool, depth, message_body, send_batches
from userhub_sync.local.fake_userhub import FakeUserHub
from userhub_sync.scenarios.workers import WorkerPool

BACKLOG = 300
RATE = 15.0
WORKERS = 3


def backlog(sqs, url: str, size: int) -> None:
    send_batches(sqs, url, (message_body(f"backlog-{n:04d}") for n in range(size)))


def test_worker_processes_drain_a_backlog_under_the_rate_limit_losing_nothing(
    pipeline, hub: FakeUserHub, tmp_path: Path
):
    queues = pipeline.queues
    backlog(pipeline.sqs, queues.events_url, BACKLOG)
    hub.set_rate_limit(RATE)
    pool = WorkerPool({"RETRY_BASE_SECONDS": "30", "DELIVERY_CONCURRENCY": "16"}, tmp_path)
    workers = [pool.start(drain=True) for _ in range(WORKERS)]
    try:
        assert pool.wait(workers, timeout=240), "the backlog was not drained in 240 s"
    finally:
        pool.stop()
    assert not pool.crashed(), pool.output()
    delivered = {e.external_id for e in hub.events()}
    assert delivered == {f"backlog-{n:04d}" for n in range(BACKLOG)}, "lost"
    assert depth(queues.events_url) == 0 and depth(queues.dlq_url) == 0
    calls = [e.status for e in hub.journal() if e.verb == "event"]
    limited = calls.count(429)
    # Without adaptivity (each message backing off alone, every container at full concurrency) about half of all
    # calls meet a 429 here; with it, the containers settle under the limit. What 429s are left come mostly from the
    # first second, when no container has met the limit yet and each grows in slow start: 10-16 % of the calls over
    # ten runs of this small backlog (0.7 % on the benchmark's 20,000, docs/PERFORMANCE.md section 6).
    assert limited / len(calls) < 0.25, f"{limited} of {len(calls)} calls answered 429"


def test_a_worker_hands_deliver_batches_of_the_deployed_size_beyond_a_hundred(
    pipeline, hub: FakeUserHub, tmp_path: Path
):
    """Without --batch-size the worker takes deliver's BatchSize, as the deployed mapping would, up to Lambda's
    10,000: a bench or a rehearsal on this machine then runs deliver on the batches it gets in Lambda."""
    size = 150
    backlog(pipeline.sqs, pipeline.queues.events_url, size)
    pool = WorkerPool({"DELIVER_BATCH_SIZE": str(size)}, tmp_path, batch_size=None)
    worker = pool.start(drain=True)
    try:
        assert pool.wait([worker], timeout=120), "the backlog was not drained in 120 s"
    finally:
        pool.stop()
    output = pool.output()
    assert f"(batch {size})" in output and f"batch: {size} received, {size} done" in output, output
    assert len({e.external_id for e in hub.events()}) == size


def test_a_worker_for_a_stage_takes_that_stages_batch_size_from_config_json(project) -> None:
    """`--stage` puts config.json's variables in the environment before deliver's batch size is read, as `chalice
    deploy` gives them to app.py; a bad value is one clear error line, not a traceback."""
    bootstrap(create_pool(), "dev")
    path = project / ".chalice" / "config.json"
    data = json.loads(path.read_text())
    variables = data["stages"]["dev"]["environment_variables"]
    variables["DELIVER_BATCH_SIZE"] = "150"
    path.write_text(json.dumps(data))
    unset = {"DELIVER_BATCH_SIZE": None}  # not in the shell: only in config.json (and cleared again afterwards)
    polled = cli("worker", "--stage", "dev", "--drain", "--wait-seconds", "0", env=unset)
    assert polled.exit_code == 0 and "(batch 150)" in polled.output, polled.output

    variables["DELIVER_BATCH_SIZE"] = "20000"
    path.write_text(json.dumps(data))
    refused = cli("worker", "--stage", "dev", "--drain", "--wait-seconds", "0", env=unset)
    assert refused.exit_code == 1 and "DELIVER_BATCH_SIZE must be between 1 and 10000" in refused.output
    assert "Traceback" not in refused.output
