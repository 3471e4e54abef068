"""The local stage every scenario, test and benchmark runs on: moto, a fake UserHub, and the one environment that
points the real handlers at both.

Invariants: the Admin key is made up per run (a unique string to search output for, never a real key); the stage's
variables are the ones `chalice deploy` would give the functions, with local timings (short backoff, roomy SQS
timeouts for a loaded machine); entering a stage starts a new container, and leaving it starts another, so no
cached client outlives the endpoint it was built for.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from userhub_sync.local.fake_userhub import FakeUserHub
from userhub_sync.local.moto import MotoServer, aws_environ, new_container, patched_environ
from userhub_sync.ops.queues import QueueSpec, QueueState, ensure_queues
from userhub_sync.scenarios.accounting import Report, Scenario
from userhub_sync.scenarios.moto_patches import MotoWatch, watched_moto
from userhub_sync.scenarios.traffic import POOL_ID

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient


CONNECTION_ID = "conn_local"


def stage_environ(
    prefix: str,
    *,
    connection_id: str,
    pool_id: str,
    userhub_url: str = "http://127.0.0.1:9",
    admin_key: str | None = None,
    endpoint: str | None = None,
    **overrides: str | None,
) -> dict[str, str | None]:
    """A local stage named `prefix`: `{prefix}-events`, `{prefix}-dlq`, `{prefix}-snapshots`, and the Admin key
    itself (`admin_key`) or, without it, an SSM SecureString `/userhub-sync/{prefix}/admin-key`. With `endpoint`,
    every boto3 client of the process goes to that moto server. None removes a variable."""
    env: dict[str, str | None] = {
        **(aws_environ(endpoint) if endpoint else {}),
        "USERHUB_API_URL": userhub_url,
        "USERHUB_CONNECTION_ID": connection_id,
        "USERHUB_ADMIN_KEY": admin_key,
        "USERHUB_ADMIN_KEY_PARAMETER": None if admin_key else f"/userhub-sync/{prefix}/admin-key",
        "USERHUB_ADMIN_KEY_SECRET_ID": None,
        "EVENTS_QUEUE_NAME": f"{prefix}-events",
        "EVENTS_QUEUE_URL": None,
        "DEAD_LETTER_QUEUE_NAME": f"{prefix}-dlq",
        "SNAPSHOT_BUCKET": f"{prefix}-snapshots",
        "USER_POOL_ID": pool_id,
        "RETRY_BASE_SECONDS": "1",  # production: 30 s; short so a local run drains in seconds
        "USERHUB_SYNC_METRICS": "off",
        # post_auth's deployed timings (connect 0.5 s, read 1 s, 1.8 s for both attempts) are tested on their own
        # (test_post_auth); here moto shares the machine's cores with workers and the fake, and a slow moto must
        # not turn into failed enqueues (the budget covers a cold client, GetQueueUrl and one read timeout)
        "SQS_CONNECT_TIMEOUT": "2",
        "SQS_READ_TIMEOUT": "2",
        "POST_AUTH_BUDGET_SECONDS": "4",
    }
    env.update(overrides)
    return env


def new_admin_key() -> str:
    """A fresh random key per run: nothing real, and a unique string to search logs for."""
    return "userhub_admin_" + secrets.token_hex(16)


@dataclass
class Rig:
    """A scenario's local stage: moto, the fake UserHub and the variables that point the handlers at both."""

    endpoint: str  # moto's
    hub: FakeUserHub
    key: str  # the only Admin key the fake accepts, stored in moto's SSM
    env: dict[str, str | None]  # the stage's variables, in os.environ until the rig closes
    sqs: SQSClient
    queues: QueueState
    connection_id: str = CONNECTION_ID


