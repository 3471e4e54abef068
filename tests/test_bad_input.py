"""Bad input at every entrance, fuzzed through the real transport (moto over HTTP, the fake UserHub over HTTP).

What the unit tests already cover is not repeated here (post_auth's fuzzed event shapes: test_post_auth.py;
parse_message on arbitrary text: test_config_and_messages.py; quote_path against the SDK: test_userhub_client.py).
This file adds what only the whole pipeline can show:

* Cognito events with huge (100 KB+) and non-ASCII attributes and usernames: post_auth returns the event unchanged
  and, for every username Cognito allows, enqueues exactly that username;
* malformed SQS bodies of every kind mixed into real batches: each is poison in the DLQ with its reason, and the
  valid messages of the same batch are delivered in that same invocation;
* usernames full of `/ ? # % @ : |`, spaces and non-ASCII: delivered through post_auth → SQS → deliver → UserHub,
  on the SDK's exact path, arriving as exactly that externalId, never reaching another route.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from userhub_sdk._internal import util as sdk_util

import app
from chalicelib import post_auth
from chalicelib.messages import PoisonMessage, parse_message
from tests.support import CONNECTION_ID, POOL_ID, attrs, depth, drain, message_body, signin_event
from userhub_sync.local.event_source import LocalEventSource


def fuzz(examples: int) -> settings:
    """Hypothesis settings for tests that use fixtures and talk to moto: no deadline, large data allowed."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


TALLY: Counter[str] = Counter()  # what this module pushed through the pipeline; printed for docs/RELIABILITY.md


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    print("\nbad-input tally:", json.dumps(dict(sorted(TALLY.items()))))  # shown with `pytest -s`


def sqs_valid(char: str) -> bool:
    """SQS takes only #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF in a body; moto checks none."""
    code = ord(char)
    return code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000


SQS_CHARS = st.characters(exclude_categories=["Cs"]).filter(sqs_valid)
# Cognito's username pattern is [\p{L}\p{M}\p{S}\p{N}\p{P}]+ (1-128); we add spaces, which federated names carry
COGNITO_CHARS = st.characters(categories=["L", "M", "S", "N", "P"]) | st.sampled_from(list("/?#%@:| "))
cognito_usernames = st.text(COGNITO_CHARS, min_size=1, max_size=128)


huge_values = st.tuples(
    st.sampled_from(["x", "é", "名", "🙂", "\u200b", "'\"\\", "\n"]), st.integers(50_000, 120_000)
).map(lambda pair: pair[0] * (pair[1] // len(pair[0])))
attribute_values = st.one_of(huge_values, st.text(SQS_CHARS, max_size=200), st.text(max_size=50))


@fuzz(40)
@given(
    username=cognito_usernames,
    attributes=st.dictionaries(
        st.sampled_from(["email", "name", "custom:bio", "custom:ünïcode", "locale", "address", "picture"]),
        attribute_values,
        max_size=5,
    ),
    client_metadata=st.dictionaries(st.text(max_size=20), attribute_values, max_size=2),
)
def test_huge_and_non_ascii_attributes_enqueue_exactly_the_username(
    pipeline, username: str, attributes: dict[str, str], client_metadata: dict[str, str]
) -> None:
    event = signin_event(username)
    event["request"]["userAttributes"] = {**event["request"]["userAttributes"], **attributes}
    event["request"]["clientMetadata"] = client_metadata
    snapshot = json.dumps(event, sort_keys=True)
    failed_before = post_auth.metrics.totals["enqueue_failed"]

    assert app.post_auth(event, None) is event
    assert json.dumps(event, sort_keys=True) == snapshot  # Cognito gets back exactly what it sent
    assert post_auth.metrics.totals["enqueue_failed"] == failed_before
    [queued] = drain(pipeline.queues.events_url)
    message = parse_message(queued["Body"])  # what deliver will read
    assert message.username == username
    assert (message.user_pool_id, message.connection_id) == (POOL_ID, CONNECTION_ID)
    assert len(queued["Body"].encode()) < 2048  # attributes never ride along: the body stays small
    TALLY["cognito events, huge or non-ASCII, enqueued exactly"] += 1
    TALLY["attribute bytes in those events"] += sum(len(str(v).encode()) for v in attributes.values())


@pytest.mark.parametrize(
    "username",
    [
        "x" * 300_000,  # enqueued (SQS takes 1 MiB), then poison at deliver: longer than any Cognito username
        "é" * 600_000,  # 1.2 MB of UTF-8: over SQS's 1 MiB message limit, SendMessage fails
        "\ud800lone surrogate",  # cannot be encoded at all
        "\x00\x01\x1b[31m",  # control characters: JSON escapes them
    ],
)
def test_usernames_beyond_any_limit_never_raise(pipeline, username: str) -> None:
    event = signin_event(username)
    event["request"]["userAttributes"]["custom:blob"] = "ü" * 100_000
    assert app.post_auth(event, None) is event
    assert event["userName"] == username
    drain(pipeline.queues.events_url)
    TALLY["cognito events beyond every limit: returned unchanged"] += 1


@fuzz(60)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | huge_values | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=8,
    ),
    st.sampled_from(["userName", "userPoolId", "request", "callerContext", "triggerSource", "response"]),
)
def test_any_field_of_any_type_and_size_never_raises(pipeline, value: Any, key: str) -> None:
    event = signin_event("fuzz") | {key: value}
    snapshot = json.dumps(event, sort_keys=True, default=repr)
    assert app.post_auth(event, None) is event
    assert json.dumps(event, sort_keys=True, default=repr) == snapshot
    drain(pipeline.queues.events_url)
    TALLY["cognito events with a field of any type: returned unchanged"] += 1


