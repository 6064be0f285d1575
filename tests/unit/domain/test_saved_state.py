"""The guest kernel's suspend record (domain/saved_state.py)."""
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from xenlab.domain import saved_state as ss
from xenlab.net.stack import IpStack, StackConfig
from xenlab.testing.clock import ManualClock

MAC = bytes.fromhex("00163e000001")
PEER = bytes.fromhex("00163e000002")


def _iface(neighbours=((IPv4Address("10.0.0.2"), PEER, 42.5),)):
    return ss.SavedInterface("eth0", MAC, IPv4Interface("10.0.0.1/24"), IPv4Address("10.0.0.254"),
                             1500, True, [(IPv4Network("10.1.0.0/16"), IPv4Address("10.0.0.9"))],
                             list(neighbours), {"rx_frames": 7, "tx_frames": 3})


def test_round_trip():
    record = ss.encode([_iface()])
    (back,) = ss.decode(record)
    assert back == _iface()
    assert ss.header_length(record[:4096]) == len(record)


def test_a_damaged_record_is_refused():
    record = bytearray(ss.encode([_iface()]))
    record[40] ^= 1
    with pytest.raises(ss.SavedStateError, match="checksum"):
        ss.decode(bytes(record))
    with pytest.raises(ss.SavedStateError, match="bad magic"):
        ss.decode(bytes(4096))


def test_neighbours_past_the_record_go_closest_to_expiry_first():
    many = [(IPv4Address(0x0A000000 + i), PEER, float(i)) for i in range(1, 5000)]
    record = ss.encode([_iface(many)])
    assert len(record) <= ss.MAX_BYTES
    (back,) = ss.decode(record)
    kept = {ip for ip, _, _ in back.neighbours}
    assert IPv4Address(0x0A000000 + 4999) in kept and IPv4Address(0x0A000001) not in kept


def test_a_stack_resumed_from_it_knows_its_neighbours_without_asking():
    clock = ManualClock(1000.0)
    stack = IpStack(StackConfig(mac=MAC, address=IPv4Interface("10.0.0.1/24")), clock)
    (saved,) = ss.decode(ss.encode([_iface()]))
    stack.resume(saved.neighbours, saved.counters)
    assert stack.arp_cache()[IPv4Address("10.0.0.2")] == (PEER, 1042.5)
    assert stack.counters["rx_frames"] == 7
    frames = stack.ping("10.0.0.2", 1, 1, b"x")
    assert len(frames) == 1 and frames[0][:6] == PEER      # an echo request, no ARP request


def test_the_descriptor_lists_the_record_frames_and_refuses_nonsense():
    record = ss.encode([_iface()])
    gfns = [40, 17, 93][:ss.frames_needed(record)]
    assert ss.read_descriptor(ss.descriptor(gfns) + bytes(100)) == gfns
    with pytest.raises(ss.SavedStateError, match="bad magic"):
        ss.read_descriptor(bytes(4096))
    bad = bytearray(ss.descriptor([1]))
    bad[8:12] = (5000).to_bytes(4, "little")
    with pytest.raises(ss.SavedStateError, match="lists 5000 frames"):
        ss.read_descriptor(bytes(bad))
    assert b"".join(ss.pages(record)) == record
