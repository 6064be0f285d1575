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


def test_a_stream_in_one_batch_counts_each_frame_and_each_conflict(br, clock):
    """forward_batch decides a stream (the same addresses again) once,
    where deciding again would change nothing; each frame still counts,
    and a source that conflicts is decided, and counted, every time."""
    br.forward("vif2.0", frame(BCAST, mac(2)))
    stream = [frame(mac(2), mac(1), 60 + i) for i in range(3)]
    assert br.forward_batch("vif1.0", stream) == {"vif2.0": stream}
    assert (br.counters["unicast"], br.ports["vif1.0"].counters["rx_packets"],
            br.ports["vif2.0"].counters["tx_packets"]) == (3, 3, 3)
    # a runt in the stream is still dropped as one
    assert br.forward_batch("vif1.0", [stream[0], stream[0][:13], stream[0]]) == \
        {"vif2.0": [stream[0], stream[0]]}
    assert br.drops == {"runt": 1}
    # mac(4) is sticky on vif3.0: every frame from it on vif1.0 is a conflict
    br.fdb.add(mac(4), "vif3.0", state="dynamic", sticky=True)
    br.forward_batch("vif1.0", [frame(mac(2), mac(4))] * 3)
    assert br.fdb.counters["sticky_conflict"] == 3
    # mac(5) and mac(6) are the bridge's own (permanent, one of them on the
    # ingress port): so is every frame from them
    br.fdb.add(mac(5), "vif3.0", state="permanent")
    br.fdb.add(mac(6), "vif1.0", state="permanent")
    clock.now += 1
    br.forward_batch("vif1.0", [frame(mac(2), mac(5))] * 3 + [frame(mac(2), mac(6))] * 3)
    assert br.fdb.counters["local_conflict"] == 6


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


# -- the contract, field by field and on both sides of each bound ------------

