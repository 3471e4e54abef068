"""How many UserHub calls a container has in flight, and when it may start the next one.

UserHub publishes no rate limit, and Lambda runs as many containers as the backlog asks for, so each container finds
its share by itself (additive increase, multiplicative decrease, as TCP does):

    start      4 calls in flight (or DELIVERY_CONCURRENCY if lower), +1 per success until the first congestion
    success    +1/limit (about +1 per round of `limit` calls), up to DELIVERY_CONCURRENCY
    congestion ×0.5 calls in flight, at most once per round: a 503 or a timeout from a call started after the last
               cut (too much work in flight)
    429        too many calls per second, whatever is in flight: no new call until Retry-After, and from then on
               at most 0.8 × the rate this container sent at (over its last second outside a pause), at most
               once per round; while calls succeed the pace grows 5 % a second (at least 1 call/s
               a second), so the containers sharing UserHub's limit close in on it together and meet a 429 every
               several seconds, not every call
    DELIVERY_RATE_LIMIT at most this many calls a second from this container (optional): containers × rate is a hard
                        ceiling an operator can agree with UserHub

The state lives as long as the warm container. With `ADAPTIVE_CONCURRENCY=off` the container behaves as before
adaptivity: DELIVERY_CONCURRENCY calls in flight, no pause, no learned pace (each message still waits its own
Retry-After in the queue); DELIVERY_RATE_LIMIT still applies.

Waiting calls queue in order and only the first of them is woken (when a call finishes, or its timed wait for a
pause or a rate-limit token is over); once it starts, it wakes the next. A finished call therefore costs O(1)
wake-ups however many calls wait: waking every waiter on every release (a condition's notify_all) is O(waiters) per
call and, at a few hundred in flight, a thundering herd that costs more CPU than the calls themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

INITIAL_LIMIT = 4
DECREASE = 0.5
PACE_DECREASE = 0.8
PACE_GROWTH = 0.05  # the pace grows by 5 % a second while its calls succeed...
PACE_MIN_GROWTH = 1.0  # ...and by at least 1 call/s a second, so a low pace does not take minutes to recover
PACE_WINDOW_SECONDS = 1.0
BURST_SECONDS = 0.1  # an idle container may start at most this much of a second's calls at once


class Signal(StrEnum):
    """What a finished call says about UserHub's capacity."""

    SUCCESS = "success"
    CONGESTION = "congestion"  # 503, timeout: too much in flight
    RATE_LIMITED = "rate_limited"  # 429: too many a second
    NEUTRAL = "neutral"  # any other failure: says nothing about load


class Slot(NamedTuple):
    started: float


class _Waiter:
    """One call waiting for its turn; it keeps its place in the queue across the times it is woken."""

    __slots__ = ("woken",)

    def __init__(self) -> None:
        self.woken: asyncio.Future[None] | None = None


