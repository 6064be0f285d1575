"""Where xenbr0 once differed from Linux's bridge (STP off, default flags),
one test per difference, each asserting what the kernel does
(net/bridge/br_input.c, br_fdb.c, br_forward.c, br_stp_if.c). The same
scenarios run through a real Linux bridge in tests/integration/
test_bridge_vs_linux.py."""
import errno

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


def ports(out):
    return sorted(name for name, _ in out)


@pytest.fixture
def clock():
    return ManualClock(100.0)


def bridge(clock, **kw) -> Bridge:
    br = Bridge("xenbr0", clock=clock, **kw)
    for name in ("p1", "p2", "p3"):
        br.add_port(name)
    return br


def test_1_bridge_group_address_floods_while_stp_is_off(clock):
    br = bridge(clock)
    out = br.forward("p1", frame(bytes.fromhex("0180c2000000"), mac(1)))
    assert ports(out) == ["p2", "p3"]
    assert br.fdb.get(mac(1)).port == "p1"
    # 01:80:c2:00:00:02..0f stay at the bridge, unless group_fwd_mask lets one through.
    assert br.forward("p1", frame(bytes.fromhex("0180c200000e"), mac(1))) == []
    br.set_group_fwd_mask(1 << 0x0E)
    assert ports(br.forward("p1", frame(bytes.fromhex("0180c200000e"), mac(1)))) == ["p2", "p3"]
    for restricted in (0x1, 0x2, 0x4):
        with pytest.raises(XenError) as err:
            br.set_group_fwd_mask(restricted)
        assert err.value.errno == errno.EINVAL


def test_2_pause_frames_are_dropped_before_learning(clock):
    br = bridge(clock)
    assert br.forward("p1", frame(bytes.fromhex("0180c2000001"), mac(1))) == []
    assert br.fdb.get(mac(1)) is None
    assert br.drops == {"pause": 1}


def test_3_a_disabled_port_keeps_its_entries_and_unicast_to_them_is_dropped(clock):
    br = bridge(clock)
    br.forward("p3", frame(BCAST, mac(3)))
    br.set_port_flags("p3", state="disabled")
    assert br.fdb.get(mac(3)).port == "p3"
    assert br.forward("p1", frame(mac(3), mac(1))) == []
    assert br.drops["egress_disabled"] == 1
    br.set_port_flags("p3", state="forwarding")
    assert ports(br.forward("p1", frame(mac(3), mac(1)))) == ["p3"]
    # Losing the link is what flushes (br_stp_disable_port).
    br.set_carrier("p3", False)
    assert br.fdb.get(mac(3)) is None and br.ports["p3"].state == "disabled"
    with pytest.raises(XenError) as err:
        br.set_port_flags("p3", state="forwarding")
    assert err.value.errno == errno.ENETDOWN


def test_4_a_static_entry_moves_with_its_station_unless_sticky(clock):
    br = bridge(clock)
    br.fdb_add(mac(5), "p3", "static")
    br.forward("p1", frame(BCAST, mac(5)))
    entry = br.fdb.get(mac(5))
    assert entry.port == "p1" and entry.static
    assert ports(br.forward("p2", frame(mac(5), mac(2)))) == ["p1"]
    br.fdb_add(mac(6), "p3", "static", sticky=True)
    br.forward("p1", frame(BCAST, mac(6)))
    assert br.fdb.get(mac(6)).port == "p3"


def test_5_ageing_time_zero_keeps_no_learned_entry(clock):
    br = bridge(clock)
    br.forward("p2", frame(BCAST, mac(2)))
    br.fdb_add(mac(9), "p3", "static")
    br.set_ageing(0)
    assert br.fdb.get(mac(2)) is None
    br.forward("p2", frame(BCAST, mac(2)))
    assert br.fdb.get(mac(2)) is None
    assert ports(br.forward("p1", frame(mac(2), mac(1)))) == ["p2", "p3"]     # a hub
    assert ports(br.forward("p1", frame(mac(9), mac(1)))) == ["p3"]           # statics stay


def test_6_a_full_fdb_learns_nothing_more_and_evicts_nothing(clock):
    br = bridge(clock, max_learned=2)
    br.fdb_add(mac(9), "p3", "static")                 # does not count toward the limit
    br.forward("p1", frame(BCAST, mac(1)))
    br.forward("p1", frame(BCAST, mac(11)))
    br.forward("p2", frame(BCAST, mac(2)))
    assert {e.mac for e in br.fdb} == {mac(1), mac(11), mac(9)}
    assert br.fdb.counters["fdb_full"] == 1 and br.fdb.counters["evicted"] == 0
    assert ports(br.forward("p1", frame(mac(2), mac(1)))) == ["p2", "p3"]     # still reachable
    br.forward("p2", frame(BCAST, mac(1)))             # a known station still moves
    assert br.fdb.get(mac(1)).port == "p2"


def test_6_ovs_policy_evicts_from_the_busiest_port(clock):
    br = bridge(clock, max_learned=2, fdb_policy="ovs")
    br.forward("p1", frame(BCAST, mac(1)))
    clock.now += 1
    br.forward("p1", frame(BCAST, mac(11)))
    br.forward("p2", frame(BCAST, mac(2)))
    assert {e.mac for e in br.fdb} == {mac(11), mac(2)}
    assert br.fdb.counters["evicted"] == 1


def test_7_flood_mcast_flood_and_bcast_flood_are_separate(clock):
    br = bridge(clock)
    br.set_port_flags("p3", flood=False)
    assert ports(br.forward("p1", frame(mac(99), mac(1)))) == ["p2"]
    assert ports(br.forward("p1", frame(MCAST, mac(1)))) == ["p2", "p3"]
    assert ports(br.forward("p1", frame(BCAST, mac(1)))) == ["p2", "p3"]
    br.set_port_flags("p3", flood=True, mcast_flood=False)
    assert ports(br.forward("p1", frame(MCAST, mac(1)))) == ["p2"]
    assert ports(br.forward("p1", frame(BCAST, mac(1)))) == ["p2", "p3"]
    br.set_port_flags("p3", mcast_flood=True, bcast_flood=False)
    assert ports(br.forward("p1", frame(BCAST, mac(1)))) == ["p2"]
    assert ports(br.forward("p1", frame(mac(98), mac(1)))) == ["p2", "p3"]
