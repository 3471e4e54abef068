"""What the tests share: the test stage's constants and builders, SQS helpers, and the operator-command kit (a
throwaway project, the CLI in-process, a fake `chalice deploy` in moto). Fixtures are in conftest.py; import
everything else from here.

The operator tests get their own copy of `.chalice/config.json` (the repo's is never written) and a clean moto. The
CLI runs in-process through typer's CliRunner; every invocation starts without the stage's variables in
os.environ, as a fresh shell would (apply_stage only fills variables the shell has not set).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from typer.testing import CliRunner, Result

from chalicelib.sqs_limits import chunks
from userhub_sync.local.event_source import LocalEventSource, lambda_record
from userhub_sync.local.moto import MOTO_ACCOUNT, MotoServer, patched_environ
from userhub_sync.ops.queues import QueueSpec, QueueState, queue_depths
from userhub_sync.scenarios import rig, traffic

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

    from chalicelib.delivery.flow import FlowControl

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
ADMIN_KEY = "userhub_admin_test_key_0123456789"  # a fixture value, asserted never to appear in output
CONNECTION_ID = "conn_test123"  # the pipeline's stage
CONNECTION = "conn_ops_test"  # what the operator tests bootstrap their stage with
POOL_ID = "us-east-1_TestPool1"
HUB_SEED = 1  # the hub fixture's, for faults with a probability
OTHER_TRIGGER = f"arn:aws:lambda:{REGION}:{MOTO_ACCOUNT}:function:customer-pre-signup"
CUSTOM_MESSAGE = f"arn:aws:lambda:{REGION}:{MOTO_ACCOUNT}:function:customer-custom-message"
CUSTOMER_TRIGGERS = {"PreSignUp": OTHER_TRIGGER, "CustomMessage": CUSTOM_MESSAGE}  # create_pool's, kept by wire


@dataclass
class Stack:
    """The `aws` fixture: moto with the test stage's events queue and DLQ."""

    moto: MotoServer
    sqs: SQSClient
    queues: QueueState
    spec: QueueSpec

    def events_batch(self, expected: int) -> dict[str, Any]:
        """`expected` messages from the events queue, as Lambda hands them to deliver."""
        return receive_event(self.sqs, self.queues.events_url, expected)

    def dead_letters(self) -> list[dict[str, Any]]:
        return receive_all(self.sqs, self.queues.dlq_url)


def stage_environ(userhub_url: str = "http://127.0.0.1:9", **overrides: str | None) -> dict[str, str | None]:
    """The test stage's variables (`test-events`, `test-dlq`, the key itself), as a deployment would set them."""
    return rig.stage_environ(
        "test",
        connection_id=CONNECTION_ID,
        pool_id=POOL_ID,
        userhub_url=userhub_url,
        admin_key=ADMIN_KEY,
        **overrides,
    )


def signin_event(username: str, pool: str = POOL_ID) -> dict[str, Any]:
    """A Cognito PostAuthentication event for the test stage's pool."""
    return traffic.signin_event(username, pool)


def message_body(username: str, type_: str = "SIGNIN", **fields: object) -> str:
    body = {
        "v": 1,
        "id": f"id-{username}-{type_}",
        "type": type_,
        "user_pool_id": POOL_ID,
        "username": username,
        "connection_id": CONNECTION_ID,
        "event_time": "2026-11-26T00:00:00+00:00",
        "source": "post_auth",
    }
    body.update(fields)
    return json.dumps(body)


def send(sqs: Any, url: str, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)


def send_batches(sqs: Any, url: str, bodies: Iterable[str]) -> None:
    """A backlog, queued in SendMessageBatch calls of SQS's largest batch."""
    for batch in chunks(list(bodies)):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(batch)])


def attrs(message: dict[str, Any]) -> dict[str, str]:
    """A received message's string attributes (the dead-letter contract), by name."""
    return {k: v["StringValue"] for k, v in (message.get("MessageAttributes") or {}).items()}


