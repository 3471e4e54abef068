"""The Admin key never leaves the places that need it, and a rotation costs one fetch.

A random key is made per test, stored where a deployment keeps it (an SSM SecureString, or a Secrets Manager
secret), and the whole flow runs with the failures that produce the most text: permanent 4xx (DLQ attributes), a
poison body, 5xx and 429 (retry log lines), a 401 after the key is rotated mid-run. Then every line this process and
the worker subprocesses printed, every DLQ message body and attribute, every exception the UserHub client raised and
the operators' CLI output are searched for the key. GetParameter / GetSecretValue calls are counted on moto's
server side, so calls from subprocesses count too.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.ssm.responses import SimpleSystemManagerResponse

import app
from chalicelib import delivery
from tests.support import CONNECTION_ID, deliver_all, receive_all, signin_event
from userhub_sync.local.event_source import LocalEventSource
from userhub_sync.local.fake_userhub import Fault
from userhub_sync.local.moto import patched_environ
from userhub_sync.scenarios.workers import WorkerPool, wait_until

PROJECT_DIR = Path(__file__).resolve().parents[1]
PARAMETER = "/userhub-sync/test/admin-key"
SECRET_ID = "userhub-sync/test/admin-key"


def new_key() -> str:
    return "userhub_admin_" + secrets.token_hex(16)


@pytest.fixture
def key_fetches(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """GetParameter and GetSecretValue calls as moto's server answers them (any process, any client)."""
    counts = {"GetParameter": 0, "GetSecretValue": 0}

    def counting(original: Any, name: str) -> Any:
        def wrapper(self: Any) -> Any:
            counts[name] += 1
            return original(self)

        return wrapper

    monkeypatch.setattr(
        SimpleSystemManagerResponse,
        "get_parameter",
        counting(SimpleSystemManagerResponse.get_parameter, "GetParameter"),
    )
    monkeypatch.setattr(
        SecretsManagerResponse, "get_secret_value", counting(SecretsManagerResponse.get_secret_value, "GetSecretValue")
    )
    return counts


