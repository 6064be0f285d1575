"""xenlab.net.vxlan: the RFC 7348 header, the uplink's options, and the
VTEP table (learned remote MACs, the flood list, ageing, a full table)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlab.net import vxlan

FRAME = bytes.fromhex("ffffffffffff00163e000001") + b"\x08\x06" + bytes(46)
A, B = bytes.fromhex("00163e000001"), bytes.fromhex("00163e000002")
R1, R2 = ("192.0.2.1", 4789), ("192.0.2.2", 4789)


def test_the_header_is_the_rfcs():
    """flags 0x08 (I), 24 reserved bits, the VNI in the next 24, 8 reserved."""
    datagram = vxlan.encap(42, FRAME)
    assert datagram[:8] == bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
    assert datagram[8:] == FRAME
    assert vxlan.encap(0xABCDEF, FRAME)[4:8] == bytes([0xAB, 0xCD, 0xEF, 0])


@given(st.integers(0, vxlan.VNI_MAX), st.binary(min_size=14, max_size=1600))
def test_decap_gives_back_what_encap_carried(vni, frame):
    assert vxlan.decap(vxlan.encap(vni, frame)) == (vni, frame)


def test_reserved_bits_are_ignored_on_receipt():
    datagram = bytes([0x08 | 0x80 | 0x01, 1, 2, 3, 0, 0, 42, 0x55]) + FRAME
    assert vxlan.decap(datagram) == (42, FRAME)


@pytest.mark.parametrize("datagram, reason", [
    (b"", "vxlan_short"),
    (vxlan.encap(1, FRAME)[:21], "vxlan_short"),
    (bytes(8) + FRAME, "vxlan_no_vni"),
])
def test_what_is_not_a_vxlan_frame_is_refused_with_its_counter(datagram, reason):
    with pytest.raises(vxlan.VxlanError) as err:
        vxlan.decap(datagram)
    assert err.value.reason == reason


@given(st.binary(max_size=64))
def test_decap_of_any_bytes_gives_a_frame_or_a_counted_refusal(data):
    try:
        vni, frame = vxlan.decap(data)
    except vxlan.VxlanError as err:
        assert err.reason in ("vxlan_short", "vxlan_no_vni")
    else:
        assert 0 <= vni <= vxlan.VNI_MAX and len(frame) >= 14


def test_the_overhead_over_ipv4_is_50_bytes_and_the_default_mtu_1450():
    assert vxlan.OVERHEAD_IPV4 == 50
    assert vxlan.parse_config("vni=1,remote=192.0.2.1").mtu == 1450


def test_options_in_full():
    config = vxlan.parse_config("vni=42,remote=192.0.2.1,remote=192.0.2.2:14789,"
                                "local=192.0.2.9:4790,mtu=1400,name=vxup0")
    assert config == vxlan.VxlanConfig(42, (("192.0.2.1", 4789), ("192.0.2.2", 14789)),
                                       ("192.0.2.9", 4790), 1400, "vxup0")
    assert config.port_name == "vxup0"
    assert vxlan.parse_config(config.text()[len("vxlan:"):]) == config
    assert vxlan.parse_config("vni=7,remote=192.0.2.1").port_name == "vxlan7"
    quiet = vxlan.parse_config("vni=7,remote=192.0.2.1,learning=off")
    assert not quiet.learning and vxlan.parse_config("vni=7,remote=192.0.2.1").learning
    assert vxlan.parse_config(quiet.text()[len("vxlan:"):]) == quiet


@pytest.mark.parametrize("spec, message", [
    ("remote=192.0.2.1", "vni=N is needed"),
    ("vni=42", "at least one remote"),
    ("vni=x,remote=192.0.2.1", "not a number"),
    ("vni=16777216,remote=192.0.2.1", "24 bits"),
    ("vni=1,remote=host.example", "IPv4 address"),
    ("vni=1,remote=192.0.2.1:0", "1..65535"),
    ("vni=1,remote=192.0.2.1:99999", "1..65535"),
    ("vni=1,remote=192.0.2.1,remote=192.0.2.1:4789", "listed twice"),
    ("vni=1,vni=2,remote=192.0.2.1", "vni given twice"),
    ("vni=1,remote=192.0.2.1,mtu=20", "mtu"),
    ("vni=1,remote=192.0.2.1,ttl=3", "unknown key 'ttl'"),
    ("vni=1,remote", "not KEY=VALUE"),
    ("vni=1,remote=192.0.2.1,learning=no", "expected on or off"),
    ("vni=1,remote=192.0.2.1,learning=on,learning=off", "learning given twice"),
])
def test_bad_options_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        vxlan.parse_config(spec)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_or_group_destination_floods_to_every_remote():
    table = vxlan.VtepTable([R1, R2], Clock())
    assert table.destinations(A) == [R1, R2]
    assert table.destinations(b"\xff" * 6) == [R1, R2]


def test_a_learned_mac_goes_to_its_vtep_only_and_moves_with_it():
    table = vxlan.VtepTable([R1, R2], Clock())
    table.learn(A, R2)
    assert table.destinations(A) == [R2]
    table.learn(A, R1)
    assert table.destinations(A) == [R1]
    assert table.counters["learned"] == 1 and table.counters["moved"] == 1


def test_a_group_source_is_never_learned():
    table = vxlan.VtepTable([R1], Clock())
    table.learn(bytes.fromhex("01005e000001"), R1)
    assert table.entries == {}


def test_with_learning_off_every_frame_goes_to_the_flood_list():
    """Linux's nolearning: behind Docker's userland proxy a sender's
    address is the proxy's gateway, which learning would send frames back
    through to their own VTEP."""
    table = vxlan.VtepTable([R1, R2], Clock(), learning=False)
    table.learn(A, R2)
    assert table.destinations(A) == [R1, R2]
    assert table.entries == {} and table.counters["learned"] == 0


def test_entries_age_out_and_the_destination_floods_again():
    clock = Clock()
    table = vxlan.VtepTable([R1, R2], clock, ageing=300)
    table.learn(A, R2)
    clock.now = 300
    assert table.destinations(A) == [R2]
    clock.now = 301
    assert table.destinations(A) == [R1, R2]
    assert table.counters["aged"] == 1


def test_a_full_table_learns_no_more_and_counts_it_until_an_entry_ages():
    clock = Clock()
    table = vxlan.VtepTable([R1], clock, ageing=10, max_learned=1)
    table.learn(A, R1)
    table.learn(B, R2)
    assert table.destinations(B) == [R1] and table.counters["full"] == 1
    clock.now = 11
    table.learn(B, R2)
    assert table.destinations(B) == [R2] and A not in table.entries