def _valid(**changes: Any) -> dict[str, Any]:
    body = json.loads(message_body("poison-template"))
    body.update(changes)
    return body


def _without(field: str) -> dict[str, Any]:
    body = _valid()
    del body[field]
    return body


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


non_strings = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_field = st.one_of(
    st.builds(
        lambda v: _valid(type=v),
        st.text(max_size=20).filter(lambda s: s not in ("SIGNIN", "SIGNUP", "CHANGED")) | non_strings,
    ),
    st.builds(lambda v: _valid(username=v), st.just("") | st.just("u" * 2049) | non_strings),
    st.builds(lambda v: _valid(user_pool_id=v), st.just("") | st.just("p" * 56) | non_strings),
    st.builds(
        lambda v: _valid(connection_id=v),
        st.text(max_size=30).filter(lambda s: not re.fullmatch(r"conn_[A-Za-z0-9_-]+", s))
        | st.integers()
        | st.lists(st.text(max_size=3), max_size=2),
    ),
    st.builds(
        lambda v: _valid(event_time=v),
        st.sampled_from(["yesterday", "", "2026-01-01T00:00:00", "2026-13-45T00:00:00Z", "next tuesday"])
        | st.none()
        | st.lists(st.integers(), max_size=2),
    ),
    st.builds(
        lambda v: _valid(source=v),
        st.text(max_size=20).filter(lambda s: s not in ("post_auth", "post_confirmation", "reconcile", "replay"))
        | non_strings,
    ),
    st.builds(lambda v: _valid(id=v), st.just("") | st.just("i" * 129) | st.integers() | st.lists(st.none())),
    st.builds(_without, st.sampled_from(["type", "user_pool_id", "username", "source"])),
)
wrong_version = st.builds(
    lambda v: _valid(v=v),
    st.none()
    | st.booleans()
    | st.text(max_size=5)
    | st.integers().filter(lambda n: n != 1)
    | st.floats(allow_nan=False).filter(lambda f: f != 1)
    | st.lists(st.just(1), max_size=2),
)
malformed_bodies = st.one_of(
    st.text(SQS_CHARS, min_size=1, max_size=300).filter(_not_json),  # not JSON at all (incl. non-ASCII garbage)
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        st.text(max_size=50),
        st.lists(st.integers(), max_size=5),
    ).map(json.dumps),  # JSON, but not an object
    wrong_version.map(json.dumps),
    bad_field.map(json.dumps),
    bad_field.map(lambda body: json.dumps(body, ensure_ascii=False)),
    st.sampled_from(
        [
            " ",
            "{",
            "}",
            "null",
            '{"v": 1',
            "<xml/>",
            "\ufeff{}",
            "NaN",
            "[" * 300 + "]" * 300,
            json.dumps({"v": 1, "padding": "x" * 100_000}),  # 100 KB, no fields at all
            json.dumps(_valid(username="ü" * 50_000), ensure_ascii=False),  # 100 KB of non-ASCII username
            json.dumps({"v": 1, **{f"k{i}": i for i in range(5000)}}),
        ]
    ),
)


@fuzz(30)
@given(
    bad=st.lists(malformed_bodies, min_size=1, max_size=6),
    good=st.lists(cognito_usernames, min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**16),
)
def test_malformed_bodies_are_poison_and_the_rest_of_the_batch_is_delivered(
    pipeline, hub, bad: list[str], good: list[str], seed: int
) -> None:
    for body in bad:  # the generator must only make poison; a body that parses would be a bug in this test
        with pytest.raises(PoisonMessage):
            parse_message(body)
    tag = uuid.uuid4().hex[:6]
    users = [f"{tag}-{u}" for u in good]
    bodies = [message_body(u) for u in users] + bad
    random.Random(seed).shuffle(bodies)
    sqs, queues = pipeline.sqs, pipeline.queues
    sqs.send_message_batch(
        QueueUrl=queues.events_url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
    )

    source = LocalEventSource(sqs, queues.events_url, app.deliver, wait_seconds=0, batch_size=10)
    result = source.poll_once()

    assert (result.received, result.failed, result.error) == (len(bodies), 0, None)  # one invocation, no retry
    delivered = Counter(e.external_id for e in hub.events() if e.external_id.startswith(tag))
    assert delivered == Counter(users)  # the valid messages of the same batch all arrived, once each
    dead = drain(queues.dlq_url)
    assert Counter(m["Body"] for m in dead) == Counter(bad)  # every poison body kept byte for byte
    for message in dead:
        failure = attrs(message)
        assert failure["failure_kind"] == "poison"
        assert failure["failure_reason"]  # the reason an operator reads in `dlq list`
        assert len(failure["failure_reason"]) <= 1000
        assert failure["source_message_id"] and failure["first_seen"]
    assert depth(queues.events_url) == 0
    TALLY["batches mixing poison and valid"] += 1
    TALLY["poison bodies dead-lettered with a reason"] += len(dead)
    TALLY["valid messages of those batches delivered"] += sum(delivered.values())


