"""`userhub-sync chaos`: everything that goes wrong at once, and nothing lost.

Sign-ins go through the real post_auth handler into moto's SQS (over HTTP) and are delivered by `userhub-sync
worker` *subprocesses* to the fake UserHub, which answers 5xx, 429 + Retry-After, too slowly and by dropping
connections, while a killer thread SIGKILLs workers mid-batch. A few users are rejected for good (400/404) and must
end in the DLQ with their reasons; after healing, a DLQ replay with the operators' own code must deliver them.
Figures of the full run: docs/RELIABILITY.md.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from userhub_sync.local.fake_userhub import FakeUserHub
from userhub_sync.local.faults import BodyFormat, Fault, FaultKind
from userhub_sync.ops.dlq import Filters, list_messages, replay
from userhub_sync.ops.queues import QueueState, queue_depths
from userhub_sync.scenarios.accounting import Report, Scenario, account
from userhub_sync.scenarios.rig import Rig, StageConfig, scenario_run
from userhub_sync.scenarios.traffic import Producer, SignIn, usernames
from userhub_sync.scenarios.workers import Killer, WorkerPool, wait_until

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

REJECTIONS = ((400, "EXTERNAL_ID_REJECTED"), (404, "USER_NOT_FOUND"))  # alternating, one per doomed user


@dataclass
class ChaosConfig(StageConfig):
    """The chaos scenario's knobs. Fault shares are of all UserHub calls (exact shares, not per-rule draws)."""

    signins: int = 2000
    visibility_timeout: int = 5  # a killed worker's messages come back after this
    max_receive_count: int = 20
    drain_timeout: float = 600.0
    workers: int = 3
    repeat_share: float = 0.1  # sign-ins by a user who already signed in (exercises in-batch merging)
    permanent_users: int | None = None  # default: max(3, signins // 200), alternating 400 and 404
    share_5xx: float = 0.20
    share_429: float = 0.05
    share_slow: float = 0.02  # answered after the client's read timeout (UserHub still accepts the event)
    share_drop: float = 0.02  # connection closed without an answer
    read_timeout: float = 1.0  # USERHUB_READ_TIMEOUT of the workers; slow answers take this + 0.6 s
    retry_after: str = "2"
    max_kills: int | None = None  # default: max(5, signins // 40)
    kill_interval: tuple[float, float] = (0.5, 2.0)
    kill_tail_seconds: float = 8.0  # keep killing this long after the last sign-in

    @property
    def permanent(self) -> int:
        return self.permanent_users if self.permanent_users is not None else max(3, self.signins // 200)

    @property
    def kills(self) -> int:
        return self.max_kills if self.max_kills is not None else max(5, self.signins // 40)

    def faults(self) -> list[Fault]:
        """Transient misbehaviour for everyone, at this config's overall shares."""
        slow_ms = (self.read_timeout + 0.6) * 1000
        return layered_faults(
            [
                (Fault(status=503), self.share_5xx * 0.5),
                (Fault(status=500), self.share_5xx * 0.3),
                (Fault(status=502, body_format=BodyFormat.HTML), self.share_5xx * 0.2),
                (Fault(status=429, retry_after=self.retry_after), self.share_429),
                (Fault(kind=FaultKind.LATENCY, latency_ms=slow_ms), self.share_slow),
                (Fault(kind=FaultKind.DROP), self.share_drop),
            ]
        )


def layered_faults(shares: list[tuple[Fault, float]]) -> list[Fault]:
    """Faults whose *overall* shares are `shares`: the fake tries them in order, so each gets a conditional p."""
    faults: list[Fault] = []
    left = 1.0
    for fault, share in shares:
        if share <= 0:
            continue
        if share > left + 1e-9:
            raise ValueError("fault shares add up to more than 1")
        faults.append(dataclasses.replace(fault, probability=min(share / left, 1.0)))
        left -= share
    return faults


def run_chaos(
    config: ChaosConfig,
    *,
    endpoint: str | None = None,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """The chaos scenario end to end; `endpoint` reuses a running moto server (tests), else one is started."""
    overrides = {"USERHUB_READ_TIMEOUT": str(config.read_timeout), "LOG_LEVEL": "WARNING"}
    with scenario_run(Scenario.CHAOS, config, endpoint, progress, **overrides) as run:
        stack, rig, report, rng, say = run.stack, run.rig, run.report, run.rng, run.say
        sqs, queues = rig.sqs, rig.queues
        logs = log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))

        # who signs in, who UserHub rejects for good, and how often it misbehaves for everyone else
        repeats = int(config.signins * config.repeat_share)
        unique = usernames(config.signins - repeats, rng)
        users = unique + [rng.choice(unique) for _ in range(repeats)]
        rng.shuffle(users)
        doomed = rng.sample(unique, min(config.permanent, len(unique)))
        rejections = {user: REJECTIONS[i % 2] for i, user in enumerate(doomed)}
        for user, (status, reason) in rejections.items():
            rig.hub.add_fault(
                Fault(status=status, reason=reason, message=f"rejected ({reason})", match_external_id=user)
            )
        for fault in config.faults():
            rig.hub.add_fault(fault)

        # workers first, then sign-ins while the killer works
        pool = WorkerPool(rig.env, logs, batch_size=config.batch_size)
        stack.callback(pool.kill_all)  # if anything below fails, no worker of ours outlives the run
        for _ in range(config.workers):
            pool.start()
        wait_until(lambda: all(w.ready() for w in pool.running()), 30, 0.2)
        say(f"{config.workers} workers polling; sending {config.signins} sign-ins while killing workers")
        producer = Producer(users)
        t0 = time.monotonic()
        producer.start()

        def keep_killing() -> bool:
            done = producer.finished_at
            return done is None or time.monotonic() - done < config.kill_tail_seconds

        killer = Killer(pool, rng, config.kills, config.kill_interval, keep_killing)
        stack.callback(killer.halt.set)
        killer.start()
        producer.join()
        killer.join()
        sent_in = producer.finished_at - t0 if producer.finished_at else 0
        say(f"sign-ins sent in {sent_in:.1f} s; {killer.kills} workers killed; draining without kills")
        if producer.error is not None:
            report.problems.append(f"producer failed: {type(producer.error).__name__}: {producer.error}")

        # the end: no more kills, workers run until the queue is empty (backoff included)
        pool.stop()
        drainers = [pool.start(drain=True) for _ in range(config.workers)]
        if not pool.wait(drainers, config.drain_timeout):
            backlog = queue_depths(sqs, queues.events_url).total
            report.problems.append(f"queue not drained within {config.drain_timeout:.0f} s (backlog {backlog})")
            pool.stop(drainers)
        report.seconds_to_drain = time.monotonic() - t0
        left = queue_depths(sqs, queues.events_url).total
        if left:
            report.problems.append(f"{left} message(s) still in the events queue")
        say(f"drained in {report.seconds_to_drain:.1f} s")

        _account(report, producer.signins, rig, rejections)
        report.traffic.kills = killer.kills
        report.replay.rejected_users = len(rejections)
        _heal_and_replay(report, rig.hub, sqs, queues, pool, config, rejections, say)
        report.traffic.worker_processes = len(pool.all)
        report.problems += pool.crashed()
        if rig.key in pool.output():
            report.problems.append("the Admin key appears in a worker's output")
        report.notes["log_dir"] = str(logs) if log_dir else None
        report.notes["messages_abandoned_by_killed_workers"] = run.moto.abandoned
    return report


def _account(report: Report, signins: list[SignIn], rig: Rig, rejections: dict[str, tuple[int, str]]) -> None:
    """Every sign-in delivered or in the DLQ with its own rejection; only permanent failures in the DLQ."""
    report.count_traffic(signins, rig.hub)
    dead = report.dead_letters
    dead.expected_dead = sum(1 for s in signins if s.enqueued and s.user in rejections)

    listing = list_messages(rig.sqs, rig.queues.dlq_url, Filters(), visibility=30)
    dead.dead_lettered = len(listing.messages)
    dead.dead_letter_kinds = dict(Counter(m.kind for m in listing.messages))
    dead.dead_letter_reasons = dict(Counter(f"{m.status} {m.reason}" for m in listing.messages))
    dead_users: Counter[str] = Counter()
    for message in listing.messages:
        user = message.username or ""
        expected = rejections.get(user)
        if message.kind != "permanent" or expected is None:
            report.problems.append(f"unexpected DLQ message: kind {message.kind}, user {user!r}, {message.reason}")
        elif (message.status, message.reason) != expected:
            report.problems.append(
                f"DLQ message for {user!r} has {message.status} {message.reason}, expected {expected}"
            )
        else:
            dead_users[user] += 1
    result = account(signins, rig.hub.events(), dead_users, rig.connection_id)
    report.take(result)
    report.notes["dead_letter_copies_beyond_signins"] = result.extra_dead
    if result.dead != dead.expected_dead:
        report.problems.append(f"{result.dead} sign-ins matched to the DLQ, expected {dead.expected_dead}")


def _heal_and_replay(
    report: Report,
    hub: FakeUserHub,
    sqs: SQSClient,
    queues: QueueState,
    pool: WorkerPool,
    config: ChaosConfig,
    rejections: dict[str, tuple[int, str]],
    say: Callable[[str], None],
) -> None:
    """Clear every fault, replay the DLQ with the operators' own code, drain, and check the rejected users arrive."""
    hub.clear_faults()
    healed_at = time.time()
    t0 = time.monotonic()
    result = replay(sqs, queues.dlq_url, queues.events_url, Filters(), rate=0)
    figures = report.replay
    figures.replayed = result.replayed
    if result.failed or result.not_deleted:
        report.problems.append(f"replay: {result.failed} failed, {result.not_deleted} not deleted")
    drainer = pool.start(drain=True)
    if not pool.wait([drainer], config.drain_timeout):
        report.problems.append("replayed messages not drained in time")
        pool.stop([drainer])
    figures.seconds_replay_drain = time.monotonic() - t0
    arrived = {e.external_id for e in hub.events() if e.ts >= healed_at and e.type == "SIGNIN"}
    figures.delivered_after_replay = sum(1 for user in rejections if user in arrived)
    depths = queue_depths(sqs, queues.dlq_url)
    figures.dlq_after_replay = depths.visible + depths.in_flight
    missing = sorted(set(rejections) - arrived)
    if missing:
        report.problems.append(f"rejected users not delivered after the replay: {missing[:5]}")
    if figures.dlq_after_replay:
        report.problems.append(f"{figures.dlq_after_replay} message(s) left in the DLQ after the replay")
    say(f"replayed {figures.replayed}; {figures.delivered_after_replay} of {len(rejections)} rejected users delivered")
