"""`userhub-sync worker` processes, as many Lambda containers: started, SIGKILLed mid-batch and replaced.

Invariants: only processes this pool started are ever signalled, each by its own pid; a worker we SIGKILLed or
SIGTERMed is not reported as a crash, any other non-zero exit is; every worker's stdout and stderr are kept, so a
run can check that no key ever reached them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


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
        batch_size: int | None = 10,  # None: the worker's own default, deliver's BatchSize
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
            *(["--batch-size", str(batch_size)] if batch_size else []),
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
