"""veth pairs: the wire format and both transports, with real sockets."""
import asyncio

import pytest
from hypothesis import given, strategies as st

from xenlab.net import veth


@given(st.lists(st.binary(min_size=0, max_size=3000), max_size=80))
def test_frames_round_trip_in_as_few_datagrams_as_fit(frames):
    datagrams = veth.encode_frames(frames)
    assert all(len(d) <= veth.BATCH_BYTES for d in datagrams)
    out = []
    for d in datagrams:
        op, payload = veth.decode(d)
        assert op == veth.OP_FRAMES
        out.extend(payload)
    assert out == frames
    total = sum(2 + len(f) for f in frames)
    assert len(datagrams) <= total // (veth.BATCH_BYTES - 3100) + 1


@given(st.binary(max_size=200))
def test_garbage_is_refused_never_crashes(data):
    try:
        veth.decode(data)
    except veth.VethError:
        pass


def test_truncated_and_trailing_bytes_are_refused():
    good = veth.encode_frames([b"abc", b"defg"])[0]
    with pytest.raises(veth.VethError):
        veth.decode(good[:-1])
    with pytest.raises(veth.VethError):
        veth.decode(good + b"x")


def test_a_frames_datagram_has_its_lengths_up_front():
    (datagram,) = veth.encode_frames([b"ab", b"", b"cde"])
    assert datagram == (veth.HEADER.pack(veth.MAGIC, 2, veth.OP_FRAMES, 3, 0)
                        + bytes([2, 0, 0, 0, 3, 0]) + b"abcde")
    assert veth.decode(datagram) == (veth.OP_FRAMES, [b"ab", b"", b"cde"])


@pytest.mark.parametrize("body, why", [
    (bytes([2, 0, 9]), "frame lengths past the end"),             # count 2, one length and a half
    (bytes([2, 0, 4, 0]) + b"abcde", "frame past the end"),       # 2 + 4 > 5 bytes
    (bytes([2, 0, 2, 0]) + b"abcdX", "trailing bytes"),
])
def test_lengths_that_do_not_match_the_bytes_are_refused(body, why):
    with pytest.raises(veth.VethError, match=why):
        veth.decode(veth.HEADER.pack(veth.MAGIC, veth.VERSION, veth.OP_FRAMES, 2, 0) + body)


def test_a_lone_frame_whose_length_does_not_match_is_refused():
    (good,) = veth.encode_frames([b"abcd"])
    assert veth.decode(good) == (veth.OP_FRAMES, [b"abcd"])
    for bad in (good[:-1], good + b"x", good[:veth.HEADER.size + 1]):
        with pytest.raises(veth.VethError):
            veth.decode(bad)


def test_a_peer_of_the_first_version_is_told_which_versions_met():
    old = veth.HEADER.pack(veth.MAGIC, 1, veth.OP_HELLO, 0, 0) + b"{}"
    with pytest.raises(veth.VethError, match="version 1; this end speaks 2"):
        veth.decode(old)


async def _pair(address):
    ports = []
    listener = veth.VethListener(address, admit=lambda hello: (f"port-{hello['name']}", {"bridge": "br0"}),
                                 attached=ports.append)
    await listener.start()
    end = await veth.connect_veth(listener.bound_address, "vif1.0", {"bridge": "br0"})
    for _ in range(100):
        if ports:
            break
        await asyncio.sleep(0.01)
    return listener, end, ports[0]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_frames_cross_in_order_both_ways_with_counters(transport, sock_dir):
    address = f"unix:{sock_dir}/br.sock" if transport == "unix" else "tcp:127.0.0.1:0"
    listener, a, b = await _pair(address)
    assert a.peer_info == {"bridge": "br0"} and b.name == "port-vif1.0"
    got_b, got_a = [], []
    b.receiver = got_b.extend
    a.receiver = got_a.extend
    frames = [bytes([i % 256]) * (60 + i) for i in range(2000)]
    a.transmit(frames)
    b.transmit(frames[:10])
    for _ in range(500):
        if len(got_b) == len(frames) and len(got_a) == 10:
            break
        await asyncio.sleep(0.01)
    assert got_b == frames and got_a == frames[:10]
    assert a.stats()["tx_packets"] == 2000 and b.stats()["rx_packets"] == 2000
    a.close()
    await asyncio.wait_for(b.closed.wait(), 5)
    assert b.state == "down"
    b.transmit([b"late"])
    assert b.stats()["drop_link_down"] == 1
    await listener.close()


async def test_a_refused_hello_is_a_clear_error(sock_dir):
    def admit(hello):
        raise veth.VethError(f"no bridge named {hello['bridge']}")
    listener = veth.VethListener(f"unix:{sock_dir}/br.sock", admit=admit, attached=lambda e: None)
    await listener.start()
    with pytest.raises(veth.VethError, match="no bridge named nope"):
        await veth.connect_veth(listener.address, "vif1.0", {"bridge": "nope"})
    await listener.close()


async def test_a_malformed_datagram_closes_only_that_link(sock_dir):
    listener, a, b = await _pair(f"unix:{sock_dir}/br.sock")
    a.link.sock.send(b"\x45\x76\x01\x02\x05\x00\x00\x00junk")
    await asyncio.wait_for(b.closed.wait(), 5)
    assert b.stats()["drop_malformed"] == 1
    # The listener still admits new links.
    other = await veth.connect_veth(listener.address, "vif2.0", {"bridge": "br0"})
    assert other.state == "up"
    other.close()
    await listener.close()


def test_bad_addresses():
    for bad in ("nope", "tcp:1.2.3.4", "tcp::x"):
        with pytest.raises(ValueError):
            veth.parse_address(bad)
