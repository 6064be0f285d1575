"""netback's credit scheduler with a clock the test moves."""
from __future__ import annotations

import pytest

from xenlab.drivers.netback.ratelimit import MAX_BURST_BYTES, CreditScheduler, Rate, parse_rate
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError


@pytest.mark.parametrize("text, rate", [
    ("10Mb/s@20ms", Rate(25_000, 20_000)),
    ("1MB/s", Rate(50_000, 50_000)),          # xl's default interval is 50ms
    ("12500,1000", Rate(12_500, 1000)),       # libxl's "bytes,usec" as netback reads it
])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "0,1000", "10Mb/s@0ms", "-1,5"])
def test_parse_rate_refuses(text):
    with pytest.raises(XenError):
        parse_rate(text)


def test_frames_within_the_credit_go_at_once():
    sched = CreditScheduler(Rate(3000, 1000), ManualClock(10.0))
    assert [sched.consume(1000) for _ in range(3)] == [None, None, None]
    assert sched.remaining == 0


def test_a_frame_larger_than_the_credit_waits_for_the_window_end():
    clock = ManualClock(10.0)
    sched = CreditScheduler(Rate(1000, 20_000), clock)
    assert sched.consume(600) is None
    wait = sched.consume(600)
    assert wait == pytest.approx(10.02) and sched.limited == 1
    clock.now = 10.005
    assert sched.consume(600) == wait           # the timer is armed: ask again later
    clock.now = wait
    sched.replenish()
    assert sched.remaining == 1400
    assert sched.consume(600) is None


def test_credit_is_earned_back_when_the_window_has_passed():
    clock = ManualClock(10.0)
    sched = CreditScheduler(Rate(1000, 20_000), clock)
    sched.consume(1000)
    clock.now += 1.0                             # long idle: no timer needed
    assert sched.consume(800) is None


def test_credit_accumulates_only_up_to_the_burst():
    sched = CreditScheduler(Rate(100_000, 1000), ManualClock(10.0))
    for _ in range(5):
        sched.replenish()
    assert sched.remaining == MAX_BURST_BYTES
    big = CreditScheduler(Rate(500_000, 1000), ManualClock(10.0))
    big.replenish()
    assert big.remaining == 500_000              # the burst is at least one interval's credit


def test_a_jumbo_frame_always_gets_through_eventually():
    clock = ManualClock(10.0)
    sched = CreditScheduler(Rate(100, 1000), clock)
    rounds = 0
    while (wait := sched.consume(65535)) is not None:
        clock.now = wait
        sched.replenish()
        rounds += 1
    assert rounds == 655
