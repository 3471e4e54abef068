"""`userhub-sync outage`: UserHub answers 503 to everything for a while, then comes back.

Nothing may reach the DLQ, every message's visibility timeouts must follow RetryPolicy (1, 2, 4, 8 ... s with the
local settings, no jitter) in receive order and be honoured by SQS, and delivery must resume on its own within the
largest pending backoff. One in-process worker, as one Lambda container, so that its SQS calls can be observed and
moto's receive race (see moto_patches.MotoWatch) cannot blur the check. Figures of the full run:
docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.faults import Fault
from userhub_sync.ops.queues import queue_depths
from userhub_sync.scenarios.accounting import Report, Scenario, account
from userhub_sync.scenarios.rig import StageConfig, log_level, scenario_run
from userhub_sync.scenarios.traffic import Producer, usernames
from userhub_sync.scenarios.workers import wait_until

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

    from chalicelib.delivery import RetryPolicy


@dataclass
class OutageConfig(StageConfig):
    """The outage scenario: every call 503 for `outage_seconds`, backoff 1 s doubling, no jitter."""

    signins: int = 500
    retry_max: int = 3600
    max_receive_count: int = 13  # production's
    batch_size: int = 20  # one in-process worker (its SQS calls are observed), receiving up to this many at once
    outage_seconds: float = 20.0


@dataclass
class Observation:
    """What one message went through: (receive count, receive time) and the visibility deliver set each time."""

    receives: list[tuple[int, float]] = field(default_factory=list)
    visibilities: list[tuple[int, int]] = field(default_factory=list)  # (receive count, seconds)


class SqsObserver:
    """botocore hooks on a client: receives (message id, count) and the ChangeMessageVisibilityBatch deliver sends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: dict[str, tuple[str, int]] = {}
        self.messages: dict[str, Observation] = {}

    def attach(self, sqs: SQSClient) -> None:
        sqs.meta.events.register("after-call.sqs.ReceiveMessage", self._received)
        sqs.meta.events.register("provide-client-params.sqs.ChangeMessageVisibilityBatch", self._visibility)

    def _received(self, parsed: dict[str, Any], **_: Any) -> None:
        now = time.monotonic()
        with self.lock:
            for message in parsed.get("Messages") or []:
                count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 0))
                self.handles[message["ReceiptHandle"]] = (message["MessageId"], count)
                self.messages.setdefault(message["MessageId"], Observation()).receives.append((count, now))

    def _visibility(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            for entry in params.get("Entries") or []:
                found = self.handles.get(entry["ReceiptHandle"])
                if found:
                    message_id, count = found
                    self.messages[message_id].visibilities.append((count, int(entry["VisibilityTimeout"])))


def run_outage(
    config: OutageConfig, *, endpoint: str | None = None, progress: Callable[[str], None] | None = None
) -> Report:
    """UserHub down (503) for `outage_seconds`, then back: check the backoff, the DLQ and the recovery."""
    import boto3

    from chalicelib.delivery import Deliverer, RetryPolicy
    from chalicelib.secrets import AdminKeyProvider
    from chalicelib.settings import get_settings

    with scenario_run(Scenario.OUTAGE, config, endpoint, progress, RETRY_JITTER="0") as run:
        report, rng, say = run.report, run.rng, run.say
        hub, sqs, queues = run.rig.hub, run.rig.sqs, run.rig.queues
        run.stack.enter_context(log_level(logging.ERROR))
        settings = get_settings()
        policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_jitter)
        hub.add_fault(Fault(status=503, message="down for maintenance"))
        outage_start = time.monotonic()

        # one worker thread, as one Lambda container: concurrent polls would meet moto's receive race (MotoWatch)
        observer = SqsObserver()
        client = boto3.client("sqs")
        observer.attach(client)
        deliverer = Deliverer(settings, sqs=client, keys=AdminKeyProvider(settings, ssm=boto3.client("ssm")))
        source = LocalEventSource(
            client,
            queues.events_url,
            lambda event, context: deliverer.handle(event, context.get_remaining_time_in_millis),
            batch_size=config.batch_size,
            wait_seconds=1,
            function_timeout=30,
        )
        stop = threading.Event()
        worker = threading.Thread(
            target=source.run, kwargs={"should_stop": stop.is_set}, daemon=True, name="outage-worker"
        )
        worker.start()

        producer = Producer(usernames(config.signins, rng))
        producer.start()
        dlq_seen = 0
        while time.monotonic() - outage_start < config.outage_seconds:
            time.sleep(0.25)
            dlq_seen = max(dlq_seen, queue_depths(sqs, queues.dlq_url).total)
        delivered_during = len(hub.events())
        hub.clear_faults()
        healed = time.monotonic()
        healed_wall = time.time()
        producer.join()
        if producer.error is not None:
            report.problems.append(f"producer failed: {type(producer.error).__name__}: {producer.error}")
        if producer.finished_at and producer.finished_at > healed:
            report.problems.append("sign-ins were still being sent when UserHub came back: make the outage longer")
        outstanding = max((v for o in observer.messages.values() for _, v in o.visibilities), default=0)
        say(
            f"outage over after {healed - outage_start:.1f} s (largest backoff then: {outstanding} s); "
            f"{len(observer.messages)} messages seen, {delivered_during} delivered during it"
        )
        drained = wait_until(lambda: queue_depths(sqs, queues.events_url).total == 0, config.drain_timeout)
        finished = time.monotonic()
        stop.set()
        worker.join(timeout=10)
        deliverer.loop.run_until_complete(deliverer.client.aclose())
        deliverer.loop.close()
        if not drained:
            report.problems.append(f"not drained within {config.drain_timeout:.0f} s after the outage")

        events = hub.events()
        report.count_traffic(producer.signins, hub)
        report.dead_letters.dead_lettered = max(dlq_seen, queue_depths(sqs, queues.dlq_url).total)
        if report.dead_letters.dead_lettered:
            report.problems.append(
                f"{report.dead_letters.dead_lettered} message(s) reached the DLQ during a recoverable outage"
            )
        if delivered_during:
            report.problems.append(f"{delivered_during} event(s) accepted while UserHub was down")
        report.take(account(producer.signins, events, Counter(), run.rig.connection_id))
        last_event = max((e.ts for e in events), default=healed_wall)
        report.seconds_to_drain = finished - outage_start
        report.notes.update(_check_backoff(observer, policy, config, report))
        report.notes.update(
            {
                "outage_seconds": round(healed - outage_start, 1),
                "signins_sent_in_s": round((producer.finished_at or healed) - outage_start, 1),
                "seconds_to_recover": round(max(last_event - healed_wall, 0), 1),
                "largest_backoff_at_heal": outstanding,
                "retry_horizon_seconds": policy.minimum_horizon(config.max_receive_count),
            }
        )
        if report.notes["seconds_to_recover"] > outstanding + 10:
            report.problems.append(
                f"recovery took {report.notes['seconds_to_recover']} s, more than the largest "
                f"pending backoff ({outstanding} s) + 10 s"
            )
    return report


