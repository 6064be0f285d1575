"""802.1Q VLAN filtering on the core, as Linux's vlan_filtering 1: PVID and
untagged egress, tagged trunks, membership at ingress and egress, the FDB
keyed by (MAC, VLAN)."""
import errno

import pytest

from xenlab.bridge.core import Bridge, classify
from xenlab.xen.errors import XenError
from xenlab.xen.netconf import parse_vlan

BCAST = b"\xff" * 6


class Clock:
    now = 10.0

    def __call__(self):
        return self.now


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e") + n.to_bytes(3, "big")


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x06" + bytes(46)


def tagged(f: bytes, vid: int, pcp: int = 0) -> bytes:
    return f[:12] + b"\x81\x00" + ((pcp << 13) | vid).to_bytes(2, "big") + f[12:]


@pytest.fixture
def br():
    """a, b in VLAN 10 (access), c in VLAN 20, trunk tagged in 10 and 20."""
    bridge = Bridge("xenbr0", clock=Clock())
    for name in ("a", "b", "c", "trunk"):
        bridge.add_port(name)
    bridge.set_vlan_filtering(True)
    bridge.set_port_vlans("a", parse_vlan("10"))
    bridge.set_port_vlans("b", parse_vlan("10"))
    bridge.set_port_vlans("c", parse_vlan("20"))
    bridge.set_port_vlans("trunk", parse_vlan("1p/10/20"))
    return bridge


def out(br, port, f):
    return {name: data for name, data in br.forward(port, f)}


def test_every_port_starts_in_vlan_1_as_pvid_untagged():
    br = Bridge("xenbr0", clock=Clock())
    p = br.add_port("p")
    assert (p.vlans, p.pvid) == ({1: True}, 1)


def test_access_ports_reach_their_vlan_only_and_the_trunk_sees_tags(br):
    f = frame(BCAST, mac(1))
    got = out(br, "a", f)
    assert set(got) == {"b", "trunk"}
    assert got["b"] == f                                   # untagged on an access port
    assert got["trunk"] == tagged(f, 10)                   # tagged on the trunk
    assert set(out(br, "c", frame(BCAST, mac(3)))) == {"trunk"}


def test_the_fdb_is_per_vlan(br):
    br.forward("a", frame(BCAST, mac(1)))
    br.forward("trunk", tagged(frame(BCAST, mac(1)), 20))  # the same MAC in VLAN 20, elsewhere
    assert br.fdb.get(mac(1), 10).port == "a" and br.fdb.get(mac(1), 20).port == "trunk"
    assert br.fdb.counters["moved"] == 0
    # Unicast from c (VLAN 20) to mac(1) goes to the trunk, tagged 20: not to a.
    assert out(br, "c", frame(mac(1), mac(3))) == {"trunk": tagged(frame(mac(1), mac(3)), 20)}


def test_tagged_frames_from_the_trunk_are_untagged_to_access_ports(br):
    f = frame(BCAST, mac(9))
    assert out(br, "trunk", tagged(f, 10, pcp=5)) == {"a": f, "b": f}


def test_ingress_filtering(br):
    assert br.forward("a", tagged(frame(BCAST, mac(1)), 20)) == []      # a is not in 20
    assert br.forward("trunk", tagged(frame(BCAST, mac(9)), 30)) == []  # nobody's VLAN
    br.vlan_delete("b", 10)                                             # b: no VLAN, no PVID
    assert br.forward("b", frame(BCAST, mac(2))) == []
    assert br.drops["vlan_ingress"] == 3


def test_priority_tagged_frames_take_the_pvid_and_keep_their_priority(br):
    f = frame(BCAST, mac(1))
    assert out(br, "a", tagged(f, 0, pcp=6))["trunk"] == tagged(f, 10, pcp=6)


def test_known_unicast_outside_the_vlan_is_dropped(br):
    br.forward("c", frame(BCAST, mac(3)))
    br.fdb.add(mac(3), "c", "static", vid=10)      # an entry in 10 pointing at a port not in 10
    assert br.forward("a", frame(mac(3), mac(1))) == []
    assert br.drops["vlan_egress"] == 1


def test_vlan_add_and_del_as_bridge_vlan(br):
    br.vlan_add("c", 10, pvid=True, untagged=True)
    assert br.ports["c"].pvid == 10 and br.ports["c"].vlans == {20: True, 10: True}
    br.vlan_add("c", 10)                          # again, without pvid: no longer the PVID, tagged
    assert br.ports["c"].pvid == 0 and br.ports["c"].vlans[10] is False
    br.vlan_add("c", 100, 102)
    assert {100, 101, 102} <= set(br.ports["c"].vlans)
    with pytest.raises(XenError) as err:
        br.vlan_add("c", 4095)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(XenError) as err:
        br.vlan_delete("c", 300)
    assert err.value.errno == errno.ENOENT


def test_without_filtering_tags_are_payload():
    br = Bridge("xenbr0", clock=Clock())
    for name in ("a", "b"):
        br.add_port(name)
    f = tagged(frame(BCAST, mac(1)), 30)
    assert out(br, "a", f) == {"b": f}
    assert br.fdb.get(mac(1)).vid == 0


def test_classify_reads_the_tag():
    br = Bridge("x", clock=Clock())
    p = br.add_port("p")
    f = frame(BCAST, mac(1))
    assert classify(p, f) == (1, b"\x00\x01", f)
    assert classify(p, tagged(f, 7)) == (0, b"\x00\x07", f)     # not a member of 7
