"""Each container finds its share of UserHub's capacity: fewer calls on 429/503/timeouts, more on success, a pause
on Retry-After, and an optional hard rate. Unit tests on a controlled clock, then through app.deliver."""

from __future__ import annotations

import asyncio

import pytest

from chalicelib.delivery import Deliverer
from chalicelib.delivery.flow import INITIAL_LIMIT, PACE_DECREASE, PACE_GROWTH, FlowControl, Signal, Slot
from chalicelib.settings import get_settings
from tests.support import assert_room_for, capture_visibility, message_body, receive_event, send
from userhub_sync.local.event_source import LambdaContext
from userhub_sync.local.fake_userhub import Fault


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_calls(flow: FlowControl, signals: list[Signal], clock: Clock, *, concurrent: bool = False) -> None:
    """Finish one call per signal; `concurrent` starts them all before any finishes (a burst in flight)."""
    slots = [flow.started() for _ in signals] if concurrent else []
    for i, signal in enumerate(signals):
        slot = slots[i] if concurrent else flow.started()
        clock.now += 0.01
        flow.finished(slot, signal)


def starts_in_one_second(flow: FlowControl, clock: Clock) -> int:
    starts = 0
    for _ in range(100):  # one simulated second in steps of 10 ms
        while flow.wait_before_start() == 0.0:
            flow.finished(flow.started(), Signal.SUCCESS)
            starts += 1
        clock.now += 0.01
    return starts


def test_slow_start_doubles_per_round_up_to_the_configured_concurrency() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    assert flow.limit == INITIAL_LIMIT
    run_calls(flow, [Signal.SUCCESS] * 4, clock)
    assert flow.limit == 8
    run_calls(flow, [Signal.SUCCESS] * 50, clock)
    assert flow.limit == 16, "never above DELIVERY_CONCURRENCY"


def test_congestion_halves_once_per_round_and_success_recovers_one_per_round() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    run_calls(flow, [Signal.SUCCESS] * 20, clock)
    assert flow.limit == 16
    run_calls(flow, [Signal.CONGESTION] * 8, clock, concurrent=True)  # eight 429s of calls in flight together
    assert flow.limit == 8, "one cut for one burst, not 16 → 0.06"
    run_calls(flow, [Signal.CONGESTION], clock)  # a call started after the cut: a new signal
    assert flow.limit == 4
    run_calls(flow, [Signal.SUCCESS] * 4, clock)
    assert 4.9 < flow.limit < 5.1, "after the first cut: about +1 per round of `limit` calls"
    run_calls(flow, [Signal.NEUTRAL] * 10, clock)
    assert 4.9 < flow.limit < 5.1, "a 400 or a 500 says nothing about load"
    run_calls(flow, [Signal.CONGESTION] * 5, clock)
    assert flow.limit == 1, "never below one call in flight"


def test_a_retry_after_pauses_every_new_call_of_the_container() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    slot = flow.started()
    flow.finished(slot, Signal.CONGESTION, retry_after=5)
    assert flow.wait_before_start() == pytest.approx(5)
    clock.now += 4
    assert flow.wait_before_start() == pytest.approx(1)
    clock.now += 1
    assert flow.wait_before_start() == 0.0


def test_the_limit_holds_calls_until_one_finishes() -> None:
    assert_room_for(FlowControl(2, clock=Clock()), 2)


def test_a_rate_limit_spaces_calls_whatever_the_concurrency() -> None:
    clock = Clock()
    flow = FlowControl(64, adaptive=False, rate_limit=10, clock=clock)
    assert 10 <= starts_in_one_second(flow, clock) <= 11  # the rate, plus the one token a container starts with


def test_without_adaptivity_the_limit_stays_at_the_configured_concurrency() -> None:
    clock = Clock()
    flow = FlowControl(16, adaptive=False, clock=clock)
    assert flow.limit == 16
    run_calls(flow, [Signal.CONGESTION] * 5, clock)
    assert flow.limit == 16
    flow.finished(flow.started(), Signal.RATE_LIMITED, retry_after=5)
    assert flow.wait_before_start() == 0.0 and flow.pace is None, "off means the behaviour before adaptivity"


