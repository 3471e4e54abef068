"""Sign-ins as Cognito makes them: usernames of every shape it produces, the one PostAuthentication event builder,
and a producer that sends them through the real post_auth handler.

Invariant: a SignIn's `ts` is taken just before post_auth runs, with the clock the fake UserHub stamps its events
with, so an accepted event at or after `ts` can stand for that sign-in and one before it cannot.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

POOL_ID = "us-east-1_LocalPool1"


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


def signin_event(username: str, pool: str = POOL_ID, *, email: str | None = None) -> dict[str, Any]:
    """A Cognito PostAuthentication event, as the trigger receives it."""
    attributes = {"sub": str(uuid.uuid4()), "email_verified": "true"}
    if email:
        attributes["email"] = email
    return {
        "version": "1",
        "triggerSource": "PostAuthentication_Authentication",
        "region": "us-east-1",
        "userPoolId": pool,
        "userName": username,
        "callerContext": {"awsSdkVersion": "aws-sdk-js-3", "clientId": "local-client"},
        "request": {"userAttributes": attributes, "newDeviceUsed": False},
        "response": {},
    }


@dataclass
class SignIn:
    user: str
    ts: float  # time.time() just before post_auth ran: the fake stamps events with the same clock
    enqueued: bool


class Producer(threading.Thread):
    """Sign-ins through the real post_auth handler, as Cognito would call it: `start()` in its own thread, or
    `run()` in this one."""

    def __init__(self, users: list[str], pool: str = POOL_ID, on_signin: Callable[[SignIn], None] | None = None):
        super().__init__(name="signins", daemon=True)
        self.users, self.pool, self.on_signin = users, pool, on_signin
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
                event = signin_event(user, self.pool)
                if app.post_auth(event, None) is not event:
                    raise AssertionError("post_auth did not return the event")
                signin = SignIn(user, ts, post_auth.metrics.totals["enqueue_failed"] == failed_before)
                self.signins.append(signin)
                if self.on_signin:
                    self.on_signin(signin)
        except BaseException as error:  # reported by the scenario, never swallowed
            self.error = error
        finally:
            self.finished_at = time.monotonic()