def depth(url: str) -> int:
    """Visible plus in-flight messages."""
    depths = queue_depths(boto3.client("sqs"), url)
    return depths.visible + depths.in_flight


def receive_all(sqs: Any, url: str, *, visibility: int = 30, rounds: int = 5) -> list[dict[str, Any]]:
    """What a (shallow) queue holds now, received (and so hidden for `visibility` seconds), with every attribute."""
    found: list[dict[str, Any]] = []
    for _ in range(rounds):
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        found += got
    return found


def drain(url: str) -> list[dict[str, Any]]:
    """Every message of a (shallow) queue, received and deleted: what it held, and an empty queue after."""
    sqs = boto3.client("sqs")
    found: list[dict[str, Any]] = []
    while got := receive_all(sqs, url, visibility=60, rounds=1):
        found += got
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        )
    return found


def deliver_all(stack: Stack) -> LocalEventSource:
    """Run deliver, as Lambda's mapping would, until the events queue is empty (backoff included)."""
    import app

    source = LocalEventSource(stack.sqs, stack.queues.events_url, app.deliver, wait_seconds=0)
    source.run(drain=True)
    return source


def capture_visibility(sqs: Any) -> list[dict[str, Any]]:
    """Record the ChangeMessageVisibilityBatch entries sent through this client (the calls still go to moto)."""
    seen: list[dict[str, Any]] = []
    sqs.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch", lambda params, **_: seen.extend(params["Entries"])
    )
    return seen


