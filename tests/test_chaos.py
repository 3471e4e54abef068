"""Chaos end to end at CI size (the full 2,000 sign-ins: `userhub-sync chaos`).

Real HTTP everywhere: post_auth → moto SQS → `userhub-sync worker` subprocesses → fake UserHub answering 5xx, 429 +
Retry-After, too slowly and by dropping connections, while workers are SIGKILLed mid-batch. Then the fake heals and
the DLQ is replayed with the operators' own code. Figures of the full run: docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from rich.console import Console

from userhub_sync.local.fake_userhub import Fault, RecordedEvent
from userhub_sync.scenarios.accounting import account, print_report
from userhub_sync.scenarios.chaos import ChaosConfig, layered_faults, run_chaos
from userhub_sync.scenarios.traffic import SignIn


def test_chaos_ci_size(moto_server, tmp_path, capsys) -> None:
    config = ChaosConfig(signins=300, workers=3, seed=11)
    report = run_chaos(config, endpoint=moto_server.endpoint, log_dir=tmp_path)
    print_report(report, Console(width=120))
    summary = json.dumps(report.summary(), indent=1, default=str)

    assert report.problems == [], summary
    assert report.outcome.lost == 0, summary
    assert report.traffic.enqueue_failed == 0, summary
    assert report.outcome.delivered + report.dead_letters.expected_dead == report.traffic.enqueued == config.signins
    for kind in ("5xx", "429", "slower than timeout", "dropped"):  # every fault really happened
        assert report.traffic.faults.get(kind, 0) > 0, summary
    assert report.traffic.kills >= 5, summary
    # permanent 4xx, and only those, in the DLQ with their reasons; all delivered after the replay
    assert report.dead_letters.dead_letter_kinds == {"permanent": report.dead_letters.dead_lettered}
    assert set(report.dead_letters.dead_letter_reasons) <= {"400 EXTERNAL_ID_REJECTED", "404 USER_NOT_FOUND"}
    assert report.dead_letters.dead_lettered >= report.dead_letters.expected_dead > 0
    assert report.replay.replayed == report.dead_letters.dead_lettered
    assert (report.replay.delivered_after_replay, report.replay.dlq_after_replay) == (config.permanent, 0)
    assert report.seconds_to_drain < 120, summary


def test_fault_shares_are_overall_shares() -> None:
    """The fake tries faults in order, so each needs a conditional probability to hit its share of all calls."""
    shares = [0.10, 0.06, 0.04, 0.05, 0.02, 0.02]
    faults = layered_faults([(Fault(status=500 + i), share) for i, share in enumerate(shares)])
    untouched = 1.0
    for fault, share in zip(faults, shares, strict=True):
        assert fault.probability * untouched == pytest.approx(share)
        untouched *= 1 - fault.probability
    assert untouched == pytest.approx(1 - sum(shares))
    with pytest.raises(ValueError):
        layered_faults([(Fault(), 0.7), (Fault(), 0.4)])


def event(user: str, ts: float) -> RecordedEvent:
    return RecordedEvent(user, "conn_chaos", "SIGNIN", ts, {})


def test_accounting_is_strict_about_time_and_counts_duplicates() -> None:
    signins = [
        SignIn("a", 10.0, True),
        SignIn("b", 10.0, True),
        SignIn("b", 20.0, True),
        SignIn("c", 10.0, True),
        SignIn("d", 10.0, True),
        SignIn("e", 10.0, False),
    ]
    events = [
        event("a", 11),
        event("a", 12),
        event("a", 13),  # two redeliveries
        event("b", 25),  # one call after both sign-ins of b (merged in one batch): both delivered
        event("c", 9),
    ]  # accepted before c's sign-in was enqueued: it cannot stand for it
    result = account(signins, events, Counter({"d": 2}))
    assert result.delivered == 3
    assert result.dead == 1 and result.extra_dead == 1  # d's second DLQ copy stands for no sign-in
    assert result.lost == ["c"]
    assert result.duplicates == 2
