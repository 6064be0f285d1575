"""A netem on a device (net/qdisc.py): frames go through it to the device's
transmit, with one timer for the next frame due and none when idle, on
asyncio's loop and on uvloop's; tc's add/change/del rules; the device's
books."""
from __future__ import annotations

import asyncio
import errno

import pytest

from xenlab.net.device import NetDevice
from xenlab.net.netem import parse_netem
from xenlab.net.qdisc import (NetemQdisc, move_qdisc, qdisc_add, qdisc_change, qdisc_delete, qdisc_replace,
                              qdisc_show)
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError


class Wire(NetDevice):
    def __init__(self, name: str = "vif1.0"):
        super().__init__(name)
        self.sent: list[bytes] = []

    def transmit(self, frames: list[bytes]) -> None:
        self.sent += frames
        self.count_tx(frames)


def loops():
    out = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    except ImportError:
        pass
    return out


def run(new_loop, coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def until(predicate, limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


@pytest.mark.parametrize("new_loop", loops())
def test_frames_enqueued_while_a_timer_is_armed_all_go_out_in_order(new_loop):
    """Regression: uvloop's timer handles have no when(); the second frame
    into a qdisc with a timer armed raised, and stayed queued until some
    later frame came."""
    async def main():
        dev = Wire()
        qdisc_add(dev, parse_netem(["delay", "30ms"]))
        for i in range(5):
            dev.egress([bytes([i]) * 60])
            await asyncio.sleep(0.002)
        await until(lambda: len(dev.sent) == 5)
        assert dev.sent == [bytes([i]) * 60 for i in range(5)]
        assert dev.qdisc._timer is None           # idle: no timer
        assert dev.stats()["tx_packets"] == 5
    run(new_loop, main())


@pytest.mark.parametrize("new_loop", loops())
def test_a_timer_for_a_time_already_past_does_not_break_the_next_enqueue(new_loop):
    """Regression: armed for a time the loop's clock had passed, uvloop
    hands back a plain Handle (no when()), and the next frame raised. The
    qdisc's clock here is a ManualClock far behind the loop's."""
    async def main():
        clock = ManualClock(0.0)
        dev = Wire()
        dev.qdisc = NetemQdisc(dev, parse_netem(["delay", "20ms"]), clock=clock)
        dev.egress([b"a" * 60])
        dev.egress([b"b" * 60])
        assert dev.sent == []
        clock.advance(0.020)
        await until(lambda: len(dev.sent) == 2)
        assert dev.sent == [b"a" * 60, b"b" * 60] and dev.qdisc._timer is None
    run(new_loop, main())


@pytest.mark.parametrize("new_loop", loops())
def test_a_reordered_frame_goes_at_once_and_the_rest_wait(new_loop):
    async def main():
        dev = Wire()
        qdisc_add(dev, parse_netem("delay 10s reorder 100% gap 3".split()))
        dev.egress([b"a" * 60, b"b" * 60, b"c" * 60])
        assert dev.sent == [b"c" * 60]             # the 3rd of the run goes now
        assert dev.stats()["qdisc_backlog"] == 2
        qdisc_delete(dev)                          # what it held is dropped, and counted
        assert dev.drops["netem_flushed"] == 2
        assert "qdisc_backlog" not in dev.stats()
    run(new_loop, main())


def test_loss_and_limit_are_the_devices_drops_and_duplicates_its_qdisc_counters():
    async def main():
        dev = Wire()
        qdisc_add(dev, parse_netem("loss 50% duplicate 50% seed 4 limit 10000".split()))
        dev.egress([bytes(60)] * 1000)
        stats = dev.stats()
        assert stats["drop_netem_loss"] > 0 and stats["qdisc_duplicated"] > 0
        # The device's books: handed + duplicated = sent + drops.
        assert 1000 + stats["qdisc_duplicated"] == stats["tx_packets"] + stats["drop_netem_loss"]
        qdisc_change(dev, parse_netem("delay 10s limit 3".split()))
        dev.egress([bytes(60)] * 5)
        assert dev.stats()["drop_netem_limit"] == 2 and dev.stats()["qdisc_backlog"] == 3
    asyncio.run(main())


def test_tcs_rules_for_add_change_replace_and_del():
    async def main():
        dev = Wire()
        assert qdisc_show(dev) == "qdisc noqueue 0: root refcnt 2"
        with pytest.raises(XenError) as err:
            qdisc_change(dev, parse_netem(["delay", "1ms"]))
        assert err.value.errno == errno.ENOENT
        with pytest.raises(XenError) as err:
            qdisc_delete(dev)
        assert err.value.errno == errno.ENOENT
        q = qdisc_add(dev, parse_netem("delay 20ms 5ms loss 1%".split()))
        assert qdisc_show(dev) == f"qdisc netem {q.handle:x}: root refcnt 2 limit 1000 delay 20ms  5ms loss 1%"
        with pytest.raises(XenError) as err:
            qdisc_add(dev, parse_netem(["delay", "1ms"]))
        assert err.value.errno == errno.EEXIST
        assert qdisc_replace(dev, parse_netem(["rate", "10mbit"])) is q
        assert qdisc_show(dev).endswith("limit 1000 rate 10Mbit")
        qdisc_delete(dev)
        dev.egress([b"x" * 60])
        assert dev.sent == [b"x" * 60]              # straight out again
        assert qdisc_replace(dev, parse_netem(["delay", "1ms"])) is not q
    asyncio.run(main())


def test_a_replaced_device_takes_the_qdisc_and_its_counters_on():
    async def main():
        old, new = Wire("veth1.0"), Wire("veth1.0")
        qdisc_add(old, parse_netem("duplicate 100%".split()))
        old.egress([bytes(60)])
        move_qdisc(old, new)
        assert new.qdisc is not None and new.qdisc.config == old.qdisc.config
        assert new.stats()["qdisc_duplicated"] == 1
    asyncio.run(main())