class KeyStore:
    """Where the deployment keeps the key: write it (first time or rotation) the way an operator would."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.created = False

    def environ(self) -> dict[str, str | None]:
        return {
            "USERHUB_ADMIN_KEY": None,
            "USERHUB_ADMIN_KEY_PARAMETER": PARAMETER if self.source == "ssm" else None,
            "USERHUB_ADMIN_KEY_SECRET_ID": SECRET_ID if self.source == "secretsmanager" else None,
        }

    def put(self, key: str) -> None:
        if self.source == "ssm":
            boto3.client("ssm").put_parameter(Name=PARAMETER, Value=key, Type="SecureString", Overwrite=True)
        elif not self.created:
            boto3.client("secretsmanager").create_secret(Name=SECRET_ID, SecretString=key)
        else:
            boto3.client("secretsmanager").put_secret_value(SecretId=SECRET_ID, SecretString=key)
        self.created = True

    @property
    def fetch_call(self) -> str:
        return "GetParameter" if self.source == "ssm" else "GetSecretValue"


def spy_on_exceptions(deliverer: delivery.Deliverer) -> list[str]:
    """The text of every exception the UserHub client raises inside deliver (str, repr, args and fields)."""
    texts: list[str] = []
    original = deliverer.client.report_event

    async def report_event(*args: Any, **kwargs: Any) -> None:
        try:
            await original(*args, **kwargs)
        except Exception as error:
            texts.append(" | ".join([str(error), repr(error), repr(error.args), repr(vars(error))]))
            raise

    deliverer.client.report_event = report_event  # type: ignore[method-assign]
    return texts


def sign_in(users: list[str]) -> None:
    for user in users:
        app.post_auth(signin_event(user), None)


@pytest.fixture
def fast_retries(pipeline) -> Iterator[None]:
    with patched_environ({"RETRY_BASE_SECONDS": "0", "RETRY_JITTER": "0", "USERHUB_SYNC_METRICS": "on"}):
        yield


def assert_nowhere(keys: list[str], places: dict[str, str]) -> None:
    """Neither a key nor either half of its random part (a key cut short by truncation) occurs anywhere."""
    for name, text in places.items():
        for key in keys:
            random_part = key.removeprefix("userhub_admin_")
            for fragment in (key, random_part[:16], random_part[16:]):
                assert fragment not in text, f"the Admin key (or part of it) appears in {name}"


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_rotation_costs_one_fetch_and_the_key_is_never_printed(
    pipeline, hub, fast_retries, capfd, key_fetches: dict[str, int], source: str
) -> None:
    store = KeyStore(source)
    old, new = new_key(), new_key()
    store.put(old)
    hub.set_admin_keys([old])
    hub.add_fault(
        Fault(
            status=400,
            code="INVALID_ARGUMENT",
            reason="USER_REJECTED",
            message="rejected user",
            match_external_id="rejected",
        )
    )
    hub.add_fault(Fault(status=503, count=3))
    hub.add_fault(Fault(status=429, retry_after="0", count=2, body_format="text"))
    with patched_environ(store.environ()):
        deliverer = delivery.get_deliverer()
        exceptions = spy_on_exceptions(deliverer)
        sign_in(["before-1", "before-2", "rejected", "before-3"])
        pipeline.sqs.send_message(QueueUrl=pipeline.queues.events_url, MessageBody="not json")
        deliver_all(pipeline)
        assert deliverer.keys.fetches == 1
        assert key_fetches[store.fetch_call] == 1

        store.put(new)  # the operator rotates the key, and UserHub stops accepting the old one
        hub.set_admin_keys([new])
        rotated_at = time.time()
        after = [f"after-{i}" for i in range(12)]
        sign_in(after)
        deliver_all(pipeline)

        assert deliverer.keys.fetches == 2  # every call of the first batch got a 401: one fetch (single flight)
        assert key_fetches[store.fetch_call] == 2
    unauthorized = [e for e in hub.journal() if e.status == 401]
    assert unauthorized and all(e.ts >= rotated_at for e in unauthorized)
    delivered_after = {e.external_id for e in hub.events() if e.ts >= rotated_at}
    assert delivered_after == set(after)  # delivery went on with the new key
    assert all(e.headers["authorization"] == f"Bearer {new}" for e in hub.events() if e.ts >= rotated_at)

    dead = receive_all(pipeline.sqs, pipeline.queues.dlq_url, visibility=60)
    assert sorted(m["MessageAttributes"]["failure_kind"]["StringValue"] for m in dead) == ["permanent", "poison"]
    captured = capfd.readouterr()
    assert '"message": "admin key loaded"' in captured.err and "key_refreshed" in captured.out  # logs and EMF seen
    assert len(exceptions) >= 3 + 2 + 1 + 1  # 503s, 429s, the 400 and at least one 401
    assert_nowhere(
        [old, new],
        {
            "stderr (JSON logs)": captured.err,
            "stdout (EMF metrics)": captured.out,
            "DLQ messages": json.dumps(dead, ensure_ascii=False),
            "exception texts": "\n".join(exceptions),
            "settings": repr(delivery.get_deliverer().settings) + repr(delivery.get_deliverer().keys.get()),
        },
    )


def echoing_rejection(key: str) -> Fault:
    """A 400 whose message and reason carry the Authorization header it was sent, as a chatty proxy's would."""
    return Fault(
        status=400,
        message=f"bad request with Authorization: Bearer {key}",
        reason=f"KEY_{key}",
        match_external_id="echo-permanent",
    )


def test_a_key_echoed_back_by_userhub_is_redacted(pipeline, hub, fast_retries, capfd) -> None:
    """A proxy or a chatty error page may echo the Authorization header: DLQ attributes and logs still hide it."""
    key = new_key()
    hub.set_admin_keys([key])
    with patched_environ({"USERHUB_ADMIN_KEY": key}):
        hub.add_fault(echoing_rejection(key))
        hub.add_fault(Fault(status=502, body_format="text", message=f"upstream said {key}", count=1))
        sign_in(["echo-permanent", "echo-transient"])
        deliver_all(pipeline)
    dead = receive_all(pipeline.sqs, pipeline.queues.dlq_url, visibility=60)
    [permanent] = dead
    assert permanent["MessageAttributes"]["failure_kind"]["StringValue"] == "permanent"
    assert "***" in permanent["MessageAttributes"]["failure_detail"]["StringValue"]
    captured = capfd.readouterr()
    assert_nowhere(
        [key], {"stderr": captured.err, "stdout": captured.out, "DLQ messages": json.dumps(dead, ensure_ascii=False)}
    )


