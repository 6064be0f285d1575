"""The forwarding decision of one bridge: flooding, known unicast, no
reflection, hairpin, port flags and states, drops by reason."""
import errno

import pytest

from xenlab.bridge.core import Bridge
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e") + n.to_bytes(3, "big")


def frame(dst: bytes, src: bytes, size: int = 60) -> bytes:
    head = dst + src + b"\x08\x06"
    return head + bytes(max(0, size - len(head)))


@pytest.fixture
def clock():
    return ManualClock(50.0)


@pytest.fixture
def br(clock):
    bridge = Bridge("xenbr0", clock=clock)
    for name in ("vif1.0", "vif2.0", "vif3.0"):
        bridge.add_port(name)
    return bridge


def ports(outputs):
    return [p for p, _ in outputs]


def test_broadcast_floods_to_every_other_port(br):
    f = frame(BCAST, mac(1))
    out = br.forward("vif1.0", f)
    assert ports(out) == ["vif2.0", "vif3.0"] and all(data is f for _, data in out)
    assert br.counters["flooded"] == 1 and br.counters["tx"] == 2


def test_multicast_and_unknown_unicast_flood_too(br):
    assert ports(br.forward("vif1.0", frame(bytes.fromhex("01005e000001"), mac(1)))) == ["vif2.0", "vif3.0"]
    assert ports(br.forward("vif1.0", frame(mac(99), mac(1)))) == ["vif2.0", "vif3.0"]


def test_known_unicast_goes_to_its_port_only(br):
    br.forward("vif2.0", frame(BCAST, mac(2)))
    assert ports(br.forward("vif1.0", frame(mac(2), mac(1)))) == ["vif2.0"]
    assert ports(br.forward("vif2.0", frame(mac(1), mac(2)))) == ["vif1.0"]
    assert br.counters["unicast"] == 2
    assert br.fdb.get(mac(2)).used == br.clock()