def _check_backoff(observer: SqsObserver, policy: RetryPolicy, config: OutageConfig, report: Report) -> dict[str, Any]:
    """Every message's visibility timeouts must be policy.delay(1), delay(2), ... in receive order, honoured by SQS."""
    sequences: Counter[str] = Counter()
    min_slack = float("inf")
    max_receives = 0
    for message_id, seen in observer.messages.items():
        counts = [count for count, _ in seen.receives]
        max_receives = max(max_receives, max(counts, default=0))
        if counts != list(range(1, len(counts) + 1)):
            report.problems.append(f"message {message_id}: receive counts {counts} are not 1, 2, 3 ...")
        expected = [(count, policy.delay(count)) for count, _ in seen.visibilities]
        if seen.visibilities != expected:
            report.problems.append(f"message {message_id}: visibilities {seen.visibilities}, expected {expected}")
        sequences[", ".join(str(v) for _, v in seen.visibilities) or "-"] += 1
        times = dict(seen.receives)
        for count, visibility in seen.visibilities:
            if count + 1 in times:
                min_slack = min(min_slack, times[count + 1] - times[count] - visibility)
    if min_slack < -0.5:
        report.problems.append(f"a message came back {-min_slack:.2f} s before its visibility timeout ended")
    if max_receives >= config.max_receive_count:
        report.problems.append(
            f"a message was received {max_receives} times (maxReceiveCount {config.max_receive_count})"
        )
    ordered = dict(sorted(sequences.items(), key=lambda item: (-item[1], item[0])))
    return {
        "sequences": ordered,
        "max_receive_count_seen": max_receives,
        "min_gap_minus_visibility_s": round(min_slack, 2) if min_slack != float("inf") else None,
    }
