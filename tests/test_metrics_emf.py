"""Metrics as CloudWatch embedded metric format (EMF): one JSON line per invocation that CloudWatch turns into
metrics without a PutMetricData call. The shape is CloudWatch's
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
"""

from __future__ import annotations

import io
import json
import time

from chalicelib.observability import NAMESPACE, Metrics, register_secret
from userhub_sync.local.moto import patched_environ


def flushed(metrics: Metrics, stream: io.StringIO) -> list[dict]:
    metrics.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_invocation_is_one_emf_document_with_every_count_and_timing() -> None:
    stream = io.StringIO()
    metrics = Metrics("deliver", stream)
    metrics.count("delivered", 3)
    metrics.count("delivered")
    metrics.count("retry")
    metrics.timing("userhub_call_ms", 12.3456)
    metrics.timing("userhub_call_ms", 7)
    before = int(time.time() * 1000)
    with patched_environ({"USERHUB_SYNC_METRICS": None}):
        [document] = flushed(metrics, stream)
    assert before <= document["_aws"]["Timestamp"] <= int(time.time() * 1000)
    assert document["_aws"]["CloudWatchMetrics"] == [
        {
            "Namespace": NAMESPACE,
            "Dimensions": [["service"]],
            "Metrics": [
                {"Name": "delivered", "Unit": "Count"},
                {"Name": "retry", "Unit": "Count"},
                {"Name": "userhub_call_ms", "Unit": "Milliseconds"},
            ],
        }
    ]
    assert (document["service"], document["delivered"], document["retry"]) == ("deliver", 4, 1)
    assert document["userhub_call_ms"] == [12.35, 7]
    assert NAMESPACE == "UserHubSync"


def test_each_flush_carries_only_what_happened_since_the_last_one() -> None:
    stream = io.StringIO()
    metrics = Metrics("deliver", stream)
    metrics.count("retry", 2)
    with patched_environ({"USERHUB_SYNC_METRICS": None}):
        metrics.flush()
        metrics.count("delivered")
        second = flushed(metrics, stream)[-1]
        assert "retry" not in second and second["delivered"] == 1
        metrics.flush()  # nothing new: no line at all
    assert len(stream.getvalue().splitlines()) == 2
    assert dict(metrics.totals) == {"retry": 2, "delivered": 1}  # since process start, for the CLI


def test_metrics_off_prints_nothing_but_still_counts() -> None:
    stream = io.StringIO()
    metrics = Metrics("deliver", stream)
    metrics.count("delivered")
    with patched_environ({"USERHUB_SYNC_METRICS": "off"}):
        metrics.flush()
    assert stream.getvalue() == "" and metrics.totals["delivered"] == 1


def test_a_registered_secret_never_reaches_a_metric_line() -> None:
    secret = "metrics-test-secret-0123456789"
    register_secret(secret)
    stream = io.StringIO()
    metrics = Metrics(f"svc-{secret}", stream)
    metrics.count("n")
    with patched_environ({"USERHUB_SYNC_METRICS": "on"}):
        [document] = flushed(metrics, stream)
    assert document["service"] == "svc-***" and secret not in stream.getvalue()


def test_without_a_stream_the_line_goes_to_stdout(capsys) -> None:
    metrics = Metrics("deliver")
    metrics.count("delivered")
    with patched_environ({"USERHUB_SYNC_METRICS": None}):
        metrics.flush()
    out = capsys.readouterr()
    assert json.loads(out.out)["delivered"] == 1 and out.err == ""


def test_more_than_100_timings_are_split_over_documents_and_counts_written_once() -> None:
    """EMF takes at most 100 values of one metric in one document; a batch of 256 calls has 256 timings."""
    stream = io.StringIO()
    metrics = Metrics("deliver", stream)
    metrics.count("delivered", 256)
    metrics.gauge("concurrency_limit", 16)
    for i in range(256):
        metrics.timing("userhub_call_ms", i)
    with patched_environ({"USERHUB_SYNC_METRICS": None}):
        documents = flushed(metrics, stream)
    assert [len(d["userhub_call_ms"]) for d in documents] == [100, 100, 56]
    assert [v for d in documents for v in d["userhub_call_ms"]] == list(range(256))
    assert [d.get("delivered") for d in documents] == [256, None, None]
    assert [d.get("concurrency_limit") for d in documents] == [16, None, None]
    for document in documents:  # each is a whole EMF document: every metric it declares is in it
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert all(metric["Name"] in document for metric in directive["Metrics"])
