"""The VXLAN uplink's device over real UDP sockets on loopback: what it
sends (the RFC's header, to the flood list or the learned VTEP), what it
takes in, and what it drops, each under its counter. No root needed."""
from __future__ import annotations

import socket

import pytest
import pytest_asyncio

from xenlab.bridge.uplink import UplinkError, VxlanDevice, check_uplink_spec, uplink_port_name
from xenlab.net import vxlan
from xenlab.testing import eventually

LOCAL = bytes.fromhex("00163e000001")
REMOTE_MAC = bytes.fromhex("00163e0000aa")


def frame(dst: bytes, src: bytes, size: int = 60) -> bytes:
    return dst + src + b"\x08\x06" + bytes(size - 14)


def udp(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(2)
    return sock


@pytest_asyncio.fixture
async def pair():
    """(device, remote VTEP 1, remote VTEP 2): the device floods to both."""
    r1, r2 = udp(), udp()
    config = vxlan.VxlanConfig(42, (r1.getsockname(), r2.getsockname()), ("127.0.0.1", 0))
    sock = udp()
    sock.setblocking(False)
    dev = VxlanDevice(config, sock)
    received: list[bytes] = []
    dev.receiver = received.extend
    dev.received = received
    try:
        yield dev, r1, r2
    finally:
        dev.close()
        r1.close()
        r2.close()


async def test_a_broadcast_goes_to_every_remote_with_the_rfcs_header(pair):
    dev, r1, r2 = pair
    out = frame(b"\xff" * 6, LOCAL)
    dev.transmit([out])
    for remote in (r1, r2):
        datagram, sender = remote.recvfrom(2000)
        assert datagram == bytes([0x08, 0, 0, 0, 0, 0, 42, 0]) + out
        assert sender == dev.address
    assert dev.stats()["tx_packets"] == 1


async def test_a_frame_from_a_remote_is_delivered_and_its_mac_learned_there(pair):
    dev, r1, r2 = pair
    r2.sendto(vxlan.encap(42, frame(LOCAL, REMOTE_MAC)), dev.address)
    await eventually(lambda: dev.received, "the frame delivered")
    assert dev.received == [frame(LOCAL, REMOTE_MAC)]
    # A reply to that MAC goes to r2 alone.
    dev.transmit([frame(REMOTE_MAC, LOCAL)])
    assert r2.recvfrom(2000)[0][8:] == frame(REMOTE_MAC, LOCAL)
    r1.setblocking(False)
    with pytest.raises(BlockingIOError):
        r1.recvfrom(2000)


async def test_a_mac_is_learned_against_the_remotes_port_not_the_datagrams_source_port(pair):
    """Linux sends from a port of its own per flow and listens on its
    dstport: the reply goes to the flood list's port at that address."""
    dev, r1, r2 = pair
    with udp() as elsewhere:           # same address as r1/r2, another source port
        elsewhere.sendto(vxlan.encap(42, frame(LOCAL, REMOTE_MAC)), dev.address)
        await eventually(lambda: dev.received, "the frame delivered")
    first_remote = r1.getsockname()
    assert dev.vtep.destinations(REMOTE_MAC) == [first_remote]


@pytest.mark.parametrize("datagram, reason", [
    (b"\x08\x00\x00", "vxlan_short"),
    (bytes(8) + frame(LOCAL, REMOTE_MAC), "vxlan_no_vni"),
    (vxlan.encap(43, frame(LOCAL, REMOTE_MAC)), "vxlan_other_vni"),
])
async def test_what_is_not_our_vxlan_is_dropped_under_its_reason(pair, datagram, reason):
    dev, r1, _ = pair
    r1.sendto(datagram, dev.address)
    await eventually(lambda: dev.drops[reason] == 1, f"a {reason} drop")
    assert dev.received == [] and dev.vtep.entries == {}


async def test_a_frame_over_the_mtu_is_dropped_as_oversize_and_not_sent(pair):
    dev, r1, r2 = pair
    dev.transmit([frame(b"\xff" * 6, LOCAL, dev.mtu + 14 + 1), frame(b"\xff" * 6, LOCAL, dev.mtu + 14)])
    assert dev.drops["oversize"] == 1 and dev.stats()["tx_packets"] == 1
    assert len(r1.recvfrom(2000)[0]) == 8 + dev.mtu + 14


async def test_a_closed_device_drops_and_its_socket_is_gone(pair):
    dev, *_ = pair
    dev.close()
    dev.transmit([frame(b"\xff" * 6, LOCAL)])
    assert dev.drops["link_down"] == 1 and dev.state == "down" and dev.sock.fileno() == -1


async def test_a_port_another_process_holds_is_refused_with_the_reason():
    with udp() as taken:
        config = vxlan.VxlanConfig(42, (("127.0.0.1", 4789),), taken.getsockname())
        with pytest.raises(UplinkError, match="has that UDP port"):
            VxlanDevice.open(config)


def test_the_spec_comes_back_in_full_and_names_its_port():
    spec = check_uplink_spec("vxlan:vni=7,remote=192.0.2.1")
    assert spec == "vxlan:vni=7,remote=192.0.2.1:4789,local=0.0.0.0:4789,mtu=1450"
    assert uplink_port_name(spec) == "vxlan7"
    assert check_uplink_spec("xltap0") == "tap:xltap0" and uplink_port_name("tap:xltap0") == "xltap0"
