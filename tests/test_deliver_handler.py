"""`app.deliver` as Lambda calls it, seen from outside: the answer, the metrics line an invocation writes (CloudWatch
alarms count dead letters and configuration errors from it), and the warm container's state."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import app
from chalicelib.delivery import NO_CONTEXT_MS, Deliverer, get_deliverer, handle_sqs_event, reset_deliverer
from chalicelib.delivery.calls import RATE_LIMITED_RESENDS
from chalicelib.settings import get_settings, reset_settings
from tests.support import ADMIN_KEY, capture_visibility, message_body, receive_event, send, stage_environ
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import patched_environ


def emf(out: str) -> dict[str, Any]:
    [document] = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return document


def test_one_invocation_writes_one_metrics_line_counting_every_disposition(pipeline, hub, capfd) -> None:
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    hub.add_fault(Fault(status=404, match_external_id="gone"))
    bodies = [message_body("fine"), message_body("flaky"), message_body("gone"), "{poison", message_body("fine")]
    send(pipeline.sqs, pipeline.queues.events_url, *bodies)
    event = receive_event(pipeline.sqs, pipeline.queues.events_url, 5)
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        result = app.deliver(event, LambdaContext("deliver", 60))
    assert len(result["batchItemFailures"]) == 1
    document = emf(capfd.readouterr().out)
    assert document["service"] == "deliver"
    counts = {k: document.get(k) for k in ("delivered", "retry", "dead_letter", "not_started", "duplicates_merged")}
    assert counts == {"delivered": 2, "retry": 1, "dead_letter": 2, "not_started": None, "duplicates_merged": 1}
    assert len(document["userhub_call_ms"]) == 3  # fine (once for both), flaky, gone
    assert "dead_letter_unconfirmed" not in document  # both dead letters reached the DLQ


def test_records_never_started_are_counted_apart_from_retries(pipeline, hub, capfd) -> None:
    send(pipeline.sqs, pipeline.queues.events_url, message_body("a"), message_body("b"))
    event = receive_event(pipeline.sqs, pipeline.queues.events_url, 2)
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        result = app.deliver(event, LambdaContext("deliver", 1.0))  # under the 1.5 s start margin
    assert len(result["batchItemFailures"]) == 2 and hub.journal() == []
    document = emf(capfd.readouterr().out)
    assert (document["not_started"], document.get("retry")) == (2, None)
    assert "duplicates_merged" not in document  # only a batch with duplicates counts them


def test_a_dead_letter_the_dlq_did_not_take_is_counted_and_stays_queued(pipeline, hub, capfd) -> None:
    pipeline.sqs.delete_queue(QueueUrl=pipeline.queues.dlq_url)
    send(pipeline.sqs, pipeline.queues.events_url, "{poison")
    event = receive_event(pipeline.sqs, pipeline.queues.events_url, 1)
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        result = app.deliver(event, LambdaContext("deliver", 60))
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    document = emf(capfd.readouterr().out)
    assert (document["dead_letter"], document["dead_letter_unconfirmed"]) == (1, 1)


def test_the_containers_random_source_draws_every_jitter(pipeline, hub) -> None:
    """Injected for tests and simulations: with it, a batch's retry delays are reproducible."""

    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    hub.add_fault(Fault(status=503))
    with patched_environ({"RETRY_BASE_SECONDS": "100", "RETRY_JITTER": "0.25"}):
        reset_settings()
        deliverer = Deliverer(get_settings(), sqs=pipeline.sqs, rng=Highest())
        seen = capture_visibility(pipeline.sqs)
        send(pipeline.sqs, pipeline.queues.events_url, message_body("a"), message_body("b"))
        deliverer.handle(receive_event(pipeline.sqs, pipeline.queues.events_url, 2), lambda: 60_000)
    reset_settings()
    assert [entry["VisibilityTimeout"] for entry in seen] == [125, 125]


def test_a_configuration_error_is_counted_once_per_distinct_error_and_logged_loudly(
    pipeline, hub, capfd, caplog
) -> None:
    with patched_environ({"USERHUB_ADMIN_KEY": ADMIN_KEY + "\u00e9", "USERHUB_SYNC_METRICS": "on"}):
        reset_settings()
        reset_deliverer()
        send(pipeline.sqs, pipeline.queues.events_url, message_body("a"), message_body("b"))
        event = receive_event(pipeline.sqs, pipeline.queues.events_url, 2)
        with caplog.at_level(logging.ERROR, logger="userhub_sync"):
            result = app.deliver(event, LambdaContext("deliver", 60))
    reset_settings()
    reset_deliverer()
    assert len(result["batchItemFailures"]) == 2
    document = emf(capfd.readouterr().out)
    assert (document["configuration_error"], document["retry"]) == (1, 2)
    [loud] = [r for r in caplog.records if r.getMessage().startswith("configuration error")]
    assert loud.levelno == logging.ERROR


@pytest.mark.parametrize("event", [None, "text", {}, {"Records": "x"}, {"Records": []}])
def test_an_event_without_records_is_an_empty_success(aws, event: Any) -> None:
    assert handle_sqs_event(event, LambdaContext("deliver", 60)) == {"batchItemFailures": []}


