"""Each step of the per-container flow control, exactly: where the limit starts, what one success, congestion or
neutral answer does to it, how a Retry-After pause and the optional rate combine, and what `acquire` answers when
waiting would outlast the invocation. Pure on a controlled clock, except the `acquire` tests, which wait (briefly)
on the real event loop as deliver does.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from chalicelib.delivery.flow import DECREASE, INITIAL_LIMIT, FlowControl, Signal, Slot
from tests.support import assert_room_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def succeed(flow: FlowControl, times: int = 1) -> None:
    """`times` calls, one after another, each answered with success."""
    for _ in range(times):
        flow.finished(flow.started(), Signal.SUCCESS)


def cut_once(flow: FlowControl, clock: Clock) -> None:
    """One congestion signal from a call started now: leaves slow start."""
    slot = flow.started()
    clock.now += 0.01
    flow.finished(slot, Signal.CONGESTION)


@pytest.mark.parametrize(("configured", "limit"), [(1, 1.0), (3, 3.0), (4, 4.0), (64, 4.0)])
def test_adaptive_starts_at_four_calls_or_the_configured_concurrency_if_lower(configured: int, limit: float) -> None:
    flow = FlowControl(configured, clock=Clock())
    assert INITIAL_LIMIT == 4 and DECREASE == 0.5
    assert flow.limit == limit and flow.slow_start is True and flow.in_flight == 0


def test_without_adaptivity_the_limit_is_the_configured_concurrency_from_the_start() -> None:
    flow = FlowControl(64, adaptive=False, clock=Clock())
    assert flow.limit == 64.0 and flow.slow_start is False


def test_in_slow_start_each_success_adds_one_call() -> None:
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    succeed(flow)
    assert flow.limit == 5.0 and flow.in_flight == 0


def test_after_the_first_cut_a_success_adds_one_over_the_limit() -> None:
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    succeed(flow, 4)
    assert flow.limit == 8.0
    cut_once(flow, clock)
    assert flow.limit == 4.0 and flow.slow_start is False
    succeed(flow)
    assert flow.limit == pytest.approx(4.25)


def test_success_never_lifts_the_limit_above_the_configured_concurrency() -> None:
    clock = Clock()
    flow = FlowControl(5, clock=clock)
    succeed(flow, 3)
    assert flow.limit == 5.0


def test_a_neutral_answer_changes_nothing_but_the_calls_in_flight() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    slot = flow.started()
    assert flow.in_flight == 1
    flow.finished(slot, Signal.NEUTRAL)
    assert (flow.limit, flow.slow_start, flow.in_flight, flow.paused_until) == (4.0, True, 0, 0.0)


def test_congestion_never_cuts_below_one_call() -> None:
    clock = Clock()
    flow = FlowControl(1, clock=clock)
    cut_once(flow, clock)
    assert flow.limit == 1.0
    assert_room_for(flow, 1)  # one call in flight fills a limit of one


def test_a_fractional_limit_allows_its_whole_part() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    cut_once(flow, clock)  # 4 → 2
    cut_once(flow, clock)  # 2 → 1
    succeed(flow)  # 1 → 2 (one over one)
    succeed(flow)  # 2 → 2.5
    assert flow.limit == pytest.approx(2.5)
    assert_room_for(flow, 2)


def test_a_call_started_exactly_at_the_last_cut_cuts_again_and_one_started_before_does_not() -> None:
    clock = Clock()
    flow = FlowControl(64, clock=clock)
    succeed(flow, 12)
    assert flow.limit == 16.0
    before = flow.started()
    clock.now += 1
    cut_once(flow, clock)  # cut at 1001.01
    assert flow.limit == 8.0
    flow.finished(before, Signal.CONGESTION)  # started before the cut: the same congestion
    assert flow.limit == 8.0
    at_cut = flow.started()  # started at the instant of the cut
    flow.finished(at_cut, Signal.CONGESTION)
    assert flow.limit == 4.0


def test_the_first_congestion_counts_whenever_its_call_started() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    flow.finished(Slot(started=-1e12), Signal.CONGESTION)
    assert flow.limit == 2.0


def test_a_pause_ends_at_its_instant_and_a_shorter_retry_after_never_shortens_it() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    flow.finished(flow.started(), Signal.CONGESTION, retry_after=10)
    flow.finished(flow.started(), Signal.CONGESTION, retry_after=2)
    assert flow.paused_until == 1010.0
    assert flow.wait_before_start() == 10.0
    clock.now = 1010.0
    assert flow.wait_before_start() == 0.0


def test_no_retry_after_or_zero_makes_no_pause() -> None:
    clock = Clock()
    flow = FlowControl(16, clock=clock)
    flow.finished(flow.started(), Signal.CONGESTION, retry_after=0)
    flow.finished(flow.started(), Signal.CONGESTION)
    assert flow.paused_until == 0.0 and flow.wait_before_start() == 0.0


def test_without_adaptivity_a_retry_after_pauses_nothing() -> None:
    """Off is the behaviour before adaptivity: each message waits its own Retry-After in the queue, the container
    goes on."""
    clock = Clock()
    flow = FlowControl(16, adaptive=False, clock=clock)
    flow.finished(flow.started(), Signal.RATE_LIMITED, retry_after=3)
    assert flow.wait_before_start() == 0.0 and flow.limit == 16.0 and flow.pace is None


def test_the_rate_starts_with_one_token_and_waits_exactly_for_the_next() -> None:
    clock = Clock()
    flow = FlowControl(64, adaptive=False, rate_limit=4, clock=clock)
    assert flow.wait_before_start() == 0.0
    succeed(flow)
    assert flow.wait_before_start() == pytest.approx(0.25)
    clock.now += 0.1
    assert flow.wait_before_start() == pytest.approx(0.15)


def test_the_rate_s_burst_is_a_tenth_of_a_second_of_calls() -> None:
    clock = Clock()
    flow = FlowControl(64, adaptive=False, rate_limit=100, clock=clock)
    clock.now += 3600
    for _ in range(10):
        assert flow.wait_before_start() == 0.0
        succeed(flow)
    assert flow.wait_before_start() == pytest.approx(0.01)


def test_a_rate_below_one_a_second_still_bursts_one_call() -> None:
    clock = Clock()
    flow = FlowControl(64, adaptive=False, rate_limit=0.5, clock=clock)
    clock.now += 3600
    assert flow.wait_before_start() == 0.0
    succeed(flow)
    assert flow.wait_before_start() == pytest.approx(2.0)


def test_without_a_rate_starting_calls_spends_no_token() -> None:
    clock = Clock()
    flow = FlowControl(64, adaptive=False, clock=clock)
    succeed(flow, 50)
    assert flow.wait_before_start() == 0.0


def test_a_slot_records_when_its_call_started() -> None:
    clock = Clock()
    flow = FlowControl(4, clock=clock)
    clock.now = 1234.5
    assert flow.started() == Slot(1234.5)


def test_acquire_gives_a_slot_at_once_when_free() -> None:
    flow = FlowControl(4)
    slot = asyncio.run(flow.acquire(lambda: 10.0))
    assert isinstance(slot, Slot) and flow.in_flight == 1


def test_acquire_with_no_time_left_gives_zero() -> None:
    flow = FlowControl(4)
    assert asyncio.run(flow.acquire(lambda: 0.0)) == 0.0
    assert flow.in_flight == 0


def test_acquire_gives_back_a_wait_equal_to_the_time_left() -> None:
    clock = Clock()
    flow = FlowControl(4, clock=clock)
    flow.finished(flow.started(), Signal.CONGESTION, retry_after=5)
    assert asyncio.run(flow.acquire(lambda: 5.0)) == 5.0


def test_acquire_waits_out_a_short_pause_then_gives_a_slot() -> None:
    flow = FlowControl(4)
    flow.paused_until = time.monotonic() + 0.05
    slot = asyncio.run(flow.acquire(lambda: 10.0))
    assert isinstance(slot, Slot) and slot.started >= flow.paused_until


def test_acquire_when_busy_waits_for_a_release() -> None:
    flow = FlowControl(1)

    async def scenario() -> tuple[Slot | float, Slot | float]:
        first = await flow.acquire(lambda: 10.0)
        assert isinstance(first, Slot)
        waiter = asyncio.create_task(flow.acquire(lambda: 10.0))
        await asyncio.sleep(0.02)
        assert not waiter.done(), "a second call started while the only slot was held"
        flow.release(first, Signal.NEUTRAL)
        return first, await asyncio.wait_for(waiter, 5)

    _first, second = asyncio.run(scenario())
    assert isinstance(second, Slot) and flow.in_flight == 1


def test_acquire_when_busy_until_the_invocation_ends_gives_zero() -> None:
    flow = FlowControl(1)
    flow.started()
    end = time.monotonic() + 0.05
    assert asyncio.run(flow.acquire(lambda: end - time.monotonic())) == 0.0
    assert flow.in_flight == 1


def test_every_call_waiting_behind_one_that_never_ends_gives_up_when_the_invocation_ends() -> None:
    """Waiting for a free slot shares one alarm at the end of the time left; each waiter still gets its answer."""
    flow = FlowControl(1)
    flow.started()
    end = time.monotonic() + 0.1

    async def go() -> list[object]:
        return await asyncio.gather(*(flow.acquire(lambda: end - time.monotonic()) for _ in range(5)))

    assert asyncio.run(go()) == [0.0] * 5
    assert flow.in_flight == 1