def test_a_frame_never_goes_back_out_its_ingress_port(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif1.0", frame(BCAST, mac(11)))
    # Both stations behind vif1.0: the frame between them stays there.
    assert br.forward("vif1.0", frame(mac(11), mac(1))) == []
    assert br.drops["same_port"] == 1 and br.ports["vif1.0"].drops["same_port"] == 1


def test_hairpin_sends_back_out_the_ingress_port(br):
    br.set_port_flags("vif1.0", hairpin=True)
    assert ports(br.forward("vif1.0", frame(BCAST, mac(1)))) == ["vif1.0", "vif2.0", "vif3.0"]
    br.forward("vif1.0", frame(BCAST, mac(11)))
    assert ports(br.forward("vif1.0", frame(mac(11), mac(1)))) == ["vif1.0"]


def test_nowhere_to_flood_is_a_named_drop(clock):
    br = Bridge("br0", clock=clock)
    br.add_port("alone")
    assert br.forward("alone", frame(BCAST, mac(1))) == []
    assert br.drops == {"no_egress": 1}


def test_learning_off_learns_nothing(br):
    br.set_port_flags("vif1.0", learning=False)
    br.forward("vif1.0", frame(BCAST, mac(1)))
    assert br.fdb.get(mac(1)) is None
    assert ports(br.forward("vif2.0", frame(mac(1), mac(2)))) == ["vif1.0", "vif3.0"]


def test_a_moved_station_is_followed(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif3.0", frame(BCAST, mac(1)))
    assert ports(br.forward("vif2.0", frame(mac(1), mac(2)))) == ["vif3.0"]
    assert br.fdb.counters["moved"] == 1


def test_sticky_entries_win_over_learning(br):
    br.fdb_add(mac(5), "vif3.0", "static", sticky=True)
    br.forward("vif1.0", frame(BCAST, mac(5)))       # someone claims mac(5) on vif1.0
    assert ports(br.forward("vif2.0", frame(mac(5), mac(2)))) == ["vif3.0"]
    assert br.fdb.counters["sticky_conflict"] == 1


def test_aged_out_destination_floods_again(br, clock):
    br.forward("vif2.0", frame(BCAST, mac(2)))
    clock.now += 300
    assert ports(br.forward("vif1.0", frame(mac(2), mac(1)))) == ["vif2.0", "vif3.0"]
    assert br.fdb.counters["aged"] == 1


@pytest.mark.parametrize("size,reason", [(0, "runt"), (13, "runt"), (65536, "oversize")])
def test_bad_lengths_are_dropped(br, size, reason):
    f = (BCAST + mac(1) + bytes(size))[:size]
    assert br.forward("vif1.0", f) == []
    assert br.drops == {reason: 1}


def test_a_bare_header_is_a_frame(br):
    assert ports(br.forward("vif1.0", BCAST + mac(1) + b"\x08\x00")) == ["vif2.0", "vif3.0"]


@pytest.mark.parametrize("src", [BCAST, bytes.fromhex("01005e000001"), bytes(6)])
def test_bad_source_addresses_are_dropped(br, src):
    assert br.forward("vif1.0", frame(BCAST, src)) == []
    assert br.drops == {"bad_src_mac": 1} and len(br.fdb) == 0


@pytest.mark.parametrize("last", [0x02, 0x03, 0x0E, 0x0F])
def test_link_local_group_is_not_forwarded_but_source_is_learned(br, last):
    dst = bytes.fromhex("0180c20000") + bytes([last])
    assert br.forward("vif1.0", frame(dst, mac(1))) == []
    assert br.drops == {"link_local": 1}
    assert br.fdb.get(mac(1)) is not None


def test_0180c2000010_is_ordinary_multicast(br):
    assert len(br.forward("vif1.0", frame(bytes.fromhex("0180c2000010"), mac(1)))) == 2


def test_disabled_ports_neither_receive_nor_send(br):
    br.forward("vif3.0", frame(BCAST, mac(3)))
    br.set_port_flags("vif3.0", state="disabled")
    assert br.forward("vif3.0", frame(BCAST, mac(3))) == []
    assert br.drops["port_disabled"] == 1
    assert ports(br.forward("vif1.0", frame(BCAST, mac(1)))) == ["vif2.0"]
    br.add_static(mac(7), "vif3.0")
    assert br.forward("vif1.0", frame(mac(7), mac(1))) == []
    assert br.drops["egress_disabled"] == 1
    br.set_port_flags("vif3.0", state="forwarding")
    assert ports(br.forward("vif1.0", frame(mac(7), mac(1)))) == ["vif3.0"]


def test_port_counters_and_conservation(br):
    frames = [frame(BCAST, mac(1)), frame(mac(1), mac(2), 100), b"short", frame(mac(2), mac(1))]
    br.forward("vif1.0", frames[0])
    br.forward("vif2.0", frames[1])
    br.forward("vif2.0", frames[2])
    br.forward("vif1.0", frames[3])
    p1, p2, p3 = (br.ports[n] for n in ("vif1.0", "vif2.0", "vif3.0"))
    assert p1.stats() == {"rx_packets": 2, "rx_bytes": 120, "tx_packets": 1, "tx_bytes": 100}
    assert p2.stats() == {"rx_packets": 2, "rx_bytes": 105, "tx_packets": 2, "tx_bytes": 120}
    assert p3.stats()["tx_packets"] == 1
    assert p2.drops == {"runt": 1}
    assert br.counters["rx"] == 4 and br.counters["forwarded"] == 3
    assert br.counters["rx"] == br.counters["forwarded"] + sum(br.drops.values())


def test_forward_batch_groups_outputs_per_port(br):
    br.forward("vif2.0", frame(BCAST, mac(2)))
    batch = [frame(BCAST, mac(1)), frame(mac(2), mac(1)), frame(mac(2), mac(1), 70)]
    out = br.forward_batch("vif1.0", batch)
    assert out == {"vif2.0": batch, "vif3.0": batch[:1]}


def test_ports_add_and_delete(br):
    with pytest.raises(XenError) as err:
        br.add_port("vif1.0")
    assert err.value.errno == errno.EEXIST
    for bad in ("", "a/b", "has space", "x" * 16, ".."):
        with pytest.raises(XenError) as err:
            br.add_port(bad)
        assert err.value.errno == errno.EINVAL
    br.forward("vif2.0", frame(BCAST, mac(2)))
    br.add_static(mac(9), "vif2.0")
    br.delete_port("vif2.0")                          # every entry on it goes, static too
    assert br.fdb.get(mac(2)) is None and br.fdb.get(mac(9)) is None
    assert br.add_port("vif9.0").port_no == 2         # lowest free number
    with pytest.raises(XenError) as err:
        br.forward("vif2.0", frame(BCAST, mac(2)))
    assert err.value.errno == errno.ENOENT


def test_refusals_name_the_problem(br):
    with pytest.raises(XenError, match="no port named 'nope'") as err:
        br.set_port_flags("nope", learning=False)
    assert err.value.errno == errno.ENOENT
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif1.0", state="stalled")
    assert err.value.errno == errno.EINVAL
    with pytest.raises(XenError) as err:
        br.add_static(mac(1), "nope")
    assert err.value.errno == errno.ENOENT
    with pytest.raises(XenError):
        Bridge("bad/name")


def test_bridge_id_is_the_lowest_port_address(clock):
    br = Bridge("xenbr0", clock=clock)
    assert br.bridge_id == "8000.000000000000"
    br.add_port("a", bytes.fromhex("feffffffffff"))
    br.add_port("b", bytes.fromhex("00163e000005"))
    assert br.bridge_id == "8000.00163e000005"
    assert Bridge("b2", mac=bytes.fromhex("020000000001"), clock=clock).bridge_id == "8000.020000000001"