def receive_event(sqs: Any, queue_url: str, expected: int) -> dict[str, Any]:
    """Receive `expected` messages for real and wrap them as Lambda's SQS event (real receipt handles)."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages: list[dict[str, Any]] = []
    for _ in range(20):
        messages += sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if len(messages) >= expected:
            break
    assert len(messages) == expected, f"received {len(messages)} of {expected}"
    return {"Records": [lambda_record(m, arn, REGION) for m in messages]}


def wait_for_sender_threads(timeout: float = 10.0) -> None:
    """Calls given up on end once their server goes away; later tests should start with every thread free."""
    from chalicelib import post_auth

    ends = time.monotonic() + timeout
    while post_auth.queue.busy and time.monotonic() < ends:
        time.sleep(0.02)


def queue_url(name: str) -> str:
    return boto3.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]


# the operator commands


def stage_variable_names() -> set[str]:
    """Every variable apply_stage could put into os.environ, plus the ones the commands read."""
    names = {
        "USERHUB_ADMIN_KEY",
        "USERHUB_ADMIN_KEY_SECRET_ID",
        "EVENTS_QUEUE_URL",
        "MAX_RECEIVE_COUNT",
        "KMS_KEY_ARN",
        "RETRY_BASE_SECONDS",
        "RETRY_MAX_SECONDS",
        "RETRY_JITTER",
        "RETENTION_MARGIN_SECONDS",
        "EVENTS_RETENTION_SECONDS",
        "DELIVER_MAX_CONCURRENCY",
        "DELIVERY_RATE_LIMIT",
        "ALARM_OLDEST_AGE_SECONDS",
        "ALARM_429_PERCENT",
        "ALARM_RECONCILE_HOURS",
        "ALARM_ACTIONS",
    }
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    names.update(config.get("environment_variables") or {})
    for stage in (config.get("stages") or {}).values():
        names.update(stage.get("environment_variables") or {})
    return names


def make_project(root: Path, monkeypatch: Any, moto_server: MotoServer, *, with_app: bool = False) -> Path:
    """A project dir with a copy of the repo's config.json (and what `chalice deploy` needs, if asked), made current."""
    moto_server.reset()
    project = root / "project"
    (project / ".chalice").mkdir(parents=True)
    shutil.copy(REPO / ".chalice" / "config.json", project / ".chalice" / "config.json")
    if with_app:
        shutil.copy(REPO / "app.py", project / "app.py")
        shutil.copy(REPO / "requirements.txt", project / "requirements.txt")
        shutil.copytree(
            REPO / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    monkeypatch.chdir(project)
    for name in stage_variable_names():
        monkeypatch.delenv(name, raising=False)
    return project


def cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run `userhub-sync ARGS` in-process with a shell-like environment (no stage variables set)."""
    from userhub_sync.cli import app

    cleared: dict[str, str | None] = dict.fromkeys(stage_variable_names())
    cleared.update({"COLUMNS": "200", **(env or {})})
    with patched_environ(cleared):
        return CliRunner().invoke(app, list(args), input=input)


@contextmanager
def iam_enforced(policy: list[dict[str, Any]], user: str = "operator") -> Iterator[None]:
    """moto enforcing IAM (its /moto-api/reset-auth switch, over HTTP) for an operator whose policy is `policy`:
    what that policy does not allow is moto's real AccessDenied. Everything made before this runs as before. moto
    answers CloudTrail's JSON protocol with an XML error body, so the code botocore reads is the HTTP status, 403
    (AWS says AccessDeniedException); the status lines show whatever error_code reads, as they always did."""
    iam = boto3.client("iam")
    iam.create_user(UserName=user)
    document = {"Version": "2012-10-17", "Statement": policy}
    iam.put_user_policy(UserName=user, PolicyName="ops", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    switch = f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
    text = {"Content-Type": "text/plain"}  # moto reads the count from the raw body
    previous = httpx.post(switch, content=b"0", headers=text).json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    operator = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    session = boto3.DEFAULT_SESSION  # it keeps the credentials it first read: a new one reads the operator's
    boto3.DEFAULT_SESSION = None
    try:
        with patched_environ({**operator, "AWS_SESSION_TOKEN": None}):
            yield
    finally:
        boto3.DEFAULT_SESSION = session
        httpx.post(switch, content=previous.encode(), headers=text)


def config(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((project / ".chalice" / "config.json").read_text())
    return loaded


def create_pool(*, username_attributes: list[str] | None = None, post_auth: str | None = None) -> str:
    """A pool with settings UpdateUserPool would reset if not given: policies, schema, auto-verify, triggers."""
    lambda_config = dict(CUSTOMER_TRIGGERS)
    if post_auth:
        lambda_config["PostAuthentication"] = post_auth
    kwargs: dict[str, Any] = {
        "PoolName": "customer-pool",
        "Policies": {
            "PasswordPolicy": {
                "MinimumLength": 14,
                "RequireUppercase": True,
                "RequireLowercase": True,
                "RequireNumbers": True,
                "RequireSymbols": False,
            }
        },
        "AutoVerifiedAttributes": ["email"],
        "Schema": [
            {"Name": "tenant", "AttributeDataType": "String", "Mutable": True},
            {"Name": "email", "AttributeDataType": "String", "Required": True, "Mutable": True},
        ],
        "LambdaConfig": lambda_config,
        "MfaConfiguration": "OFF",
        "EmailVerificationSubject": "Your code for the customer app",
        "UserPoolTags": {"team": "identity"},
    }
    if username_attributes:
        kwargs["UsernameAttributes"] = username_attributes
    return boto3.client("cognito-idp").create_user_pool(**kwargs)["UserPool"]["Id"]


def describe_pool(pool_id: str) -> dict[str, Any]:
    return boto3.client("cognito-idp").describe_user_pool(UserPoolId=pool_id)["UserPool"]


def settings_besides_triggers(pool: dict[str, Any]) -> dict[str, Any]:
    """A described pool without its triggers and the time they changed: all that wire must leave as it was."""
    return {k: v for k, v in pool.items() if k not in {"LambdaConfig", "LastModifiedDate"}}


def cognito_statements(function_arn: str) -> list[dict[str, Any]]:
    """The function's resource-policy statements that let Cognito invoke it."""
    policy = json.loads(boto3.client("lambda").get_policy(FunctionName=function_arn)["Policy"])
    return [s for s in policy["Statement"] if s["Principal"] == {"Service": "cognito-idp.amazonaws.com"}]


def bootstrap(pool_id: str | None = None, stage: str = "dev", *extra: str) -> Result:
    args = ["bootstrap", "--stage", stage, "--connection-id", CONNECTION, *extra]
    if pool_id:
        args += ["--user-pool-id", pool_id]
    result = cli(*args, env={"USERHUB_ADMIN_KEY": ADMIN_KEY})
    assert result.exit_code == 0, result.output
    return result


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


def fake_chalice_deploy(project: Path, stage: str = "dev", *, record: bool = True) -> dict[str, str]:
    """What `chalice deploy` leaves behind (functions, the SQS mapping, deployed/<stage>.json), made directly.

    The mapping is created disabled: moto invokes a mapped function inline on every SendMessage (its SQS backend
    calls the mapping's function from send_message), which these tests do not want; `enable_mapping` turns it on
    once the test sends nothing more. tests/test_deploy.py runs the real `chalice deploy`.
    """
    iam = boto3.client("iam")
    lam = boto3.client("lambda")
    sqs = boto3.client("sqs")
    role = iam.create_role(
        RoleName=f"userhub-sync-{stage}-test",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )["Role"]["Arn"]
    arns = {}
    for name in ("post_auth", "post_confirmation", "deliver"):
        arns[name] = lam.create_function(
            FunctionName=f"userhub-sync-{stage}-{name}",
            Runtime="python3.11",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip()},
        )["FunctionArn"]
    queue = config(project)["stages"][stage]["environment_variables"]["EVENTS_QUEUE_NAME"]
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    mapping = lam.create_event_source_mapping(
        EventSourceArn=queue_arn, FunctionName=arns["deliver"], BatchSize=10, Enabled=False
    )
    if record:
        resources: list[dict[str, Any]] = [
            {"name": name, "resource_type": "lambda_function", "lambda_arn": arn} for name, arn in arns.items()
        ]
        resources.append(
            {
                "name": "deliver-sqs-event-source",
                "resource_type": "sqs_event",
                "queue_arn": queue_arn,
                "event_uuid": mapping["UUID"],
                "queue": queue,
                "lambda_arn": arns["deliver"],
            }
        )
        deployed = project / ".chalice" / "deployed"
        deployed.mkdir(parents=True, exist_ok=True)
        (deployed / f"{stage}.json").write_text(
            json.dumps({"resources": resources, "schema_version": "2.0", "backend": "api"})
        )
    return {**arns, "uuid": mapping["UUID"]}


