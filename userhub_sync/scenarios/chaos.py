"""Reliability scenarios, measured the way durable delivery systems are judged: nothing lost, duplicates counted.

Two scenarios, each runnable from the command line (figures in docs/RELIABILITY.md) and reusable from tests:

* ``chaos``: sign-ins through the real post_auth handler into moto's SQS (over HTTP), delivered by
  ``userhub-sync worker`` *subprocesses* to the fake UserHub, which answers 5xx, 429 + Retry-After, too slowly and
  by dropping connections, while a killer thread SIGKILLs workers mid-batch. A few users are rejected for good
  (400/404) and must end in the DLQ with their reasons; after healing, a DLQ replay must deliver them.
* ``outage``: UserHub answers 503 to everything for a while. Nothing may reach the DLQ, every message's visibility
  timeouts must follow RetryPolicy (1, 2, 4, 8 ... s with the test settings), and delivery must resume on its own.

Accounting is the demo's, made strict: a sign-in counts as delivered only if UserHub accepted a SIGNIN for that user
at or after the moment it was enqueued (each event makes UserHub re-pull the user, so a later event covers an earlier
sign-in); a permanent failure counts only if its message is in the DLQ; everything else is lost.

    python -m userhub_sync.scenarios.chaos --scenario chaos --signins 2000
    python -m userhub_sync.scenarios.chaos --scenario outage --signins 500 --outage-seconds 20

Not imported by chalicelib: this is test and operations tooling, never shipped to Lambda.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3

from userhub_sync.local.fake_userhub import FakeUserHub, Fault, JournalEntry, RecordedEvent
from userhub_sync.local.faults import BodyFormat, FaultKind
from userhub_sync.local.moto import MotoServer, aws_environ, patched_environ
from userhub_sync.ops.queues import QueueSpec, QueueState, ensure_queues, queue_depths

PROJECT_DIR = Path(__file__).resolve().parents[1]
POOL_ID = "us-east-1_ChaosPool1"
CONNECTION_ID = "conn_chaos"


# ================================================================================================ configuration
@dataclass
class ChaosConfig:
    """The chaos scenario's knobs. Fault shares are of all UserHub calls (exact shares, not per-rule draws)."""

    signins: int = 2000
    workers: int = 3
    seed: int = 7
    repeat_share: float = 0.1  # sign-ins by a user who already signed in (exercises in-batch merging)
    permanent_users: int | None = None  # default: max(3, signins // 200), alternating 400 and 404
    share_5xx: float = 0.20
    share_429: float = 0.05
    share_slow: float = 0.02  # answered after the client's read timeout (UserHub still accepts the event)
    share_drop: float = 0.02  # connection closed without an answer
    read_timeout: float = 1.0  # USERHUB_READ_TIMEOUT of the workers; slow answers take this + 0.6 s
    retry_after: str = "2"
    retry_base: int = 1  # RETRY_BASE_SECONDS (production: 30)
    retry_max: int = 4  # RETRY_MAX_SECONDS (production: 43200)
    visibility_timeout: int = 5  # the queue's: a killed worker's messages come back after this
    max_receive_count: int = 20
    max_kills: int | None = None  # default: max(5, signins // 40)
    kill_interval: tuple[float, float] = (0.5, 2.0)
    kill_tail_seconds: float = 8.0  # keep killing this long after the last sign-in
    batch_size: int = 10
    drain_timeout: float = 600.0

    @property
    def permanent(self) -> int:
        return self.permanent_users if self.permanent_users is not None else max(3, self.signins // 200)

    @property
    def kills(self) -> int:
        return self.max_kills if self.max_kills is not None else max(5, self.signins // 40)


@dataclass
class OutageConfig:
    """The outage scenario: every call 503 for `outage_seconds`, backoff 1 s doubling, no jitter."""

    signins: int = 500
    outage_seconds: float = 20.0
    batch_size: int = 20  # one in-process worker (its SQS calls are observed), receiving up to this many at once
    retry_base: int = 1
    retry_max: int = 3600
    max_receive_count: int = 13  # production's
    visibility_timeout: int = 30
    seed: int = 7
    drain_timeout: float = 300.0


# ================================================================================================ report
@dataclass
class Report:
    """The figures of one run; `rows()` is the table, `summary()` the JSON."""

    scenario: str
    signins: int = 0
    enqueued: int = 0
    enqueue_failed: int = 0
    userhub_calls: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    worker_processes: int = 0
    kills: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_after_timeout: int = 0  # accepted by UserHub but answered after the client gave up
    dead_lettered: int = 0
    dead_letter_kinds: dict[str, int] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    expected_dead: int = 0
    rejected_users: int = 0
    replayed: int = 0
    delivered_after_replay: int = 0
    dlq_after_replay: int = 0
    seconds_to_drain: float = 0.0
    seconds_replay_drain: float = 0.0
    seconds_total: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lost_users: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0

    def rows(self) -> list[tuple[str, str]]:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letter_kinds.items())) or "none"
        rows = [
            ("sign-ins (events)", str(self.signins)),
            ("enqueued by post_auth", f"{self.enqueued} ({self.enqueue_failed} failed)"),
            ("UserHub calls", str(self.userhub_calls)),
            ("faults injected", faults),
        ]
        if self.scenario == "chaos":
            abandoned = self.notes.get("messages_abandoned_by_killed_workers", 0)
            rows.append(
                (
                    "worker processes / SIGKILLed",
                    f"{self.worker_processes} / {self.kills} (holding {abandoned} received messages, redelivered)",
                )
            )
        rows += [
            ("delivered", str(self.delivered)),
            ("lost", str(self.lost)),
            ("duplicates", f"{self.duplicates} ({self.duplicates_after_timeout} after a client timeout)"),
            ("dead-lettered", f"{self.dead_lettered} ({dead}; expected {self.expected_dead})"),
        ]
        if self.scenario == "chaos":
            rows += [
                (
                    "replayed from the DLQ",
                    f"{self.replayed} message(s); {self.delivered_after_replay} of "
                    f"{self.rejected_users} rejected users then delivered; "
                    f"DLQ left {self.dlq_after_replay}",
                ),
                ("time to drain", f"{self.seconds_to_drain:.1f} s (replay: {self.seconds_replay_drain:.1f} s)"),
            ]
        else:
            rows += [
                ("visibility sequences", "; ".join(f"{k} ×{v}" for k, v in self.notes.get("sequences", {}).items())),
                (
                    "outage / recovered after heal",
                    f"{self.notes.get('outage_seconds', 0):.1f} s / {self.notes.get('seconds_to_recover', 0):.1f} s",
                ),
                ("time to drain", f"{self.seconds_to_drain:.1f} s"),
            ]
        rows.append(("wall time", f"{self.seconds_total:.1f} s"))
        return rows

    def summary(self) -> dict[str, Any]:
        data = {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}
        data["lost_users"] = data["lost_users"][:50]
        data["ok"] = self.ok
        return data


