"""xenlab.testing.ManualClock: the clock every sans-I/O core takes, moved by the test."""
from __future__ import annotations

import math

import pytest

from xenlab.bridge.core import Bridge
from xenlab.testing import ManualClock


def test_it_reads_now_until_advanced():
    clock = ManualClock(1000.0)
    assert clock() == 1000.0 and clock() == 1000.0
    assert clock.advance(2.5) == 1002.5 and clock() == 1002.5
    clock.now = 10.0                      # a wall clock stepped back, as time.time can be
    assert clock() == 10.0


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf])
def test_advance_refuses_going_back_or_to_no_time(seconds):
    clock = ManualClock(5.0)
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock() == 5.0


@pytest.mark.parametrize("start", [math.nan, -math.inf])
def test_it_starts_at_a_time(start):
    with pytest.raises(ValueError):
        ManualClock(start)


def test_a_core_ages_by_it():
    clock = ManualClock()
    bridge = Bridge("br0", ageing=300, clock=clock)
    for name in ("a", "b", "c"):
        bridge.add_port(name)
    mac_b = bytes.fromhex("00163e000002")
    bridge.forward("b", b"\xff" * 6 + mac_b + b"\x08\x06" + bytes(46))
    to_b = mac_b + bytes.fromhex("00163e000001") + b"\x08\x06" + bytes(46)
    assert [port for port, _ in bridge.forward("a", to_b)] == ["b"]
    clock.advance(299)
    assert [port for port, _ in bridge.forward("a", to_b)] == ["b"]
    clock.advance(301)
    assert [port for port, _ in bridge.forward("a", to_b)] == ["b", "c"]    # aged out: flooded