class FlowControl:
    def __init__(
        self,
        max_concurrency: int,
        *,
        adaptive: bool = True,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.adaptive = adaptive
        self.limit = float(min(INITIAL_LIMIT, max_concurrency) if adaptive else max_concurrency)
        self.slow_start = adaptive
        self.in_flight = 0
        self.paused_until = 0.0
        self.rate_limit = rate_limit
        self.pace: float | None = None  # calls/s learned from 429s; None until the first one
        self._tokens = 1.0
        self._refilled = clock()
        self._last_cut = float("-inf")
        self._last_pace_cut = float("-inf")
        self._recent_starts: deque[float] = deque()
        self._clock = clock
        self._waiters: deque[_Waiter] = deque()
        self._alarm: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    # ------------------------------------------------------------------ the decisions, pure given the clock
    def wait_before_start(self) -> float | None:
        """0 if a call may start now; else seconds until it may (None: until a call in flight finishes)."""
        now = self._clock()
        if now < self.paused_until:
            return self.paused_until - now
        if self.in_flight >= max(int(self.limit), 1):
            return None
        rate = self.rate()
        if rate:
            self._refill(now, rate)
            if self._tokens < 1:
                return (1 - self._tokens) / rate
        return 0.0

    def rate(self) -> float | None:
        """Calls a second this container may start: the lower of DELIVERY_RATE_LIMIT and the learned pace."""
        if not self.pace or not self.rate_limit:
            return self.pace or self.rate_limit or None
        return min(self.pace, self.rate_limit)

    def _refill(self, now: float, rate: float) -> None:
        self._tokens = min(max(rate * BURST_SECONDS, 1.0), self._tokens + (now - self._refilled) * rate)
        self._refilled = now

    def started(self) -> Slot:
        self.in_flight += 1
        now = self._clock()
        rate = self.rate()
        if rate:
            self._refill(now, rate)
            self._tokens -= 1
        else:
            self._refilled = now
        if self.adaptive:
            self._recent_starts.append(now)
            while self._recent_starts[0] < now - PACE_WINDOW_SECONDS:
                self._recent_starts.popleft()
        return Slot(now)

    def finished(self, slot: Slot, signal: Signal, retry_after: float | None = None) -> None:
        self.in_flight -= 1
        if not self.adaptive:
            return
        now = self._clock()
        pause_ended = min(self.paused_until, now)
        if retry_after:
            self.paused_until = max(self.paused_until, now + retry_after)
        if signal is Signal.SUCCESS:
            self.limit = min(self.max_concurrency, self.limit + (1 if self.slow_start else 1 / self.limit))
            if self.pace is not None:  # about `pace` successes a second at the pace: this adds the growth a second
                self.pace += max(PACE_GROWTH * self.pace, PACE_MIN_GROWTH) / self.pace
        elif signal is Signal.CONGESTION and slot.started >= self._last_cut:
            self.slow_start = False
            self.limit = max(1.0, self.limit * DECREASE)
            self._last_cut = now
        elif signal is Signal.RATE_LIMITED and slot.started >= self._last_pace_cut:
            # the rate the container sent at, over the last second it was not paused (a pause is not a lower rate)
            since = max(now - PACE_WINDOW_SECONDS, pause_ended)
            sent = sum(1 for t in self._recent_starts if t >= since) / max(now - since, BURST_SECONDS)
            self.pace = max(1.0, PACE_DECREASE * sent)  # what it sent, not its pace: that may have grown unused
            self._tokens = min(self._tokens, 1.0)
            self._last_pace_cut = now

    # ------------------------------------------------------------------ async use by the caller
    async def acquire(self, time_left: Callable[[], float]) -> Slot | float:
        """A slot, once one may start; or, when waiting would outlast `time_left()`, the seconds this container
        still has to wait (0 if it is only busy), so the message can be offered again when that is over.

        Calls start in the order they asked; only the first waiter watches the clock (pauses, rate limit)."""
        waiter: _Waiter | None = None
        try:
            while True:
                left = time_left()
                if left <= 0:
                    return 0.0
                wait = self.wait_before_start()
                first = not self._waiters or self._waiters[0] is waiter
                if wait == 0.0 and first:
                    if waiter is not None:
                        self._waiters.popleft()
                        waiter = None
                    slot = self.started()
                    if self.wait_before_start() is not None:
                        # the next waiter may start too (slow start adds a slot per success), or must watch the
                        # clock now that it is first; with every slot taken, a release will wake it
                        self._wake_first()
                    return slot
                if wait is not None and wait >= left:
                    return wait
                if waiter is None:
                    waiter = _Waiter()
                    self._waiters.append(waiter)
                    first = len(self._waiters) == 1
                loop = asyncio.get_running_loop()
                waiter.woken = woken = loop.create_future()
                # only the first waiter watches the clock; the others are woken in turn. A pause or the rate limit
                # gets a timer of its own; waiting for a free slot shares one alarm at the end of the time left
                # (the calls in flight usually free a slot long before): a timer per call, at thousands waiting,
                # made every timer operation of the loop slower
                timer = loop.call_later(min(wait, left), _wake, woken) if first and wait is not None else None
                if first and wait is None:
                    self._alarm_by(loop, loop.time() + left)
                try:
                    await woken
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            if waiter is not None:  # gave up (time, a long pause, cancellation): let the next one look
                self._waiters.remove(waiter)
                self._wake_first()

    def release(self, slot: Slot, signal: Signal, retry_after: float | None = None) -> None:
        self.finished(slot, signal, retry_after)
        self._wake_first()

    def _alarm_by(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Wake the first waiter at `due` at the latest (one alarm for every waiter of a batch)."""
        alarm = self._alarm
        if alarm is not None and alarm[0] is loop and alarm[1].when() <= due and not alarm[1].cancelled():
            return
        if alarm is not None:
            alarm[1].cancel()
        self._alarm = (loop, loop.call_at(due, self._on_alarm))

    def _on_alarm(self) -> None:
        self._alarm = None
        self._wake_first()

    def _wake_first(self) -> None:
        if self._waiters and self._waiters[0].woken is not None:
            _wake(self._waiters[0].woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