def enable_mapping(uuid: str, enabled: bool = True) -> None:
    """Set the mapping's State (Enabled/Disabled); only after the test's last SendMessage (see fake_chalice_deploy)."""
    boto3.client("lambda").update_event_source_mapping(UUID=uuid, Enabled=enabled)


@contextmanager
def tcp_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A loopback TCP server that gives each connection to `handle(conn, stop)` on its own thread; yields its URL.
    At exit it stops, shuts every connection and the listener (for servers that misbehave on purpose)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            held.append(conn)
            threading.Thread(target=handle, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        server.close()


class FakeTime:
    """A clock and a sleep that only move when slept: for code that paces itself (token buckets, pagers)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def assert_room_for(flow: FlowControl, calls: int) -> None:
    """Exactly `calls` more calls may start now (started here, and left in flight)."""
    for _ in range(calls):
        assert flow.wait_before_start() == 0.0
        flow.started()
    assert flow.wait_before_start() is None


def run_chalice(project: Path, *args: str, env: dict[str, str], timeout: float) -> str:
    """The real `chalice` command of this venv, in `project`; its output, after asserting it succeeded."""
    run = subprocess.run(
        [str(Path(sys.executable).parent / "chalice"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def create_users(cognito: Any, pool_id: str, names: Iterable[str]) -> dict[str, str]:
    """AdminCreateUser for each name; their subs, by name (Cognito assigns them)."""
    subs = {}
    for name in names:
        user = cognito.admin_create_user(UserPoolId=pool_id, Username=name)["User"]
        subs[name] = next(a["Value"] for a in user["Attributes"] if a["Name"] == "sub")
    return subs
