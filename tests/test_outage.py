"""UserHub down for a while: nothing lost, nothing dead-lettered, backoff as RetryPolicy says, recovery on its own.

CI size here (8 s); the full run is `userhub-sync outage --signins 500 --outage-seconds 20`, and its figures are in
docs/RELIABILITY.md, next to the production schedule that the last tests pin down.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from chalicelib.delivery import RetryPolicy
from chalicelib.settings import Settings
from tests.support import stage_environ
from userhub_sync.local.moto import patched_environ
from userhub_sync.scenarios.accounting import print_report
from userhub_sync.scenarios.outage import OutageConfig, run_outage

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"


def test_outage_ci_size(moto_server) -> None:
    config = OutageConfig(signins=120, outage_seconds=8)
    report = run_outage(config, endpoint=moto_server.endpoint)
    print_report(report, Console(width=120))
    summary = json.dumps(report.summary(), indent=1, default=str)

    assert report.problems == [], summary
    assert (report.outcome.lost, report.dead_letters.dead_lettered, report.traffic.enqueue_failed) == (0, 0, 0), summary
    assert report.outcome.delivered == config.signins
    traffic = report.traffic
    assert traffic.faults == {"5xx": traffic.userhub_calls - config.signins}  # every call failed until healed
    # every message's visibility timeouts: 1, 2, 4, 8 ... (RetryPolicy with base 1 s, no jitter), at least two
    assert "-" not in report.notes["sequences"], "a message never met the outage: make it longer"
    for sequence in report.notes["sequences"]:
        waits = [int(v) for v in sequence.split(", ")]
        assert len(waits) >= 2 and waits == [2**k for k in range(len(waits))], summary
    assert report.notes["max_receive_count_seen"] < config.max_receive_count
    assert report.notes["min_gap_minus_visibility_s"] >= -0.5  # SQS (moto) kept each message hidden that long
    assert report.notes["seconds_to_recover"] <= report.notes["largest_backoff_at_heal"] + 10


def production_policy() -> tuple[RetryPolicy, int]:
    """RetryPolicy and maxReceiveCount as a deployment gets them: Settings' defaults, no overrides."""
    with patched_environ(stage_environ(RETRY_BASE_SECONDS=None, RETRY_MAX_SECONDS=None, RETRY_JITTER=None)):
        settings = Settings()  # type: ignore[call-arg]
    policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_jitter)
    return policy, settings.max_receive_count


def test_production_schedule_retries_for_more_than_a_day() -> None:
    policy, receives = production_policy()
    assert (policy.base, policy.cap, policy.jitter, receives) == (30, 43_200, 0.25, 13)
    no_jitter = RetryPolicy(policy.base, policy.cap, 0)
    waits = [no_jitter.delay(attempt) for attempt in range(1, receives)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 30720, 43200]
    assert policy.minimum_horizon(receives) == sum(waits) == 104_610  # 29.06 h, more than EventBridge's 24 h


def test_reliability_doc_states_the_schedule_the_code_has() -> None:
    """docs/RELIABILITY.md quotes the horizon and every wait; this keeps it from drifting away from the code."""
    policy, receives = production_policy()
    text = DOC.read_text()
    horizon = policy.minimum_horizon(receives)
    assert f"{horizon:,.0f} s" in text and f"{horizon / 3600:.2f} h" in text
    table = re.findall(r"^\| (\d+) \| ([\d,]+) s \|", text, flags=re.MULTILINE)
    no_jitter = RetryPolicy(policy.base, policy.cap, 0)
    assert [(int(n), int(s.replace(",", ""))) for n, s in table] == [
        (n, no_jitter.delay(n)) for n in range(1, receives)
    ]