# ================================================================================================ helpers
def layered_faults(shares: list[tuple[Fault, float]]) -> list[Fault]:
    """Faults whose *overall* shares are `shares`: the fake tries them in order, so each gets a conditional p."""
    faults: list[Fault] = []
    left = 1.0
    for fault, share in shares:
        if share <= 0:
            continue
        if share > left + 1e-9:
            raise ValueError("fault shares add up to more than 1")
        faults.append(Fault(**{**asdict(fault), "probability": min(share / left, 1.0)}))
        left -= share
    return faults


def usernames(count: int, rng: random.Random) -> list[str]:
    """Distinct usernames of every shape Cognito produces, awkward characters included."""
    shapes: list[Callable[[int], str]] = [
        lambda i: str(uuid.UUID(int=rng.getrandbits(128))),
        lambda i: f"user{i}+tag@example.com",
        lambda i: f"Google_{rng.randrange(10**20)}{i}",
        lambda i: f"José Müller {i}",
        lambda i: f"auth0|{i:06d}",
        lambda i: f"a/b?c#d%{i}",
        lambda i: f"名前:{i}@example.jp",
    ]
    return [shapes[i % len(shapes)](i) for i in range(count)]


def signin_event(username: str) -> dict[str, Any]:
    return {
        "version": "1",
        "triggerSource": "PostAuthentication_Authentication",
        "region": "us-east-1",
        "userPoolId": POOL_ID,
        "userName": username,
        "callerContext": {"awsSdkVersion": "aws-sdk-js-3", "clientId": "chaos-client"},
        "request": {"userAttributes": {"sub": str(uuid.uuid4()), "email_verified": "true"}, "newDeviceUsed": False},
        "response": {},
    }