def test_a_429_sets_a_pace_below_what_the_container_sent_and_successes_raise_it() -> None:
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    burst = [flow.started() for _ in range(50)]  # 50 calls started within the last second...
    clock.now += 0.5
    for slot in burst[:10]:  # ...and ten of them answered 429 together: one cut, not ten
        flow.finished(slot, Signal.RATE_LIMITED, retry_after=1)
    assert flow.pace == pytest.approx(PACE_DECREASE * 50)
    assert flow.limit > 1, "a 429 is about calls per second, not calls in flight"
    assert flow.wait_before_start() == pytest.approx(1), "Retry-After still pauses the container"
    for slot in burst[10:]:
        flow.finished(slot, Signal.SUCCESS)
    assert flow.pace == pytest.approx(PACE_DECREASE * 50 + 40 * PACE_GROWTH)
    clock.now += 1
    pace = flow.pace
    assert pace is not None
    # the pace, plus what it grew by over the second (+0.05 a success) and a burst of a tenth of a second
    assert pace <= starts_in_one_second(flow, clock) <= pace * 1.1 + 3, "the pace spaces the starts"
    late = flow.started()
    flow.finished(late, Signal.RATE_LIMITED)  # a call started after the cut: a new signal, measured afresh
    assert flow.pace is not None and flow.pace < pace


def test_without_a_429_there_is_no_pace() -> None:
    clock = Clock()
    flow = FlowControl(8, clock=clock)
    run_calls(flow, [Signal.SUCCESS, Signal.CONGESTION, Signal.NEUTRAL] * 5, clock)
    assert flow.pace is None and flow.rate() is None


def test_acquire_gives_back_the_wait_when_it_would_outlast_the_invocation() -> None:
    clock = Clock()
    flow = FlowControl(4, clock=clock)
    flow.finished(flow.started(), Signal.CONGESTION, retry_after=30)
    got = asyncio.run(flow.acquire(lambda: 10.0))
    assert got == pytest.approx(30)
    assert asyncio.run(flow.acquire(lambda: -1.0)) == 0.0
    clock.now += 31
    assert isinstance(asyncio.run(flow.acquire(lambda: 10.0)), Slot)


class CountingFlow(FlowControl):
    """Counts how often a waiting call looks at the state: once per wake-up."""

    looks = 0

    def wait_before_start(self) -> float | None:
        self.looks += 1
        return super().wait_before_start()


def test_a_finished_call_wakes_one_waiter_and_waiters_start_in_order() -> None:
    """At a few hundred calls in flight, waking every waiter on every release costs more CPU than the calls."""

    async def scenario() -> list[int]:
        flow = CountingFlow(1, adaptive=False)
        first = await flow.acquire(lambda: 60.0)
        assert isinstance(first, Slot)
        order: list[int] = []

        async def call(i: int) -> None:
            slot = await flow.acquire(lambda: 60.0)
            assert isinstance(slot, Slot)
            order.append(i)

        waiting = [asyncio.create_task(call(i)) for i in range(50)]
        await asyncio.sleep(0)  # every waiter has looked once and queued
        looks_before = flow.looks
        flow.release(first, Signal.SUCCESS)
        for _ in range(5):
            await asyncio.sleep(0)
        looks = flow.looks - looks_before
        assert looks <= 3  # the first waiter, and the next one it wakes to check for a second free slot
        assert order == [0]
        for i in range(1, 50):  # each release lets exactly the next one in
            flow.release(Slot(0.0), Signal.SUCCESS)
            for _ in range(5):
                await asyncio.sleep(0)
            assert order[-1] == i
        await asyncio.gather(*waiting)
        return order

    order = asyncio.run(asyncio.wait_for(scenario(), 30))  # a hang is a failure, not a stuck suite
    assert order == list(range(50))


def test_a_waiter_that_runs_out_of_time_lets_the_next_one_in() -> None:
    async def scenario() -> list[object]:
        flow = FlowControl(1, adaptive=False)
        held = await flow.acquire(lambda: 60.0)
        assert isinstance(held, Slot)
        left = {"late": 60.0}
        late = asyncio.create_task(flow.acquire(lambda: left["late"]))
        ready = asyncio.create_task(flow.acquire(lambda: 60.0))
        await asyncio.sleep(0)
        left["late"] = 0.0  # the first waiter's invocation is over: it gives up when woken
        flow.release(held, Signal.SUCCESS)
        return list(await asyncio.gather(late, ready))

    gave_up, started = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert gave_up == 0.0
    assert isinstance(started, Slot)