def open_rig(
    stack: ExitStack,
    name: str,
    *,
    endpoint: str | None = None,
    seed: int | None = None,
    max_receive_count: int,
    visibility_timeout: int,
    **overrides: str | None,
) -> Rig:
    """moto (started unless `endpoint` reuses one), a fake UserHub with a fresh key, and the stage `{name}-{run id}`
    on both (its key in SSM, its queues created), entered into this process until `stack` closes."""
    if endpoint is None:
        endpoint = stack.enter_context(MotoServer()).endpoint
    key = new_admin_key()
    hub = stack.enter_context(FakeUserHub(admin_keys=[key], seed=seed))
    env = stage_environ(
        f"{name}-{uuid.uuid4().hex[:8]}",  # its own queues, even on a moto another run shares
        connection_id=CONNECTION_ID,
        pool_id=POOL_ID,
        userhub_url=hub.url,
        endpoint=endpoint,
        **overrides,
    )
    sqs, queues = enter_stage(
        stack, env, key, max_receive_count=max_receive_count, visibility_timeout=visibility_timeout
    )
    return Rig(endpoint, hub, key, env, sqs, queues)


def enter_stage(
    stack: ExitStack, env: dict[str, str | None], key: str, *, max_receive_count: int, visibility_timeout: int
) -> tuple[SQSClient, QueueState]:
    """Point this process at the stage (undone with `stack`), store the key in SSM, create the queues."""
    import boto3

    stack.callback(new_container)
    stack.enter_context(patched_environ(env))
    new_container()
    sqs = boto3.client("sqs")
    parameter = env["USERHUB_ADMIN_KEY_PARAMETER"]
    if parameter:
        boto3.client("ssm").put_parameter(Name=parameter, Value=key, Type="SecureString", Overwrite=True)
    spec = QueueSpec(
        env["EVENTS_QUEUE_NAME"] or "",
        env["DEAD_LETTER_QUEUE_NAME"] or "",
        max_receive_count=max_receive_count,
        visibility_timeout=visibility_timeout,
    )
    return sqs, ensure_queues(sqs, spec)


@dataclass
class StageConfig:
    """What every scenario's stage takes: its size and seed, and deliver's schedule on its queue."""

    signins: int = 300
    seed: int = 7
    retry_base: int = 1  # RETRY_BASE_SECONDS (production: 30)
    retry_max: int = 4  # RETRY_MAX_SECONDS (production: 43200)
    max_receive_count: int = 13
    visibility_timeout: int = 30  # the queue's
    batch_size: int = 10  # records per deliver invocation
    drain_timeout: float = 300.0

    def open_rig(self, stack: ExitStack, name: str, endpoint: str | None = None, **overrides: str | None) -> Rig:
        return open_rig(
            stack,
            name,
            endpoint=endpoint,
            seed=self.seed,
            max_receive_count=self.max_receive_count,
            visibility_timeout=self.visibility_timeout,
            RETRY_BASE_SECONDS=str(self.retry_base),
            RETRY_MAX_SECONDS=str(self.retry_max),
            **overrides,
        )


@dataclass
class ScenarioRun:
    """What a scenario's body works with: the stack its parts close with, its stage, the watch on moto, the report
    it fills, its seeded randomness and its progress line."""

    stack: ExitStack
    rig: Rig
    moto: MotoWatch
    report: Report
    rng: random.Random
    say: Callable[[str], None]


@contextmanager
def scenario_run(
    scenario: Scenario,
    config: StageConfig,
    endpoint: str | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: str | None,
) -> Iterator[ScenarioRun]:
    """A scenario's stage (named after it) on a watched moto until the block ends. A body that ends normally leaves
    moto's figures in the report's notes and the wall time in `seconds_total`, both taken before anything closes."""
    started = time.monotonic()
    report = Report(scenario, signins=config.signins)
    with ExitStack() as stack:
        moto = stack.enter_context(watched_moto())
        rig = config.open_rig(stack, scenario, endpoint, **overrides)
        yield ScenarioRun(stack, rig, moto, report, random.Random(config.seed), progress or (lambda _message: None))
        report.notes["moto_errors_retried"] = moto.errors
        report.notes["moto_double_receives"] = moto.double_receives
        report.seconds_total = time.monotonic() - started


@contextmanager
def log_level(level: int) -> Iterator[None]:
    """The handlers log every retry; while a table says it all, only this level and above reach the terminal."""
    logger = logging.getLogger("userhub_sync")
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)
