"""Link state: iproute2's flags and operstate (pure), a device's refusals
counted under their own reasons, and the veth pair carrying its ends' state."""
import asyncio

import pytest

from xenlab.lab import conservation
from xenlab.net import veth
from xenlab.net.device import NetDevice
from xenlab.net.link import LinkInfo, LinkState, format_link, parse_updown


async def _pair(address):
    ports = []
    listener = veth.VethListener(address, admit=lambda hello: (hello["name"], {}),
                                 attached=ports.append)
    await listener.start()
    end = await veth.connect_veth(listener.bound_address, "veth1.0", {})
    for _ in range(100):
        if ports:
            break
        await asyncio.sleep(0.01)
    return listener, end, ports[0]


@pytest.mark.parametrize("admin_up, carrier, flags, state", [
    (True, True, "<BROADCAST,MULTICAST,UP,LOWER_UP>", "UP"),
    (True, False, "<NO-CARRIER,BROADCAST,MULTICAST,UP>", "DOWN"),
    (False, True, "<BROADCAST,MULTICAST>", "DOWN"),
    (False, False, "<BROADCAST,MULTICAST>", "DOWN"),     # NO-CARRIER only on a device that is up
])
def test_flags_and_state_as_ip_prints_them(admin_up, carrier, flags, state):
    link = LinkState(admin_up, carrier)
    assert f"<{','.join(link.flags())}>" == flags and link.operstate == state
    assert link.oper_up is (admin_up and carrier)


def test_format_link_is_iproute2s_two_lines():
    text = format_link(LinkInfo(5, "vif1.0", 1500, LinkState(True, True), "fe:ff:ff:ff:ff:ff",
                                "xenbr0"))
    assert text == ("5: vif1.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master xenbr0 "
                    "state UP mode DEFAULT group default\n"
                    "    link/ether fe:ff:ff:ff:ff:ff brd ff:ff:ff:ff:ff:ff")
    assert format_link(LinkInfo(2, "eth0", 1500, LinkState(False, True))) == \
        "2: eth0: <BROADCAST,MULTICAST> mtu 1500 state DOWN mode DEFAULT group default"


@pytest.mark.parametrize("word, up", [("up", True), ("down", False)])
def test_parse_updown(word, up):
    assert parse_updown(word) is up


@pytest.mark.parametrize("word", ["UP", "", "on", "0"])
def test_parse_updown_refuses_anything_else(word):
    with pytest.raises(ValueError, match="expected"):
        parse_updown(word)


class Loop(NetDevice):
    def transmit(self, frames):
        if not self.refuse_tx(frames):
            self.count_tx(frames)


def test_a_device_that_is_down_refuses_both_ways_and_counts_each_side():
    dev, got = Loop("eth0"), []
    dev.receiver = got.extend
    changes = []
    dev.link_watchers.append(lambda d: changes.append(d.link_state))
    assert dev.set_admin_up(False) and not dev.set_admin_up(False)     # one change, told once
    dev.transmit([b"a", b"b"])
    dev.deliver([b"c"])
    assert dev.stats() == {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                           "drop_dev_down": 2, "drop_rx_dev_down": 1}
    assert dev.set_admin_up(True) and dev.set_carrier(False)
    dev.transmit([b"d"])
    dev.deliver([b"e"])
    assert dev.drops["no_carrier"] == 1 and dev.drops["rx_no_carrier"] == 1 and not got
    assert dev.set_carrier(True)
    dev.transmit([b"f"])
    dev.deliver([b"g"])
    assert dev.counters["tx_packets"] == 1 and got == [b"g"]
    assert changes == [LinkState(False, True), LinkState(True, True), LinkState(True, False),
                       LinkState(True, True)]


def test_the_books_know_which_side_each_link_drop_is_on():
    # A vif's transmit is the guest's rx ring: its refusals are on that side;
    # what a veth end refuses to send is on its tx side, what it refuses to take on its rx side.
    assert {"dev_down", "no_carrier"} <= conservation.NETBACK_RX
    assert {"dev_down", "no_carrier"} <= conservation.VETH_TX
    assert {"rx_dev_down", "rx_no_carrier"} <= conservation.VETH_RX


def test_carrier_datagram_round_trips_and_garbage_is_refused():
    for up in (True, False):
        assert veth.decode(veth.encode_carrier(up)) == (veth.OP_CARRIER, up)
    bad = bytearray(veth.encode_carrier(True))
    bad[4] = 2                      # count: only 0 or 1
    with pytest.raises(veth.VethError, match="carrier"):
        veth.decode(bytes(bad))
    with pytest.raises(veth.VethError, match="carrier"):
        veth.decode(veth.encode_carrier(False) + b"x")


async def test_an_end_set_down_takes_the_peers_carrier_after_the_frames_it_sent(sock_dir):
    listener, a, b = await _pair(f"unix:{sock_dir}/br.sock")
    got, seen = [], []
    b.receiver = got.extend
    b.link_watchers.append(lambda d: seen.append((len(got), d.carrier)))
    a.transmit([b"x" * 60] * 5)
    a.announce(False)
    a.announce(False)               # said once
    a.transmit([b"y" * 60])         # announce() says; only admin state refuses
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    # The five frames came first, with the carrier; then it went.
    assert seen == [(5, False)] and not b.carrier
    b.transmit([b"z"])
    assert b.drops["no_carrier"] == 1
    a.announce(True)
    for _ in range(200):
        if b.carrier:
            break
        await asyncio.sleep(0.01)
    assert b.carrier and seen[-1][1] is True and len(seen) == 2
    a.close()
    await listener.close()
