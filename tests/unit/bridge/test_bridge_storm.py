"""Storm control: a per-port token bucket on flooded frames (broadcast,
multicast, unknown unicast), and the broadcast/multicast counters."""
import pytest

from xenlab.bridge.core import Bridge
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError

BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e") + n.to_bytes(3, "big")


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + bytes(46)


def bridge(clock, rate=10.0, burst=None) -> Bridge:
    br = Bridge("xenbr0", clock=clock, flood_rate=rate, flood_burst=burst)
    for name in ("vif1.0", "vif2.0", "vif3.0"):
        br.add_port(name)
    return br


def test_a_port_floods_its_burst_then_its_rate_and_the_rest_is_counted():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=10.0, burst=5)
    out = br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 20)
    assert len(out["vif2.0"]) == 5 and len(out["vif3.0"]) == 5
    port = br.ports["vif1.0"]
    assert port.drops["storm_control"] == 15 and br.drops["storm_control"] == 15
    assert port.counters["rx_broadcast"] == 20 and port.counters["rx_packets"] == 20
    clock.now += 0.5                                   # 5 more frames' worth of credit
    out = br.forward_batch("vif1.0", [frame(MCAST, mac(1))] * 20)
    assert len(out["vif2.0"]) == 5 and port.counters["rx_multicast"] == 20
    clock.now += 100                                   # credit never exceeds the burst
    out = br.forward_batch("vif1.0", [frame(mac(77), mac(1))] * 20)     # unknown unicast
    assert len(out["vif2.0"]) == 5
    assert br.counters["rx"] == br.counters["forwarded"] + sum(br.drops.values())


def test_one_port_storming_leaves_the_others_their_own_budget_and_unicast():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=10.0)
    br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 1000)
    assert ports(br.forward("vif2.0", frame(BCAST, mac(2)))) == ["vif1.0", "vif3.0"]
    # Known unicast is never limited.
    out = br.forward_batch("vif1.0", [frame(mac(2), mac(1))] * 100)
    assert len(out["vif2.0"]) == 100


def ports(outputs):
    return [p for p, _ in outputs]


def test_no_limit_by_default_and_the_limit_can_change():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=0)
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 500)["vif2.0"]) == 500
    br.set_flood_limit(3)
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 10)["vif2.0"]) == 3
    with pytest.raises(XenError):
        br.set_flood_limit(-1)
    with pytest.raises(XenError):
        br.set_flood_limit(5, 0.5)


def test_the_bucket_refills_at_the_rate_in_proportion_to_the_time_waited():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=8.0, burst=5)       # times below are exact in binary
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 6)["vif2.0"]) == 5
    assert br.forward("vif1.0", frame(BCAST, mac(1))) == []           # empty at this instant
    clock.now += 0.3125                                                # 2.5 frames' worth
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 5)["vif2.0"]) == 2
    clock.now += 0.0625                                                # 0.5 left + 0.5 = 1
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 5)["vif2.0"]) == 1
    assert br.ports["vif1.0"].drops["storm_control"] == 1 + 1 + 3 + 4


def test_a_fresh_bucket_is_full_whatever_the_clock_says():
    clock = ManualClock(10.0)
    clock.now = 0.0
    br = bridge(clock, rate=2.0, burst=3)
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 5)["vif2.0"]) == 3


def test_a_new_limit_starts_every_port_with_a_full_bucket():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=10.0, burst=2)
    br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 5)
    assert br.forward("vif1.0", frame(BCAST, mac(1))) == []
    br.set_flood_limit(10.0, 2)
    assert (br.flood_rate, br.flood_burst) == (10.0, 2.0)
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 5)["vif2.0"]) == 2


def test_the_burst_defaults_to_one_seconds_worth():
    clock = ManualClock(10.0)
    br = bridge(clock, rate=4.0)
    assert br.flood_burst == 4.0
    assert len(br.forward_batch("vif1.0", [frame(BCAST, mac(1))] * 9)["vif2.0"]) == 4


@pytest.mark.parametrize("rate, burst", [(0, 0), (0, None), (1, 1), (0.5, 1), (1e9, 1e9)])
def test_flood_limits_on_the_edge_are_accepted(rate, burst):
    br = bridge(ManualClock(10.0), rate=rate, burst=burst)
    assert (br.flood_rate, br.flood_burst) == (float(rate), float(rate if burst is None else burst))


@pytest.mark.parametrize("rate, burst", [(-0.001, None), (float("inf"), 1), (1, float("inf")),
                                         (2, 0.999), (0, -1), (float("nan"), 1)])
def test_flood_limits_past_the_edge_are_refused(rate, burst):
    import errno
    br = bridge(ManualClock(10.0), rate=3.0)
    with pytest.raises(XenError) as err:
        br.set_flood_limit(rate, burst)
    assert err.value.errno == errno.EINVAL and "flood limit" in str(err.value)
    assert (br.flood_rate, br.flood_burst) == (3.0, 3.0)