def test_through_deliver_a_429_holds_back_the_rest_of_the_batch(pipeline, hub) -> None:
    """The first round of calls meets 429s asking for 30 s: the container starts no new call, and the records it
    did not start wait those 30 s in the queue instead of coming straight back."""
    hub.add_fault(Fault(status=429, retry_after="30", count=INITIAL_LIMIT))
    sqs, queues = pipeline.sqs, pipeline.queues
    seen = capture_visibility(sqs)
    send(sqs, queues.events_url, *(message_body(f"user{i}") for i in range(10)))
    event = receive_event(sqs, queues.events_url, 10)
    deliverer = Deliverer(get_settings(), sqs=sqs)
    result = deliverer.handle(event, LambdaContext("deliver", 5).get_remaining_time_in_millis)
    assert len(hub.journal()) == INITIAL_LIMIT, "calls after the 429s were started anyway"
    assert len(result["batchItemFailures"]) == 10
    assert len(seen) == 10 and min(entry["VisibilityTimeout"] for entry in seen) >= 29


def test_through_deliver_a_short_retry_after_is_waited_out_within_the_invocation(pipeline, hub) -> None:
    """A 429 means "not now": when its Retry-After fits in the invocation, the container pauses and sends the same
    message again, instead of leaving it to a backoff of RETRY_BASE_SECONDS in the queue."""
    hub.add_fault(Fault(status=429, retry_after="1", count=2))
    sqs, queues = pipeline.sqs, pipeline.queues
    send(sqs, queues.events_url, *(message_body(f"user{i}") for i in range(6)))
    event = receive_event(sqs, queues.events_url, 6)
    deliverer = Deliverer(get_settings(), sqs=sqs)
    result = deliverer.handle(event, LambdaContext("deliver", 10).get_remaining_time_in_millis)
    assert result["batchItemFailures"] == []
    assert {e.external_id for e in hub.events()} == {f"user{i}" for i in range(6)}
    assert [e.status for e in hub.journal()].count(429) == 2


def test_a_pause_is_not_read_as_a_lower_rate() -> None:
    """A 429 right after a Retry-After pause measures the rate since the pause ended, not over a second that was
    mostly pause (which made the pace a fraction of what the container really sent)."""
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    burst = [flow.started() for _ in range(50)]
    clock.now += 0.5
    flow.finished(burst[0], Signal.RATE_LIMITED, retry_after=1)
    for slot in burst[1:]:
        flow.finished(slot, Signal.SUCCESS)
    clock.now += 1.0  # the pause is over
    resumed = [flow.started() for _ in range(5)]  # five calls in the first 0.1 s after it: 50 a second
    clock.now += 0.1
    flow.finished(resumed[0], Signal.RATE_LIMITED)
    assert flow.pace is not None and flow.pace >= PACE_DECREASE * 40, flow.pace


def test_a_low_pace_recovers_by_at_least_one_call_a_second_each_second() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    flow.finished(flow.started(), Signal.RATE_LIMITED)  # one call in the last second: the pace floor, 1 a second
    assert flow.pace == 1.0
    run_calls(flow, [Signal.SUCCESS] * 10, clock)  # about 3 s of calls at that pace
    assert flow.pace > 4, f"a pace of 1/s grew only to {flow.pace:.2f}/s after 10 successes"


def test_a_429_cuts_from_what_the_container_sent_not_from_a_pace_that_grew_unused() -> None:
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    flow.finished(flow.started(), Signal.RATE_LIMITED)
    run_calls(flow, [Signal.SUCCESS] * 500, clock)  # a few successes a call window: the pace grows past any use
    assert flow.pace is not None and flow.pace > 30
    clock.now += 5
    slots = [flow.started() for _ in range(10)]  # ten calls in the last second
    clock.now += 0.5
    flow.finished(slots[0], Signal.RATE_LIMITED)
    assert flow.pace == pytest.approx(PACE_DECREASE * 10)
