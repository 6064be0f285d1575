"""SCHEDOP_watchdog's slots (Xen's domain_watchdog), on a fake clock."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.watchdog import NR_DOMAIN_WATCHDOG_TIMERS, Watchdogs
from xenlab.xen.errors import DomainError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def errno_of(call, *args):
    with pytest.raises(DomainError) as err:
        call(*args)
    return err.value.errno


def test_id_0_takes_a_slot_and_a_timeout_rearms_it(clock):
    w = Watchdogs(clock)
    assert w.set(1, 0, 10) == 1
    clock.now += 9
    assert not w.expired(1, 1)
    assert w.set(1, 1, 10) == 0          # poked: ten more seconds
    clock.now += 9
    assert not w.expired(1, 1)
    clock.now += 1
    assert w.expired(1, 1)


def test_a_timeout_of_0_stops_it_and_frees_the_slot(clock):
    w = Watchdogs(clock)
    assert w.set(1, 0, 10) == 1
    assert w.set(1, 1, 0) == 0
    clock.now += 100
    assert not w.expired(1, 1) and w.armed(1) == []
    assert errno_of(w.set, 1, 1, 5) == errno.EINVAL      # not in use any more


def test_slots_run_out_and_ids_are_checked(clock):
    w = Watchdogs(clock)
    assert [w.set(1, 0, 5) for _ in range(NR_DOMAIN_WATCHDOG_TIMERS)] == [1, 2]
    assert errno_of(w.set, 1, 0, 5) == errno.ENOSPC
    assert errno_of(w.set, 1, NR_DOMAIN_WATCHDOG_TIMERS + 1, 5) == errno.EINVAL
    assert w.set(2, 0, 5) == 1                           # per domain
    w.remove_domain(1)
    assert w.armed(1) == [] and w.armed(2) == [1]


def test_a_new_watchdog_with_timeout_0_is_due_at_once_as_in_xen(clock):
    w = Watchdogs(clock)
    assert w.set(1, 0, 0) == 1 and w.expired(1, 1)