def new_admin_key() -> str:
    """A fresh random key per run: nothing real, and a unique string to search logs for."""
    return "userhub_admin_" + secrets.token_hex(16)


def scenario_environ(
    endpoint: str, hub_url: str, events: str, dlq: str, key_parameter: str, **overrides: str | None
) -> dict[str, str | None]:
    """The DESIGN.md variables for a local stage whose key is an SSM SecureString in moto."""
    env: dict[str, str | None] = {
        **aws_environ(endpoint),
        "USERHUB_API_URL": hub_url,
        "USERHUB_CONNECTION_ID": CONNECTION_ID,
        "USERHUB_ADMIN_KEY_PARAMETER": key_parameter,
        "USERHUB_ADMIN_KEY": None,
        "USERHUB_ADMIN_KEY_SECRET_ID": None,
        "EVENTS_QUEUE_NAME": events,
        "EVENTS_QUEUE_URL": None,
        "DEAD_LETTER_QUEUE_NAME": dlq,
        "USER_POOL_ID": POOL_ID,
        "USERHUB_SYNC_METRICS": "off",
        # moto shares this machine's cores with workers and the fake: give post_auth's SendMessage room
        # (the budget must cover a cold start's client creation and GetQueueUrl plus one read timeout)
        "SQS_CONNECT_TIMEOUT": "1",
        "SQS_READ_TIMEOUT": "2",
        "POST_AUTH_BUDGET_SECONDS": "4",
    }
    env.update(overrides)
    return env


def reset_caches() -> None:
    """Forget cached settings, deliverer and post_auth's client, as a new Lambda container would."""
    from chalicelib import delivery, post_auth
    from chalicelib.settings import reset_settings

    reset_settings()
    delivery.reset_deliverer()
    post_auth.queue.reset()


@contextmanager
def quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """In-process handlers log every retry; the scenario's table says more."""
    logger = logging.getLogger("userhub_sync")
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


class MotoWatch(logging.Filter):
    """What happened inside moto during a run (it runs in this process), so the figures can be read honestly.

    * `abandoned`: messages a worker received and never gave back (no delete, no visibility change) before they
      were received again. deliver settles every message it receives, so these are the batches of killed workers.
    * `double_receives`: moto 5.2.5's ReceiveMessage is not thread-safe: two concurrent long polls can both take the
      same message (a duplicate that real SQS would rarely produce). Seen as `mark_received` on an invisible message.
    * `errors`: the same race can fail with "Set changed size during iteration", an HTTP 500 that botocore retries;
      counted from the server's error log, which is kept off the console.
    """

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.double_receives = 0
        self.abandoned = 0
        self._held: dict[str, bool] = {}  # message id -> received and not yet settled
        self._handles: dict[str, str] = {}  # receipt handle -> message id
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.errors += 1
            return False
        return True

    def received(self, original: Callable[..., None]) -> Callable[..., None]:
        watch = self

        def mark_received(message: Any, *args: Any, **kwargs: Any) -> None:
            with watch._lock:
                if not message.visible:  # ReceiveMessage checked `visible` just before: another poll took it
                    watch.double_receives += 1
                elif watch._held.get(message.id):
                    watch.abandoned += 1
            original(message, *args, **kwargs)
            with watch._lock:
                watch._held[message.id] = True
                watch._handles[message.receipt_handle] = message.id

        return mark_received

    def settled(self, original: Callable[..., None]) -> Callable[..., None]:
        watch = self

        def settle(backend: Any, queue_name: str, receipt_handle: str, *args: Any, **kwargs: Any) -> None:
            original(backend, queue_name, receipt_handle, *args, **kwargs)
            with watch._lock:
                message_id = watch._handles.get(receipt_handle)
                if message_id:
                    watch._held[message_id] = False

        return settle


def _retention_check(self: Any, queue_name: str, message: Any) -> bool:
    """moto's own test, minus its cost: it rebuilt every queue attribute (a scan of the whole queue) per message
    received, so a receive cost O(depth) per message and an outage, which makes the queue deep, crawled."""
    from moto.core.utils import unix_time

    queue = self.get_queue(queue_name)
    return int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()