def test_deleting_a_port_flushes_only_that_ports_entries(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif2.0", frame(BCAST, mac(2)))
    br.add_static(mac(9), "vif2.0")
    br.add_static(mac(8), "vif3.0")
    br.fdb.pop_events()
    br.delete_port("vif2.0")
    assert {e.mac for e in br.fdb} == {mac(1), mac(8)}
    assert sorted((e.kind, e.mac, e.port) for e in br.fdb.pop_events()) == [
        ("flush", mac(2), "vif2.0"), ("flush", mac(9), "vif2.0")]
    assert ports(br.forward("vif3.0", frame(mac(1), mac(3)))) == ["vif1.0"]


def test_port_events_carry_the_port_as_it_was(br, clock):
    br.pop_port_events()
    clock.now = 60.0
    added = br.add_port("vif4.0", mac(4))
    clock.now = 61.0
    br.set_port_flags("vif4.0", hairpin=True)
    clock.now = 62.0
    br.delete_port("vif4.0")
    events = br.pop_port_events()
    assert [(e.kind, e.bridge, e.port.name, e.port.port_no, e.port.mac, e.port.hairpin, e.at)
            for e in events] == [("new", "xenbr0", "vif4.0", 4, mac(4), False, 60.0),
                                 ("new", "xenbr0", "vif4.0", 4, mac(4), True, 61.0),
                                 ("deleted", "xenbr0", "vif4.0", 4, mac(4), True, 62.0)]
    assert all(e.port is not added and e.port.counters is None and e.port.drops is None
               for e in events)
    assert added.counters is not None and br.pop_port_events() == []


def test_has_events_says_whether_anything_waits(clock):
    br = Bridge("br0", clock=clock)
    assert not br.has_events
    br.add_port("a")
    assert br.has_events
    br.pop_port_events()
    assert not br.has_events
    br.forward("a", frame(BCAST, mac(1)))
    assert br.has_events and br.fdb.has_events
    br.fdb.pop_events()
    assert not br.has_events


def test_stats_gathers_the_bridge_drop_and_fdb_counters(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif2.0", frame(mac(1), mac(2)))
    br.forward("vif1.0", b"runt")
    br.forward("vif1.0", frame(mac(2), mac(11)))
    br.forward("vif1.0", frame(mac(11), mac(1)))
    assert br.stats() == {
        "rx": 5, "forwarded": 3, "flooded": 1, "unicast": 2, "tx": 4,
        "drop_runt": 1, "drop_same_port": 1,
        "fdb_learned": 3, "fdb_moved": 0, "fdb_aged": 0, "fdb_evicted": 0, "fdb_fdb_full": 0,
        "fdb_flushed": 0, "fdb_sticky_conflict": 0, "fdb_local_conflict": 0, "fdb_events_lost": 0,
        "fdb_entries": 3}


def test_set_ageing_applies_to_the_fdb_at_once(br, clock):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    clock.now += 20
    br.set_ageing(10)
    assert br.fdb.ageing == 10.0 and br.fdb.get(mac(1)) is None
    with pytest.raises(XenError) as err:
        br.set_ageing(-1)
    assert err.value.errno == errno.EINVAL and br.fdb.ageing == 10.0


def test_delete_static_removes_only_an_administered_entry(br):
    br.add_static(mac(7), "vif3.0")
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.delete_static(mac(7))
    assert br.fdb.get(mac(7)) is None
    with pytest.raises(XenError) as err:
        br.delete_static(mac(1))
    assert err.value.errno == errno.ENOENT and br.fdb.get(mac(1)) is not None


def test_fdb_management_checks_the_port(br):
    entry = br.fdb_add(mac(5), "vif2.0", "dynamic", vid=0)
    assert (entry.port, entry.static, entry.learned) == ("vif2.0", False, False)
    with pytest.raises(XenError) as err:
        br.fdb_add(mac(6), "nope")
    assert err.value.errno == errno.ENOENT and br.fdb.get(mac(6)) is None
    with pytest.raises(XenError) as err:
        br.fdb_delete(mac(5), "nope")
    assert err.value.errno == errno.ENOENT and br.fdb.get(mac(5)) is not None
    assert br.fdb_delete(mac(5)).mac == mac(5) and br.fdb.get(mac(5)) is None
    br.fdb_add(mac(5), "vif2.0", replace=True)
    br.fdb_add(mac(5), "vif3.0", replace=True)
    assert br.fdb.get(mac(5)).port == "vif3.0"
    with pytest.raises(XenError) as err:
        br.flush("nope")
    assert err.value.errno == errno.ENOENT


def test_bridge_flush_of_one_port_keeps_static_unless_asked(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif2.0", frame(BCAST, mac(2)))
    br.add_static(mac(9), "vif1.0")
    assert br.flush("vif1.0") == 1
    assert {e.mac for e in br.fdb} == {mac(2), mac(9)}
    assert br.flush("vif1.0", include_static=True) == 1
    assert br.flush() == 1 and len(br.fdb) == 0


@pytest.mark.parametrize("priority", [0, 0xFFFF])
def test_bridge_priority_bounds_are_inclusive(br, priority):
    br.set_priority(priority)
    assert br.priority == priority and br.bridge_id.startswith(f"{priority:04x}.")


@pytest.mark.parametrize("priority", [-1, 0x10000, True, 1.0])
def test_bridge_priority_outside_16_bits_is_erange(br, priority):
    with pytest.raises(XenError) as err:
        br.set_priority(priority)
    assert err.value.errno == errno.ERANGE and br.priority == 0x8000
    assert err.value.message == f"bridge priority {priority!r} is outside 0..65535"


def test_port_priority_and_cost_bounds(br):
    br.set_port_flags("vif1.0", priority=0, cost=1)
    assert (br.ports["vif1.0"].priority, br.ports["vif1.0"].cost) == (0, 1)
    br.set_port_flags("vif1.0", priority=63, cost=65535)
    assert (br.ports["vif1.0"].priority, br.ports["vif1.0"].cost) == (63, 65535)
    for kw in ({"priority": 64}, {"priority": -1}, {"cost": 0}, {"cost": 65536}):
        with pytest.raises(XenError) as err:
            br.set_port_flags("vif1.0", **kw)
        assert err.value.errno == errno.ERANGE, kw
    assert (br.ports["vif1.0"].priority, br.ports["vif1.0"].cost) == (63, 65535)


def test_port_flag_refusals_change_nothing(br):
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif1.0", learning=False, shiny=True)
    assert err.value.errno == errno.EINVAL and "unknown port flag(s): shiny" in str(err.value)
    assert br.ports["vif1.0"].learning is True
    br.set_port_flags("vif1.0", learning=None, flood=0)
    assert br.ports["vif1.0"].learning is True and br.ports["vif1.0"].flood is False


def test_a_port_set_blocking_without_stp_forwards(br):
    br.set_port_flags("vif1.0", state="blocking")
    assert br.ports["vif1.0"].state == "forwarding"
    br.set_port_flags("vif1.0", state="listening")
    assert br.ports["vif1.0"].state == "listening"
    assert br.ports["vif1.0"].counters["state_listening"] == 1
    assert br.forward("vif1.0", frame(BCAST, mac(1))) == [] and br.drops == {"port_blocking": 1}
    br.set_port_flags("vif1.0", state="learning")
    assert br.forward("vif1.0", frame(BCAST, mac(1))) == []
    assert br.drops["port_learning"] == 1 and br.fdb.get(mac(1)).port == "vif1.0"


def test_port_states_belong_to_stp_while_it_runs(br):
    br.set_stp(True)
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif1.0", state="forwarding")
    assert err.value.errno == errno.EBUSY
    br.set_stp(False)
    assert all(p.state == "forwarding" for p in br.ports.values())
    br.set_port_flags("vif1.0", state="disabled")
    assert br.ports["vif1.0"].state == "disabled"


def test_a_port_without_link_can_only_be_disabled(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif2.0", frame(BCAST, mac(2)))
    br.add_static(mac(9), "vif1.0")
    br.pop_port_events()
    port = br.set_carrier("vif1.0", False)
    assert port.state == "disabled" and port.carrier is False
    assert {e.mac for e in br.fdb} == {mac(2), mac(9)}      # learned on it only
    assert [(e.kind, e.port.state, e.port.carrier) for e in br.pop_port_events()] == [
        ("new", "disabled", False)]
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif1.0", state="forwarding")
    assert err.value.errno == errno.ENETDOWN
    br.set_port_flags("vif1.0", state="disabled")
    assert br.set_carrier("vif1.0", False) is port and br.pop_port_events()[-1].port.carrier is False
    br.set_carrier("vif1.0", True)
    assert port.state == "forwarding" and port.carrier is True
    assert [(e.kind, e.port.state) for e in br.pop_port_events()] == [("new", "forwarding")]


def test_set_carrier_to_what_it_is_announces_nothing(br):
    br.pop_port_events()
    br.set_carrier("vif1.0", True)
    assert br.pop_port_events() == []


@pytest.mark.parametrize("mask", [0, 0x8, 0xFFF8])
def test_group_fwd_mask_accepts_the_forwardable_bits(clock, mask):
    br = Bridge("br0", clock=clock, group_fwd_mask=mask)
    assert br.group_fwd_mask == mask


@pytest.mark.parametrize("mask", [1, 2, 4, 0x10000, -1, True, "8"])
def test_group_fwd_mask_refuses_restricted_or_wide_masks(br, mask):
    with pytest.raises(XenError) as err:
        br.set_group_fwd_mask(mask)
    assert err.value.errno == errno.EINVAL and br.group_fwd_mask == 0


def test_a_group_fwd_mask_bit_forwards_that_link_local_group(br):
    br.set_group_fwd_mask(1 << 0x0E)
    lldp = bytes.fromhex("0180c200000e")
    assert ports(br.forward("vif1.0", frame(lldp, mac(1)))) == ["vif2.0", "vif3.0"]
    assert br.forward("vif1.0", frame(bytes.fromhex("0180c2000003"), mac(1))) == []
    assert br.drops == {"link_local": 1}


def test_pause_frames_are_dropped_before_learning(br):
    assert br.forward("vif1.0", frame(bytes.fromhex("0180c2000001"), mac(1))) == []
    assert br.drops == {"pause": 1} and br.fdb.get(mac(1)) is None


def test_the_bridge_group_floods_while_stp_is_off(br):
    assert ports(br.forward("vif1.0", frame(bytes.fromhex("0180c2000000"), mac(1)))) == ["vif2.0", "vif3.0"]


def test_link_local_frames_are_learned_only_on_a_port_that_learns(br):
    dst = bytes.fromhex("0180c2000003")
    br.set_port_flags("vif1.0", learning=False)
    br.forward("vif1.0", frame(dst, mac(1)))
    br.set_port_flags("vif2.0", state="listening")
    br.forward("vif2.0", frame(dst, mac(2)))
    assert len(br.fdb) == 0 and br.drops == {"link_local": 2}
    br.set_port_flags("vif2.0", state="learning")
    br.forward("vif2.0", frame(dst, mac(2)))
    assert br.fdb.get(mac(2)).port == "vif2.0"


def test_a_locked_port_passes_only_sources_it_already_holds(br):
    br.set_port_flags("vif1.0", locked=True)
    assert br.forward("vif1.0", frame(BCAST, mac(1))) == []
    assert br.drops == {"locked": 1} and br.fdb.get(mac(1)) is None
    br.fdb_add(mac(2), "vif2.0")
    assert br.forward("vif1.0", frame(BCAST, mac(2))) == []          # held, but on another port
    br.fdb_add(mac(3), "vif1.0", "permanent")
    assert br.forward("vif1.0", frame(BCAST, mac(3))) == []          # the bridge's own
    assert br.drops == {"locked": 3}
    br.fdb_add(mac(1), "vif1.0")
    assert ports(br.forward("vif1.0", frame(BCAST, mac(1)))) == ["vif2.0", "vif3.0"]


def test_unicast_to_the_bridges_own_address_stops_here(br):
    br.fdb_add(mac(3), "vif3.0", "permanent")
    assert br.forward("vif1.0", frame(mac(3), mac(1))) == []
    assert br.drops == {"local": 1} and br.counters["unicast"] == 0


def test_isolated_ports_reach_only_unisolated_ones(br):
    br.set_port_flags("vif1.0", isolated=True)
    br.set_port_flags("vif2.0", isolated=True)
    assert ports(br.forward("vif1.0", frame(BCAST, mac(1)))) == ["vif3.0"]
    br.forward("vif2.0", frame(mac(99), mac(2)))
    assert br.forward("vif1.0", frame(mac(2), mac(1))) == []
    assert br.drops == {"isolated": 1}
    br.forward("vif3.0", frame(BCAST, mac(3)))
    assert ports(br.forward("vif1.0", frame(mac(3), mac(1)))) == ["vif3.0"]
    assert ports(br.forward("vif3.0", frame(mac(1), mac(3)))) == ["vif1.0"]


@pytest.mark.parametrize("flag, dst", [("flood", mac(99)), ("mcast_flood", bytes.fromhex("01005e000001")),
                                       ("bcast_flood", BCAST)])
def test_each_flood_flag_governs_its_own_kind(br, flag, dst):
    br.set_port_flags("vif2.0", **{flag: False})
    assert ports(br.forward("vif1.0", frame(dst, mac(1)))) == ["vif3.0"]
    others = [(d, k) for k, d in (("flood", mac(98)), ("mcast_flood", bytes.fromhex("01005e000002")),
                                  ("bcast_flood", BCAST)) if k != flag]
    for d, _ in others:
        assert ports(br.forward("vif1.0", frame(d, mac(1)))) == ["vif2.0", "vif3.0"]


def test_broadcast_and_multicast_are_counted_at_the_ingress(br):
    br.forward("vif1.0", frame(BCAST, mac(1)))
    br.forward("vif1.0", frame(bytes.fromhex("01005e000001"), mac(1)))
    br.forward("vif1.0", frame(bytes.fromhex("01005e000001"), mac(1)))
    br.forward("vif1.0", frame(mac(99), mac(1)))
    assert br.ports["vif1.0"].flood_stats() == {"rx_broadcast": 1, "rx_multicast": 2}
    assert br.counters["flooded"] == 4 and br.counters["tx"] == 8


def test_the_bridge_address_ignores_ports_without_one(clock):
    br = Bridge("br0", clock=clock)
    br.add_port("a")
    assert br.mac == bytes(6)
    br.add_port("b", bytes.fromhex("00163e000009"))
    br.add_port("c", bytes.fromhex("00163e000007"))
    assert br.mac == bytes.fromhex("00163e000007")
    with pytest.raises(XenError) as err:
        br.add_port("d", b"\x00" * 5)
    assert err.value.errno == errno.EINVAL and "d" not in br.ports


def test_a_freed_port_number_is_reused_lowest_first(clock):
    br = Bridge("br0", clock=clock)
    for name in "abcd":
        br.add_port(name)
    br.delete_port("b")
    br.delete_port("a")
    assert [br.add_port(n).port_no for n in ("e", "f", "g")] == [1, 2, 5]


def test_fdb_delete_names_the_missing_port_and_keeps_the_vlan(br):
    br.fdb_add(mac(5), "vif2.0", vid=7)
    with pytest.raises(XenError) as err:
        br.fdb_delete(mac(5), "nope", vid=7)
    assert err.value.errno == errno.ENOENT and err.value.message == "xenbr0 has no port named 'nope'"
    with pytest.raises(XenError) as err:
        br.fdb_delete(mac(5), "vif3.0", vid=7)          # there, but on another port
    assert err.value.errno == errno.ENOENT and br.fdb.get(mac(5), 7) is not None
    with pytest.raises(XenError) as err:
        br.fdb_delete(mac(5), "vif2.0")                 # not in VLAN 0
    assert err.value.errno == errno.ENOENT
    assert br.fdb_delete(mac(5), "vif2.0", vid=7).vid == 7 and br.fdb.get(mac(5), 7) is None


def test_the_largest_frame_a_veth_carries_is_forwarded(br):
    f = frame(BCAST, mac(1), 0xFFFF)
    assert ports(br.forward("vif1.0", f)) == ["vif2.0", "vif3.0"]


def test_forward_batch_takes_any_iterable_and_an_empty_one_counts_nothing(br):
    assert br.forward_batch("vif1.0", []) == {}
    assert br.counters["rx"] == 0 and br.ports["vif1.0"].counters["rx_packets"] == 0
    out = br.forward_batch("vif1.0", (frame(BCAST, mac(1)) for _ in range(2)))
    assert {k: len(v) for k, v in out.items()} == {"vif2.0": 2, "vif3.0": 2}
    assert br.counters["rx"] == 2


def test_a_link_local_frame_is_learned_in_the_ports_vlan_only_when_admitted(clock):
    br = Bridge("br0", clock=clock)
    for name in ("a", "b"):
        br.add_port(name)
    br.set_vlan_filtering(True)
    br.vlan_add("a", 7, pvid=True, untagged=True)
    lldp = bytes.fromhex("0180c200000e")
    br.forward("a", frame(lldp, mac(1)))
    assert br.fdb.get(mac(1), 7).port == "a" and br.fdb.get(mac(1)) is None
    br.vlan_delete("b", 1)                               # b admits nothing untagged
    br.forward("b", frame(lldp, mac(2)))
    assert len(br.fdb) == 1 and br.drops["link_local"] == 2


def test_stopping_stp_ends_the_topology_change_and_keeps_ports_without_link_down(clock):
    br = Bridge("br0", clock=clock, mac=bytes.fromhex("020000000001"))
    br.add_port("a")
    br.add_port("b")
    br.set_carrier("b", False)
    br.set_stp(True, forward_delay=4)
    br.add_port("c")                                     # listening
    clock.now += 8
    br.stp_tick()
    assert br.stp.topology_change and br.fdb.hold_time == 4.0
    br.set_stp(True)                                     # on already, no timers: nothing changes
    assert br.stp.bridge_forward_delay == 4.0
    br.set_stp(False)
    assert br.stp is None and br.fdb.hold_time == 300.0
    assert [br.ports[n].state for n in "abc"] == ["forwarding", "disabled", "forwarding"]


def test_bpdus_the_bridge_sends_are_counted_as_the_ports_transmits(clock):
    br = Bridge("br0", clock=clock, mac=bytes.fromhex("020000000001"))
    br.add_port("a")
    br.set_stp(True)
    assert br.has_transmit
    out = br.pop_transmit()
    (frame_,) = out["a"]
    c = br.ports["a"].counters
    assert (c["tx_packets"], c["tx_bytes"], c["tx_bpdu"], br.counters["bpdu_tx"]) == (1, len(frame_), 1, 1)
    assert not br.has_transmit and br.pop_transmit() == {}


def test_stp_sees_the_bridge_clock_when_ports_come_and_go(clock):
    br = Bridge("br0", clock=clock)                      # its address: its lowest port's
    br.set_stp(True, forward_delay=4)
    assert br.stp.bridge_id == bytes.fromhex("8000000000000000")
    clock.now = 70.0
    br.add_port("a", bytes.fromhex("020000000001"))     # a lower address: a new bridge id
    assert br.stp.bridge_id == bytes.fromhex("8000020000000001") and br.stp.is_root
    assert br.stp.info(br.ports["a"]).forward_delay_timer == 74.0
    clock.now = 80.0
    br.set_port_flags("a", priority=1, cost=7)
    assert br.stp.info(br.ports["a"]).port_id == (1 << 10) | 1 and br.stp.now == 80.0
    clock.now = 90.0
    br.set_carrier("a", False)
    br.set_carrier("a", True)
    assert br.stp.info(br.ports["a"]).forward_delay_timer == 94.0


def test_state_refusals_say_why(br):
    br.set_carrier("vif1.0", False)
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif1.0", state="forwarding")
    assert err.value.message == "vif1.0 has no link: it can only be disabled"
    br.set_stp(True)
    with pytest.raises(XenError) as err:
        br.set_port_flags("vif2.0", state="forwarding")
    assert err.value.message == "xenbr0 runs STP, which sets the port states"


def test_port_flag_refusals_word_for_word(br):
    cases = [({"state": "stalled"}, errno.EINVAL,
              "port state 'stalled': use one of disabled, listening, learning, forwarding, blocking"),
             ({"shiny": True, "dull": False}, errno.EINVAL, "unknown port flag(s): dull, shiny"),
             ({"priority": 64}, errno.ERANGE, "port priority 64 is outside 0..63"),
             ({"cost": 0}, errno.ERANGE, "port cost 0 is outside 1..65535")]
    for kw, code, words in cases:
        with pytest.raises(XenError) as err:
            br.set_port_flags("vif1.0", **kw)
        assert (err.value.errno, err.value.message) == (code, words)


def test_one_change_of_state_is_one_port_event(br):
    br.pop_port_events()
    br.set_port_flags("vif1.0", state="learning", hairpin=True)
    assert [(e.kind, e.port.state, e.port.hairpin) for e in br.pop_port_events()] == [
        ("new", "learning", True)]
    br.set_carrier("vif1.0", False)
    assert len(br.pop_port_events()) == 1
    br.set_carrier("vif1.0", True)
    assert len(br.pop_port_events()) == 1


def test_add_static_replaces_and_fdb_add_does_not(br):
    br.add_static(mac(5), "vif1.0")
    br.add_static(mac(5), "vif2.0")
    assert br.fdb.get(mac(5)).port == "vif2.0" and br.fdb.get(mac(5)).static
    with pytest.raises(XenError) as err:
        br.fdb_add(mac(5), "vif3.0")
    assert err.value.errno == errno.EEXIST and br.fdb.get(mac(5)).port == "vif2.0"


def test_every_bpdu_sent_is_counted(clock):
    br = Bridge("br0", clock=clock, mac=bytes.fromhex("020000000001"))
    br.add_port("a")
    br.set_stp(True)
    sizes = [len(f) for f in br.pop_transmit()["a"]]
    clock.now += 2
    br.stp_tick()
    sizes += [len(f) for f in br.pop_transmit()["a"]]
    c = br.ports["a"].counters
    assert (c["tx_packets"], c["tx_bytes"], c["tx_bpdu"], br.counters["bpdu_tx"]) == (2, sum(sizes), 2, 2)


def test_a_batch_is_one_instant_for_link_local_learning_too(clock):
    class Ticking:
        now = 100.0

        def __call__(self):
            Ticking.now += 1
            return Ticking.now
    br = Bridge("br0", clock=Ticking())
    br.add_port("a")
    br.add_port("b")
    lldp = bytes.fromhex("0180c200000e")
    br.forward_batch("a", [frame(lldp, mac(1)), frame(BCAST, mac(2))])
    assert br.fdb.get(mac(1)).updated == br.fdb.get(mac(2)).updated


def test_deleting_a_vlan_on_one_port_keeps_the_others_entries_in_it(clock):
    br = Bridge("br0", clock=clock)
    for name in ("a", "b"):
        br.add_port(name)
    br.set_vlan_filtering(True)
    br.vlan_add("a", 20)
    br.vlan_add("b", 20)
    tagged20 = lambda src: BCAST + src + b"\x81\x00\x00\x14" + b"\x08\x06" + bytes(46)
    br.forward("a", tagged20(mac(1)))
    br.forward("b", tagged20(mac(2)))
    br.vlan_delete("a", 20)
    assert br.fdb.get(mac(1), 20) is None and br.fdb.get(mac(2), 20).port == "b"


def test_a_tag_names_vlans_above_255(clock):
    from xenlab.bridge.core import classify
    br = Bridge("br0", clock=clock)
    p = br.add_port("a")
    br.vlan_add("a", 0x123)
    f = frame(BCAST, mac(1))
    tagged = f[:12] + b"\x81\x00" + bytes([0xA1, 0x23]) + f[12:]     # PCP 5, VID 0x123
    assert classify(p, tagged) == (0x123, bytes([0xA1, 0x23]), f)


class TickingClock:
    """A clock that moves on at every call, so that a batch that reads it
    twice would see two times."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_a_batch_looks_destinations_up_at_its_own_time(clock):
    br = Bridge("br0", ageing=1.5, clock=TickingClock())
    for name in "abc":
        br.add_port(name)
    br.forward("a", frame(BCAST, mac(1)))             # learned at t
    assert ports(br.forward("b", frame(mac(1), mac(2)))) == ["a"]   # t+1: still known


def test_a_locked_port_checks_its_sources_at_the_batchs_time(clock):
    br = Bridge("br0", ageing=1.5, clock=TickingClock())
    for name in "abc":
        br.add_port(name)
    br.set_port_flags("c", locked=True)
    br.fdb_add(mac(3), "c", "dynamic")                # at t
    assert ports(br.forward("c", frame(BCAST, mac(3)))) == ["a", "b"]   # t+1: held
    br.forward("a", frame(BCAST, mac(1)))             # t+2
    assert br.forward("c", frame(BCAST, mac(3))) == []                  # t+3: aged out
    assert br.drops["locked"] == 1


def test_a_locked_port_checks_its_sources_in_their_vlan(clock):
    br = Bridge("br0", clock=clock)
    for name in "ab":
        br.add_port(name)
    br.set_vlan_filtering(True)
    br.set_port_flags("a", locked=True)
    br.fdb_add(mac(1), "a", vid=1)
    assert ports(br.forward("a", frame(BCAST, mac(1)))) == ["b"]
    br.fdb_add(mac(2), "a")                            # VLAN 0: not the frame's VLAN 1
    assert br.forward("a", frame(BCAST, mac(2))) == [] and br.drops["locked"] == 1


def test_multicast_stays_in_its_vlan(clock):
    br = Bridge("br0", clock=clock)
    for name in "abc":
        br.add_port(name)
    br.set_vlan_filtering(True)
    br.vlan_add("c", 20, pvid=True, untagged=True)
    br.vlan_delete("c", 1)
    assert ports(br.forward("a", frame(bytes.fromhex("01005e000001"), mac(1)))) == ["b"]


def test_stp_announces_the_states_it_sets(clock):
    br = Bridge("br0", clock=clock, mac=bytes.fromhex("020000000001"))
    br.set_stp(True, forward_delay=4)
    br.add_port("a")
    br.pop_port_events()
    clock.now += 4
    br.stp_tick()
    assert [(e.kind, e.port.state) for e in br.pop_port_events()] == [("new", "learning")]
    clock.now += 4
    br.stp_tick()
    assert [(e.kind, e.port.state) for e in br.pop_port_events()] == [("new", "forwarding")]
    assert br.ports["a"].counters["state_forwarding"] == 1
    br.set_carrier("a", False)
    br.set_carrier("a", True)
    clock.now += 8
    br.stp_tick()
    assert br.ports["a"].counters["state_forwarding"] == 2


def test_port_refusals_word_for_word(br):
    with pytest.raises(XenError) as err:
        br.add_port("vif1.0")
    assert err.value.message == "xenbr0 already has a port named vif1.0"
    with pytest.raises(XenError) as err:
        br.add_port("x", b"\x00" * 7)
    assert err.value.message == "a port address is 6 bytes, got 7"
    with pytest.raises(XenError) as err:
        br.add_port("a/b")
    assert err.value.message.startswith("bad port name 'a/b': ")
    assert err.value.message.endswith(" (as a Linux interface name)")


def test_group_fwd_mask_refusals_say_which_rule(br):
    with pytest.raises(XenError) as err:
        br.set_group_fwd_mask(0xFFFF)
    assert err.value.message == "group_fwd_mask 0xffff: bits 0-2 (STP, pause, LACP) can never be forwarded"
    with pytest.raises(XenError) as err:
        br.set_group_fwd_mask(0x10000)
    assert err.value.message == "group_fwd_mask 65536: a 16-bit mask, one bit per 01:80:c2:00:00:0X"


def test_a_port_keeps_the_mtu_it_was_added_with(br):
    assert br.add_port("jumbo", mtu=9000).mtu == 9000 and br.ports["vif1.0"].mtu == 1500


def test_unknown_unicast_floods_only_in_its_vlan(clock):
    br = Bridge("br0", clock=clock)
    for name in "abc":
        br.add_port(name)
    br.set_vlan_filtering(True)
    br.vlan_add("c", 20, pvid=True, untagged=True)
    br.vlan_delete("c", 1)
    assert ports(br.forward("a", frame(mac(99), mac(1)))) == ["b"]


def test_a_fresh_bridge_is_xenbr0_with_every_counter_at_zero(monkeypatch):
    from xenlab.bridge import core
    monkeypatch.setattr(core, "EVENT_BACKLOG", 3)
    br = Bridge(clock=ManualClock(50.0))
    assert br.name == "xenbr0" and br.stats() == {
        "rx": 0, "forwarded": 0, "flooded": 0, "unicast": 0, "tx": 0,
        "fdb_learned": 0, "fdb_moved": 0, "fdb_aged": 0, "fdb_evicted": 0, "fdb_fdb_full": 0,
        "fdb_flushed": 0, "fdb_sticky_conflict": 0, "fdb_local_conflict": 0, "fdb_events_lost": 0,
        "fdb_entries": 0}
    for name in "abcde":
        br.add_port(name)
    assert [e.port.name for e in br.pop_port_events()] == ["c", "d", "e"]   # the last EVENT_BACKLOG
    br.forward("a", frame(BCAST, mac(1)))
    assert br.fdb.pop_events()[0].bridge == "xenbr0"
    br.set_vlan_filtering(False)                          # off already: nothing is flushed
    assert len(br.fdb) == 1