def test_a_caller_without_a_lambda_context_gets_lambdas_longest_timeout(pipeline, hub) -> None:
    send(pipeline.sqs, pipeline.queues.events_url, message_body("a"))
    event = receive_event(pipeline.sqs, pipeline.queues.events_url, 1)
    assert handle_sqs_event(event, None) == {"batchItemFailures": []}
    assert NO_CONTEXT_MS == 900_000 and [e.external_id for e in hub.events()] == ["a"]


def test_a_warm_container_keeps_its_deliverer_until_the_settings_change(pipeline, hub) -> None:
    first = get_deliverer()
    assert get_deliverer() is first
    with patched_environ({"DELIVERY_CONCURRENCY": "3"}):
        second = get_deliverer()
        assert second is not first and second.caller.flow.max_concurrency == 3
    reset_deliverer()
    assert get_deliverer() is not first


def test_calls_and_429_answers_are_counted_for_the_429_share_alarm(pipeline, hub, capfd) -> None:
    """The operators' "429 share high" alarm divides userhub_429 by userhub_calls (ops/alarms.py)."""
    hub.add_fault(Fault(status=429, match_external_id="throttled"))
    hub.add_fault(Fault(status=503, match_external_id="flaky"))
    bodies = [message_body("fine"), message_body("throttled"), message_body("flaky"), message_body("other")]
    send(pipeline.sqs, pipeline.queues.events_url, *bodies)
    event = receive_event(pipeline.sqs, pipeline.queues.events_url, 4)
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        app.deliver(event, LambdaContext("deliver", 60))
    document = emf(capfd.readouterr().out)
    journal = hub.journal()
    # "throttled" is answered 429 every time: sent, then sent again after each pause (flow control), then left to SQS
    assert [e.external_id for e in journal].count("throttled") == 1 + RATE_LIMITED_RESENDS
    assert (document["userhub_calls"], document["userhub_429"]) == (len(journal), 1 + RATE_LIMITED_RESENDS)
    assert {"Name": "userhub_429", "Unit": "Count"} in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (512, 5)),  # DELIVERY_CONCURRENCY's default of 16
        ({"DELIVERY_CONCURRENCY": "64"}, (2048, 5)),
        ({"DELIVERY_CONCURRENCY": "400"}, (10_000, 5)),  # Lambda's largest SQS batch
        ({"DELIVER_BATCH_SIZE": "10"}, (10, 0)),  # an operator's choice stands; no window needed up to 10
    ],
)
def test_the_event_source_batch_holds_32_rounds_of_the_concurrency(environ, expected) -> None:
    """Lambda waits for a whole batch before the next: with fewer rounds the idle tail of each batch costs more
    than 5 % of a container's throughput (docs/PERFORMANCE.md)."""
    done = _import_app(environ)
    assert done.returncode == 0, done.stderr
    assert tuple(int(n) for n in done.stdout.split()) == expected


@pytest.mark.parametrize(
    ("environ", "refusal"),
    [
        ({"DELIVER_BATCH_SIZE": "0"}, "DELIVER_BATCH_SIZE must be between 1 and 10000"),
        ({"DELIVER_BATCH_SIZE": "20000"}, "DELIVER_BATCH_SIZE must be between 1 and 10000"),
        ({"DELIVER_BATCH_SIZE": "lots"}, "DELIVER_BATCH_SIZE must be a whole number, not 'lots'"),
        ({"DELIVERY_CONCURRENCY": "sixteen"}, "DELIVERY_CONCURRENCY must be a whole number"),
        ({"DELIVER_BATCHING_WINDOW_SECONDS": "301"}, "DELIVER_BATCHING_WINDOW_SECONDS must be between 0 and 300"),
        ({"DELIVER_BATCHING_WINDOW_SECONDS": "0"}, "must be at least 1 with a batch of 512 (over 10)"),
    ],
)
def test_a_batch_setting_lambda_would_refuse_stops_the_deploy_naming_the_variable(environ, refusal) -> None:
    """Before: a size over 10,000 or a zero window with a large batch reached CreateEventSourceMapping, which refused
    it mid-deploy, and a word was a bare `invalid literal for int()`."""
    done = _import_app(environ)
    assert done.returncode != 0 and refusal in done.stderr, done.stderr


def _import_app(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """app.py reads its decorator arguments once, at import (as `chalice deploy` does), so each case gets a fresh
    interpreter with only these batch variables set."""
    names = ("DELIVER_BATCH_SIZE", "DELIVERY_CONCURRENCY", "DELIVER_BATCHING_WINDOW_SECONDS")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return subprocess.run(
        [sys.executable, "-c", "import app; print(app.DELIVER_BATCH_SIZE, app.DELIVER_BATCHING_WINDOW)"],
        env=env | environ,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )


def test_a_cold_start_freezes_what_it_built_out_of_the_collectors_sight_once() -> None:
    """The warm container's long-lived objects (boto3, pydantic, httpx) are not walked again by every collection a
    batch triggers. In a fresh interpreter, since this test process may have frozen objects already."""
    script = (
        "import gc\n"
        "from chalicelib.delivery import Deliverer\n"
        "from chalicelib.settings import get_settings\n"
        "before = gc.get_freeze_count()\n"
        "Deliverer(get_settings())\n"
        "frozen = gc.get_freeze_count()\n"
        "Deliverer(get_settings())\n"
        "print(before, frozen > 10_000, gc.get_freeze_count() == frozen)\n"
    )
    environ = {**os.environ, **{k: v for k, v in stage_environ().items() if v is not None}}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environ, cwd=Path(app.__file__).parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "True", "True"]
