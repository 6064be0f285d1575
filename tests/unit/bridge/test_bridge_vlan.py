"""802.1Q VLAN filtering on the core, as Linux's vlan_filtering 1: PVID and
untagged egress, tagged trunks, membership at ingress and egress, the FDB
keyed by (MAC, VLAN)."""
import errno

import pytest

from xenlab.bridge.core import Bridge, classify
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError
from xenlab.xen.netconf import parse_vlan

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e") + n.to_bytes(3, "big")


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x06" + bytes(46)


def tagged(f: bytes, vid: int, pcp: int = 0) -> bytes:
    return f[:12] + b"\x81\x00" + ((pcp << 13) | vid).to_bytes(2, "big") + f[12:]


@pytest.fixture
def br():
    """a, b in VLAN 10 (access), c in VLAN 20, trunk tagged in 10 and 20."""
    bridge = Bridge("xenbr0", clock=ManualClock(10.0))
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
    br = Bridge("xenbr0", clock=ManualClock(10.0))
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
    br = Bridge("xenbr0", clock=ManualClock(10.0))
    for name in ("a", "b"):
        br.add_port(name)
    f = tagged(frame(BCAST, mac(1)), 30)
    assert out(br, "a", f) == {"b": f}
    assert br.fdb.get(mac(1)).vid == 0


def test_classify_reads_the_tag():
    br = Bridge("x", clock=ManualClock(10.0))
    p = br.add_port("p")
    f = frame(BCAST, mac(1))
    assert classify(p, f) == (1, b"\x00\x01", f)
    assert classify(p, tagged(f, 7)) == (0, b"\x00\x07", f)     # not a member of 7


def test_deleting_vlans_flushes_what_the_port_learned_in_them_only(br):
    br.vlan_add("a", 20)
    br.forward("a", frame(BCAST, mac(1)))                         # learned in 10 (a's PVID)
    br.forward("a", tagged(frame(BCAST, mac(2)), 20))
    br.forward("b", frame(BCAST, mac(3)))                         # b, VLAN 10
    br.vlan_delete("a", 20)
    assert br.fdb.get(mac(2), 20) is None and br.fdb.get(mac(1), 10).port == "a"
    assert br.fdb.get(mac(3), 10).port == "b" and 20 not in br.ports["a"].vlans
    assert br.ports["a"].pvid == 10
    br.vlan_delete("a", 10)
    assert br.ports["a"].pvid == 0 and br.fdb.get(mac(1), 10) is None


def test_vlan_ranges_are_checked_at_both_ends(br):
    for args, words in (((0,), "VLAN id 0 is outside 1..4094"), ((4095,), "VLAN id 4095"),
                        ((10, 4095), "VLAN id 4095"), ((10, 5), "VLAN range 10-5 goes down"),
                        ((True,), "VLAN id True")):
        with pytest.raises(XenError) as err:
            br.vlan_add("c", *args)
        assert err.value.errno == errno.EINVAL and words in err.value.message, args
    with pytest.raises(XenError) as err:
        br.vlan_add("c", 100, 101, pvid=True)
    assert err.value.errno == errno.EINVAL and err.value.message == "only one VLAN can be the PVID"
    assert br.ports["c"].vlans == {20: True}                      # nothing half-added
    br.vlan_add("c", 1, 0)                                        # an end of 0: one VLAN
    br.vlan_add("c", 4094, 4094, pvid=True)
    assert {1, 4094} <= set(br.ports["c"].vlans) and br.ports["c"].pvid == 4094
    with pytest.raises(XenError) as err:
        br.vlan_delete("c", 1, 3)                                 # 2 and 3 are not there
    assert err.value.errno == errno.ENOENT and err.value.message == "c is not a member of VLAN 2"
    assert 1 in br.ports["c"].vlans


def test_set_port_vlans_replaces_them_all_and_refuses_a_bad_id(br):
    from xenlab.xen.netconf import VlanMember
    br.set_port_vlans("c", [VlanMember(5, False, False), VlanMember(6, True, True)])
    assert (br.ports["c"].vlans, br.ports["c"].pvid) == ({5: False, 6: True}, 6)
    br.set_port_vlans("c", [VlanMember(7, False, True)])
    assert (br.ports["c"].vlans, br.ports["c"].pvid) == ({7: True}, 0)
    with pytest.raises(XenError) as err:
        br.set_port_vlans("c", [VlanMember(4095, True, True)])
    assert err.value.errno == errno.EINVAL and br.ports["c"].vlans == {7: True}


def test_turning_filtering_on_or_off_flushes_only_on_a_change(br):
    br.forward("a", frame(BCAST, mac(1)))
    br.set_vlan_filtering(True)
    assert br.fdb.get(mac(1), 10) is not None
    br.set_vlan_filtering(0)
    assert not br.vlan_filtering and len(br.fdb) == 0


def test_a_high_pvid_is_tagged_whole_and_a_short_tagged_frame_is_untagged():
    br = Bridge("x", clock=ManualClock(10.0))
    p = br.add_port("p")
    br.vlan_add("p", 0x123, pvid=True)
    f = frame(BCAST, mac(1))
    assert classify(p, f) == (0x123, b"\x01\x23", f)
    assert classify(p, tagged(f, 0, pcp=7)) == (0x123, b"\xe1\x23", f)
    short = f[:12] + b"\x81\x00" + b"\x00"                       # 15 bytes: no whole tag
    assert classify(p, short) == (0x123, b"\x01\x23", short)
    exact = f[:12] + b"\x81\x00\x00\x05" + b"\x08\x06"            # 18 bytes: a tag, VID 5
    assert classify(p, exact)[0] == 0 and classify(p, exact)[1] == b"\x00\x05"