def test_an_echoed_key_is_in_no_exception_and_never_half_redacted(pipeline, hub, fast_retries, capfd) -> None:
    key = new_key()
    hub.set_admin_keys([key])
    hub.add_fault(echoing_rejection(key))
    hub.add_fault(
        Fault(status=502, body_format="text", message=f"upstream said {key}", match_external_id="echo-transient")
    )
    # the client keeps 200 characters of a message: the cut falls in the middle of the key's random part
    hub.add_fault(Fault(status=503, message="x" * 170 + key, match_external_id="echo-cut-transient"))
    hub.add_fault(Fault(status=400, message="x" * 170 + key, match_external_id="echo-cut-permanent"))
    with patched_environ({"USERHUB_ADMIN_KEY": key}):
        exceptions = spy_on_exceptions(delivery.get_deliverer())
        sign_in(["echo-permanent", "echo-transient", "echo-cut-transient", "echo-cut-permanent"])
        LocalEventSource(pipeline.sqs, pipeline.queues.events_url, app.deliver, wait_seconds=0).poll_once()
    assert len(exceptions) == 4
    captured = capfd.readouterr()
    assert_nowhere(
        [key],
        {
            "exception texts": "\n".join(exceptions),
            "stderr": captured.err,
            "DLQ messages": json.dumps(
                receive_all(pipeline.sqs, pipeline.queues.dlq_url, visibility=60), ensure_ascii=False
            ),
        },
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "userhub_sync.cli", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_worker_and_cli_never_print_the_key_and_rotate_with_one_fetch(
    pipeline, hub, tmp_path: Path, capfd, key_fetches: dict[str, int]
) -> None:
    """The real `userhub-sync worker` process through a rotation; then `dlq list` and a dry-run replay."""
    store = KeyStore("ssm")
    old, new = new_key(), new_key()
    store.put(old)
    hub.set_admin_keys([old])
    hub.add_fault(Fault(status=404, code="NOT_FOUND", reason="USER_NOT_FOUND", match_external_id="gone"))
    hub.add_fault(Fault(status=503, count=2))
    overrides = {**store.environ(), "RETRY_BASE_SECONDS": "0", "RETRY_JITTER": "0", "USERHUB_SYNC_METRICS": "on"}
    with patched_environ(overrides):
        sign_in(["w-1", "w-2", "gone", "w-3"])
        pipeline.sqs.send_message(QueueUrl=pipeline.queues.events_url, MessageBody='{"v": 7}')
        pool = WorkerPool({}, tmp_path, wait_seconds=1)
        worker = pool.start()
        try:
            assert wait_until(lambda: {"w-1", "w-2", "w-3"} <= {e.external_id for e in hub.events()}, 60)
            store.put(new)
            hub.set_admin_keys([new])
            rotated_at = time.time()
            sign_in(["w-4", "w-5"])
            assert wait_until(lambda: {"w-4", "w-5"} <= {e.external_id for e in hub.events() if e.ts >= rotated_at}, 60)
        finally:
            pool.stop()
        assert worker.process.returncode == 0
        listing = run_cli("dlq", "list", "--stage", "dev", "--json", "--show-body")
        table = run_cli("dlq", "list", "--stage", "dev")
        dry_run = run_cli("dlq", "replay", "--stage", "dev", "--dry-run")
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    assert sorted(m["kind"] for m in listed["messages"]) == ["permanent", "poison"]
    assert "would replay 1" in dry_run.stdout
    loaded = [
        json.loads(line)
        for line in worker.stderr.read_text().splitlines()
        if line.startswith("{") and "admin key loaded" in line
    ]
    assert [line["fetch"] for line in loaded] == [1, 2]  # one fetch at start, one after the 401s
    assert key_fetches["GetParameter"] == 2
    assert any(e.status == 401 for e in hub.journal())
    assert {e.connection_id for e in hub.events()} == {CONNECTION_ID}
    captured = capfd.readouterr()
    assert_nowhere(
        [old, new],
        {
            "worker output": pool.output(),
            "dlq list --json": listing.stdout + listing.stderr,
            "dlq list": table.stdout + table.stderr,
            "dlq replay --dry-run": dry_run.stdout + dry_run.stderr,
            "DLQ messages": json.dumps(
                receive_all(pipeline.sqs, pipeline.queues.dlq_url, visibility=60), ensure_ascii=False
            ),
            "this process": captured.out + captured.err,
        },
    )