def test_large_poison_bodies_still_reach_the_dlq_at_once(pipeline, hub) -> None:
    """Nine 120 KB poison bodies are each fine for SQS, but 1.08 MB together: the DLQ send must be split."""
    sqs, queues = pipeline.sqs, pipeline.queues
    bodies = [json.dumps({"v": 1, "n": i, "padding": "x" * 120_000}) for i in range(9)] + [message_body("fine")]
    for body in bodies:
        sqs.send_message(QueueUrl=queues.events_url, MessageBody=body)
    result = LocalEventSource(sqs, queues.events_url, app.deliver, wait_seconds=0, batch_size=10).poll_once()
    assert result.received == 10
    assert result.failed == 0, "poison must never be retried"
    assert len(drain(queues.dlq_url)) == 9
    assert [e.external_id for e in hub.events()] == ["fine"]


AWKWARD = [
    *"/?#%@:| ",
    "%2F",
    "%40",
    "..",
    "./",
    "@conn_evil",
    ":import",
    "?x=1",
    "#frag",
    "\\",
    "+",
    "&",
    "=",
    ";",
    ",",
    "é",
    "Ü",
    "名前",
    "🙂",
    "\u0301",
    "\u200b",
    "\t",
    "~",
    "'",
    '"',
]
awkward_usernames = st.lists(st.sampled_from(AWKWARD) | COGNITO_CHARS, min_size=1, max_size=12).map("".join)


@fuzz(25)
@given(st.lists(awkward_usernames, min_size=1, max_size=6, unique=True))
def test_awkward_usernames_arrive_as_exactly_that_external_id(pipeline, hub, names: list[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    users = [f"{name}{tag}" for name in names]  # the tag keeps examples apart; the awkward part leads
    for user in users:
        app.post_auth(signin_event(user), None)
    before = len(hub.journal())
    result = LocalEventSource(pipeline.sqs, pipeline.queues.events_url, app.deliver, wait_seconds=0).poll_once()
    assert (result.received, result.failed) == (len(users), 0)

    calls = hub.journal()[before:]
    assert sorted(c.raw_path for c in calls) == sorted(
        f"/admin/v1/users/{sdk_util.quote_path(f'{user}@{CONNECTION_ID}')}:event" for user in users
    )
    for call in calls:  # one segment under /admin/v1/users/, the :event verb, nothing else reachable
        segment = call.raw_path.removeprefix("/admin/v1/users/")
        assert call.raw_path.startswith("/admin/v1/users/") and segment.endswith(f"@{CONNECTION_ID}:event")
        assert not set(segment) & set("/?# ")
        assert (call.method, call.verb, call.connection_id, call.status) == ("POST", "event", CONNECTION_ID, 200)
    arrived = [(e.external_id, e.connection_id, e.type) for e in hub.events() if e.external_id.endswith(tag)]
    assert sorted(arrived) == sorted((user, CONNECTION_ID, "SIGNIN") for user in users)
    TALLY["awkward usernames delivered as exactly that externalId"] += len(users)


def test_usernames_shaped_like_other_routes_stay_on_the_event_route(pipeline, hub) -> None:
    """Path traversal, a second verb, another connection, a query string: all end up as one literal externalId."""
    users = [
        "../../admin/v1/users",
        "x:import",
        "y@conn_other",
        "z?pageSize=1000",
        "../_fake/reset",
        "%2e%2e%2f",
        "/admin/v1/users/usr_1",
        "a#b:event",
    ]
    for user in users:
        app.post_auth(signin_event(user), None)
    LocalEventSource(pipeline.sqs, pipeline.queues.events_url, app.deliver, wait_seconds=0).poll_once()
    assert sorted(e.external_id for e in hub.events()) == sorted(users)
    assert {(e.connection_id, e.type) for e in hub.events()} == {(CONNECTION_ID, "SIGNIN")}
    assert {c.verb for c in hub.journal()} == {"event"}
    assert {u["accountConnections"][0]["connection"]["id"] for u in hub.users()} == {CONNECTION_ID}
    TALLY["awkward usernames delivered as exactly that externalId"] += len(users)