@contextmanager
def moto_rig() -> Iterator[MotoWatch]:
    """moto as the scenarios need it (it runs in this process): watched (MotoWatch) and one hot spot fixed."""
    from moto.sqs.models import Message, SQSBackend

    logger = logging.getLogger("werkzeug")
    watch = MotoWatch()
    patches: list[tuple[Any, str, Any]] = [
        (Message, "mark_received", watch.received(Message.mark_received)),
        (SQSBackend, "delete_message", watch.settled(SQSBackend.delete_message)),
        (SQSBackend, "change_message_visibility", watch.settled(SQSBackend.change_message_visibility)),
        (SQSBackend, "is_message_valid_based_on_retention_period", _retention_check),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    logger.addFilter(watch)
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield watch
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        logger.removeFilter(watch)


def backlog(sqs: Any, url: str) -> int:
    return queue_depths(sqs, url).total


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# ================================================================================================ sign-ins
@dataclass
class SignIn:
    user: str
    ts: float  # time.time() just before post_auth ran: the fake stamps events with the same clock
    enqueued: bool


class Producer(threading.Thread):
    """Sign-ins through the real post_auth handler, as Cognito would call it, in its own thread."""

    def __init__(self, users: list[str]) -> None:
        super().__init__(name="signins", daemon=True)
        self.users = users
        self.signins: list[SignIn] = []
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        import app
        from chalicelib import post_auth

        try:
            for user in self.users:
                failed_before = post_auth.metrics.totals["enqueue_failed"]
                ts = time.time()
                event = signin_event(user)
                if app.post_auth(event, None) is not event:
                    raise AssertionError("post_auth did not return the event")
                self.signins.append(SignIn(user, ts, post_auth.metrics.totals["enqueue_failed"] == failed_before))
        except BaseException as error:  # reported by the scenario, never swallowed
            self.error = error
        finally:
            self.finished_at = time.monotonic()


# ================================================================================================ accounting
@dataclass
class Accounting:
    delivered: int = 0
    dead: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    extra_dead: int = 0  # DLQ copies beyond the sign-ins they stand for (a worker died after the DLQ send)


def account(signins: list[SignIn], events: list[RecordedEvent], dead_users: Counter[str]) -> Accounting:
    """Match each enqueued sign-in to an accepted SIGNIN at or after its enqueue time, else to a DLQ message."""
    accepted: dict[str, list[float]] = {}
    for event in events:
        if event.type == "SIGNIN" and event.connection_id == CONNECTION_ID:
            accepted.setdefault(event.external_id, []).append(event.ts)
    dead = Counter(dead_users)
    result = Accounting()
    for signin in signins:
        if not signin.enqueued:
            continue
        if any(t >= signin.ts for t in accepted.get(signin.user, ())):
            result.delivered += 1
        elif dead[signin.user] > 0:
            dead[signin.user] -= 1
            result.dead += 1
        else:
            result.lost.append(signin.user)
    result.extra_dead = sum(dead.values())
    messages = Counter(s.user for s in signins if s.enqueued)
    result.duplicates = sum(max(len(accepted.get(user, ())) - n, 0) for user, n in messages.items())
    return result


def fault_counts(journal: list[JournalEntry]) -> dict[str, int]:
    """What the fake actually did to the calls it received, by kind."""
    counts: Counter[str] = Counter()
    for entry in journal:
        if entry.fault == "status" and entry.status is not None:
            if entry.status >= 500:
                counts["5xx"] += 1
            elif entry.status == 429:
                counts["429"] += 1
            else:
                counts[f"{entry.status} (permanent)"] += 1
        elif entry.fault == "latency":
            counts["slower than timeout"] += 1
        elif entry.fault == "drop":
            counts["dropped"] += 1
        elif entry.status == 401:
            counts["401"] += 1
    return dict(counts)


def accepted_after_timeout(journal: list[JournalEntry]) -> int:
    """Calls UserHub accepted although the client had already timed out: retried, so a duplicate by design."""
    return sum(1 for e in journal if e.fault == "latency" and e.status == 200 and e.verb == "event")


# ================================================================================================ worker processes
@dataclass
class WorkerProcess:
    number: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    drain: bool
    started: float
    killed: bool = False
    stopped: bool = False  # we sent SIGTERM (before its handler is installed, that ends it with -15)

    def ready(self) -> bool:
        """Polling already (the CLI prints this line once its queue URL is resolved)."""
        try:
            return "worker polling" in self.stdout.read_text(errors="replace")
        except OSError:
            return False


class WorkerPool:
    """`userhub-sync worker` subprocesses that we start, SIGKILL (by pid, only ours) and replace."""

    def __init__(
        self,
        env: dict[str, str | None],
        log_dir: Path,
        *,
        batch_size: int = 10,
        wait_seconds: int = 1,
        function_timeout: float = 30.0,
    ) -> None:
        base = {k: v for k, v in os.environ.items()}
        for key, value in env.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        base.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
        self.env = base
        self.log_dir = log_dir
        self.args = [
            "--batch-size",
            str(batch_size),
            "--wait-seconds",
            str(wait_seconds),
            "--function-timeout",
            str(function_timeout),
        ]
        self.all: list[WorkerProcess] = []
        self.lock = threading.Lock()

    def start(self, *, drain: bool = False) -> WorkerProcess:
        with self.lock:
            number = len(self.all)
            stdout, stderr = self.log_dir / f"worker-{number}.out", self.log_dir / f"worker-{number}.err"
            command = [sys.executable, "-m", "userhub_sync.cli", "worker", *self.args, *(["--drain"] if drain else [])]
            with stdout.open("wb") as out, stderr.open("wb") as err:
                process = subprocess.Popen(
                    command, cwd=PROJECT_DIR, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
                )
            worker = WorkerProcess(number, process, stdout, stderr, drain, time.monotonic())
            self.all.append(worker)
            return worker

    def running(self) -> list[WorkerProcess]:
        with self.lock:
            return [w for w in self.all if w.process.poll() is None]

    def kill_one(self, rng: random.Random) -> WorkerProcess | None:
        """SIGKILL one polling worker at random (no goodbye, exactly like a Lambda container dying)."""
        candidates = [w for w in self.running() if not w.drain and w.ready()]
        if not candidates:
            return None
        victim = rng.choice(candidates)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        victim.killed = True
        return victim

    def stop(self, workers: list[WorkerProcess] | None = None, timeout: float = 30.0) -> None:
        """SIGTERM (the worker finishes its batch and exits); SIGKILL only if it does not within `timeout`."""
        targets = [w for w in (workers if workers is not None else self.running()) if w.process.poll() is None]
        for worker in targets:
            worker.stopped = True
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in targets:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                worker.process.send_signal(signal.SIGKILL)
                worker.process.wait()

    def kill_all(self) -> None:
        """Clean-up after an error: SIGKILL whichever of our workers still runs."""
        for worker in self.running():
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait()
            worker.killed = True

    def wait(self, workers: list[WorkerProcess], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                return False
        return True

    def output(self) -> str:
        """Everything every worker printed, stdout and stderr."""
        parts: list[str] = []
        for worker in self.all:
            for path in (worker.stdout, worker.stderr):
                if path.exists():
                    parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def crashed(self) -> list[str]:
        """Workers that exited with an error we did not cause (a kill is ours, SIGTERM exits 0)."""
        return [
            f"worker {w.number} exited {w.process.returncode}: {w.stderr.read_text(errors='replace')[-300:]}"
            for w in self.all
            if not w.killed and w.process.returncode not in (None, 0, *self._ours(w))
        ]

    @staticmethod
    def _ours(worker: WorkerProcess) -> tuple[int, ...]:
        return (-signal.SIGTERM,) if worker.stopped else ()


class Killer(threading.Thread):
    """Every 0.5–2 s, SIGKILL a random polling worker and start a replacement; bounded in kills and time."""

    def __init__(
        self,
        pool: WorkerPool,
        rng: random.Random,
        max_kills: int,
        interval: tuple[float, float],
        keep_going: Callable[[], bool],
    ) -> None:
        super().__init__(name="killer", daemon=True)
        self.pool, self.rng, self.max_kills, self.interval = pool, rng, max_kills, interval
        self.keep_going = keep_going
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while self.kills < self.max_kills and not self.halt.is_set() and self.keep_going():
            if self.halt.wait(self.rng.uniform(*self.interval)):
                break
            if self.pool.kill_one(self.rng) is not None:
                self.kills += 1
                self.pool.start()


# ================================================================================================ scenario: chaos
def _enter_stage(
    stack: ExitStack, env: dict[str, str | None], key: str, max_receive_count: int, visibility_timeout: int
) -> tuple[Any, Any]:
    """Point this process at the scenario's stage (undone with `stack`), store the key, create the queues."""
    stack.callback(reset_caches)
    stack.enter_context(patched_environ(env))
    reset_caches()
    sqs = boto3.client("sqs")
    boto3.client("ssm").put_parameter(
        Name=env["USERHUB_ADMIN_KEY_PARAMETER"], Value=key, Type="SecureString", Overwrite=True
    )
    queues = ensure_queues(
        sqs,
        QueueSpec(
            env["EVENTS_QUEUE_NAME"] or "",
            env["DEAD_LETTER_QUEUE_NAME"] or "",
            max_receive_count=max_receive_count,
            visibility_timeout=visibility_timeout,
        ),
    )
    return sqs, queues


def _rig(stack: ExitStack, endpoint: str | None, seed: int) -> tuple[MotoWatch, str, FakeUserHub, str, str]:
    """moto (watched; started unless `endpoint` reuses one), a fake UserHub with a fresh key, and a run id."""
    moto = stack.enter_context(moto_rig())
    if endpoint is None:
        endpoint = stack.enter_context(MotoServer()).endpoint
    key = new_admin_key()
    hub = stack.enter_context(FakeUserHub(admin_keys=[key], seed=seed))
    return moto, endpoint, hub, key, uuid.uuid4().hex[:8]


def run_chaos(
    config: ChaosConfig,
    *,
    endpoint: str | None = None,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """The chaos scenario end to end; `endpoint` reuses a running moto server (tests), else one is started."""
    say = progress or (lambda _message: None)
    report = Report("chaos", signins=config.signins)
    started = time.monotonic()
    rng = random.Random(config.seed)
    with ExitStack() as stack:
        moto, endpoint, hub, key, run_id = _rig(stack, endpoint, config.seed)
        logs = log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        env = scenario_environ(
            endpoint,
            hub.url,
            f"chaos-{run_id}-events",
            f"chaos-{run_id}-dlq",
            f"/userhub-sync/chaos-{run_id}/admin-key",
            RETRY_BASE_SECONDS=str(config.retry_base),
            RETRY_MAX_SECONDS=str(config.retry_max),
            USERHUB_READ_TIMEOUT=str(config.read_timeout),
            LOG_LEVEL="WARNING",
        )
        sqs, queues = _enter_stage(stack, env, key, config.max_receive_count, config.visibility_timeout)

        # who signs in, who UserHub rejects for good, and how often it misbehaves for everyone else
        repeats = int(config.signins * config.repeat_share)
        unique = usernames(config.signins - repeats, rng)
        users = unique + [rng.choice(unique) for _ in range(repeats)]
        rng.shuffle(users)
        doomed = rng.sample(unique, min(config.permanent, len(unique)))
        rejections = {
            user: (400, "EXTERNAL_ID_REJECTED") if i % 2 == 0 else (404, "USER_NOT_FOUND")
            for i, user in enumerate(doomed)
        }
        for user, (status, reason) in rejections.items():
            hub.add_fault(Fault(status=status, reason=reason, message=f"rejected ({reason})", match_external_id=user))
        slow_ms = (config.read_timeout + 0.6) * 1000
        for fault in layered_faults(
            [
                (Fault(status=503), config.share_5xx * 0.5),
                (Fault(status=500), config.share_5xx * 0.3),
                (Fault(status=502, body_format=BodyFormat.HTML), config.share_5xx * 0.2),
                (Fault(status=429, retry_after=config.retry_after), config.share_429),
                (Fault(kind=FaultKind.LATENCY, latency_ms=slow_ms), config.share_slow),
                (Fault(kind=FaultKind.DROP), config.share_drop),
            ]
        ):
            hub.add_fault(fault)

        # workers first, then sign-ins while the killer works
        pool = WorkerPool(env, logs, batch_size=config.batch_size)
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
        say(
            f"sign-ins sent in {producer.finished_at - t0 if producer.finished_at else 0:.1f} s; "
            f"{killer.kills} workers killed; draining without kills"
        )
        if producer.error is not None:
            report.problems.append(f"producer failed: {type(producer.error).__name__}: {producer.error}")

        # the end: no more kills, workers run until the queue is empty (backoff included)
        pool.stop()
        drainers = [pool.start(drain=True) for _ in range(config.workers)]
        if not pool.wait(drainers, config.drain_timeout):
            report.problems.append(
                f"queue not drained within {config.drain_timeout:.0f} s (backlog {backlog(sqs, queues.events_url)})"
            )
            pool.stop(drainers)
        report.seconds_to_drain = time.monotonic() - t0
        left = backlog(sqs, queues.events_url)
        if left:
            report.problems.append(f"{left} message(s) still in the events queue")
        say(f"drained in {report.seconds_to_drain:.1f} s")

        _chaos_accounting(report, producer.signins, hub, sqs, queues, rejections)
        report.kills = killer.kills
        report.rejected_users = len(rejections)
        _heal_and_replay(report, hub, sqs, queues, pool, config, rejections, say)
        report.worker_processes = len(pool.all)
        report.problems += pool.crashed()
        if key in pool.output():
            report.problems.append("the Admin key appears in a worker's output")
        report.notes["log_dir"] = str(logs) if log_dir else None
        report.notes["messages_abandoned_by_killed_workers"] = moto.abandoned
        report.notes["moto_errors_retried"] = moto.errors
        report.notes["moto_double_receives"] = moto.double_receives
        report.seconds_total = time.monotonic() - started
    return report


def _chaos_accounting(
    report: Report,
    signins: list[SignIn],
    hub: FakeUserHub,
    sqs: Any,
    queues: QueueState,
    rejections: dict[str, tuple[int, str]],
) -> None:
    from userhub_sync.ops.dlq import Filters, list_messages

    journal = [e for e in hub.journal() if e.verb == "event"]
    report.enqueued = sum(1 for s in signins if s.enqueued)
    report.enqueue_failed = len(signins) - report.enqueued
    report.userhub_calls = len(journal)
    report.faults = fault_counts(journal)
    report.duplicates_after_timeout = accepted_after_timeout(journal)
    report.expected_dead = sum(1 for s in signins if s.enqueued and s.user in rejections)

    listing = list_messages(sqs, queues.dlq_url, Filters(), visibility=30)
    report.dead_lettered = len(listing.messages)
    report.dead_letter_kinds = dict(Counter(m.kind for m in listing.messages))
    report.dead_letter_reasons = dict(Counter(f"{m.status} {m.reason}" for m in listing.messages))
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
    result = account(signins, hub.events(), dead_users)
    report.delivered, report.duplicates = result.delivered, result.duplicates
    report.lost, report.lost_users = len(result.lost), result.lost
    report.notes["dead_letter_copies_beyond_signins"] = result.extra_dead
    if result.dead != report.expected_dead:
        report.problems.append(f"{result.dead} sign-ins matched to the DLQ, expected {report.expected_dead}")


def _heal_and_replay(
    report: Report,
    hub: FakeUserHub,
    sqs: Any,
    queues: QueueState,
    pool: WorkerPool,
    config: ChaosConfig,
    rejections: dict[str, tuple[int, str]],
    say: Callable[[str], None],
) -> None:
    """Clear every fault, replay the DLQ with the operators' own code, drain, and check the rejected users arrive."""
    from userhub_sync.ops.dlq import Filters, replay

    hub.clear_faults()
    healed_at = time.time()
    t0 = time.monotonic()
    result = replay(sqs, queues.dlq_url, queues.events_url, Filters(), rate=0)
    report.replayed = result.replayed
    if result.failed or result.not_deleted:
        report.problems.append(f"replay: {result.failed} failed, {result.not_deleted} not deleted")
    drainer = pool.start(drain=True)
    if not pool.wait([drainer], config.drain_timeout):
        report.problems.append("replayed messages not drained in time")
        pool.stop([drainer])
    report.seconds_replay_drain = time.monotonic() - t0
    arrived = {e.external_id for e in hub.events() if e.ts >= healed_at and e.type == "SIGNIN"}
    report.delivered_after_replay = sum(1 for user in rejections if user in arrived)
    depths = queue_depths(sqs, queues.dlq_url)
    report.dlq_after_replay = depths.visible + depths.in_flight
    missing = sorted(set(rejections) - arrived)
    if missing:
        report.problems.append(f"rejected users not delivered after the replay: {missing[:5]}")
    if report.dlq_after_replay:
        report.problems.append(f"{report.dlq_after_replay} message(s) left in the DLQ after the replay")
    say(f"replayed {report.replayed}; {report.delivered_after_replay} of {len(rejections)} rejected users delivered")


# ================================================================================================ scenario: outage
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

    def attach(self, sqs: Any) -> None:
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
    from chalicelib.delivery import Deliverer, RetryPolicy
    from chalicelib.secrets import AdminKeyProvider
    from chalicelib.settings import get_settings
    from userhub_sync.local.event_source import LocalEventSource

    say = progress or (lambda _message: None)
    report = Report("outage", signins=config.signins)
    started = time.monotonic()
    rng = random.Random(config.seed)
    with ExitStack() as stack:
        moto, endpoint, hub, key, run_id = _rig(stack, endpoint, config.seed)
        env = scenario_environ(
            endpoint,
            hub.url,
            f"outage-{run_id}-events",
            f"outage-{run_id}-dlq",
            f"/userhub-sync/outage-{run_id}/admin-key",
            RETRY_BASE_SECONDS=str(config.retry_base),
            RETRY_MAX_SECONDS=str(config.retry_max),
            RETRY_JITTER="0",
        )
        stack.enter_context(quiet_logs())
        sqs, queues = _enter_stage(stack, env, key, config.max_receive_count, config.visibility_timeout)
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
            dlq_seen = max(dlq_seen, backlog(sqs, queues.dlq_url))
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
        drained = wait_until(lambda: backlog(sqs, queues.events_url) == 0, config.drain_timeout)
        finished = time.monotonic()
        stop.set()
        worker.join(timeout=10)
        deliverer.loop.run_until_complete(deliverer.client.aclose())
        deliverer.loop.close()
        if not drained:
            report.problems.append(f"not drained within {config.drain_timeout:.0f} s after the outage")

        journal = [e for e in hub.journal() if e.verb == "event"]
        events = hub.events()
        report.enqueued = sum(1 for s in producer.signins if s.enqueued)
        report.enqueue_failed = len(producer.signins) - report.enqueued
        report.userhub_calls = len(journal)
        report.faults = fault_counts(journal)
        report.duplicates_after_timeout = accepted_after_timeout(journal)
        report.dead_lettered = max(dlq_seen, backlog(sqs, queues.dlq_url))
        if report.dead_lettered:
            report.problems.append(f"{report.dead_lettered} message(s) reached the DLQ during a recoverable outage")
        if delivered_during:
            report.problems.append(f"{delivered_during} event(s) accepted while UserHub was down")
        result = account(producer.signins, events, Counter())
        report.delivered, report.duplicates = result.delivered, result.duplicates
        report.lost, report.lost_users = len(result.lost), result.lost
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
                "moto_errors_retried": moto.errors,
                "moto_double_receives": moto.double_receives,
            }
        )
        if report.notes["seconds_to_recover"] > outstanding + 10:
            report.problems.append(
                f"recovery took {report.notes['seconds_to_recover']} s, more than the largest "
                f"pending backoff ({outstanding} s) + 10 s"
            )
        report.seconds_total = time.monotonic() - started
    return report


def _check_backoff(observer: SqsObserver, policy: Any, config: OutageConfig, report: Report) -> dict[str, Any]:
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


# ================================================================================================ command line
def print_report(report: Report, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"userhub-sync {report.scenario}: {report.signins} sign-ins", show_header=True)
    table.add_column("what")
    table.add_column("figure", overflow="fold")
    for name, value in report.rows():
        style = None
        if name == "lost":
            style = "bold red" if report.lost else "bold green"
        table.add_row(name, value, style=style)
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m userhub_sync.scenarios.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("chaos", "outage"), required=True)
    parser.add_argument("--signins", type=int, default=None, help="default: 2000 (chaos), 500 (outage)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-kills", type=int, default=None, help="chaos: SIGKILLs at most (default signins/40)")
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary to this file")
    parser.add_argument("--log-dir", type=Path, default=None, help="chaos: keep the workers' output here")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(stderr=True)
    say = console.log
    if args.scenario == "chaos":
        chaos = ChaosConfig(seed=args.seed, max_kills=args.max_kills)
        if args.signins:
            chaos.signins = args.signins
        if args.workers:
            chaos.workers = args.workers
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
        report = run_chaos(chaos, log_dir=args.log_dir, progress=say)
    else:
        outage = OutageConfig(seed=args.seed, outage_seconds=args.outage_seconds)
        if args.signins:
            outage.signins = args.signins
        report = run_outage(outage, progress=say)
    print_report(report, console)
    summary = json.dumps(report.summary(), indent=2, default=str, ensure_ascii=False)
    print(summary)
    if args.json_out:
        args.json_out.write_text(summary + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
