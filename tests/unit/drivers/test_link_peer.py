"""Each side of a vif telling the other its link state through xenstore
(drivers/link.py), on an in-memory store; and the guest announcing its
address again when its link comes back (domain/netstack.py)."""
from __future__ import annotations

import asyncio

from xenlab.domain.netstack import GuestNetwork
from xenlab.drivers.link import PeerLink
from xenlab.net.arp import ArpPacket
from xenlab.net.device import NetDevice
from xenlab.net.ethernet import ETH_P_ARP, EthernetFrame
from xenlab.xen.xenstore_paths import LINK_NODE

FRONT, BACK = "/local/domain/1/device/vif/0", "/local/domain/0/backend/vif/1/0"


class Store:
    """A shared store and its watches; a watch fires once at once, as
    xenstore's does, and at each write, from the 'reader' (call_soon)."""

    def __init__(self):
        self.nodes: dict[str, str] = {}
        self.watches: dict[str, tuple[str, object]] = {}

    def client(self) -> "Bus":
        return Bus(self)

    def fire(self, path: str) -> None:
        for watched, callback in list(self.watches.values()):
            if path == watched:
                asyncio.get_running_loop().call_soon(callback, path)


class Bus:
    def __init__(self, store: Store):
        self.store = store
        self.tokens = 0

    async def write(self, path: str, value: str) -> None:
        self.store.nodes[path] = value
        self.store.fire(path)

    async def read(self, path: str):
        return self.store.nodes.get(path)

    async def watch(self, path: str, callback) -> str:
        self.tokens += 1
        token = f"{id(self)}-{self.tokens}"
        self.store.watches[token] = (path, callback)
        asyncio.get_running_loop().call_soon(callback, path)
        return token

    async def unwatch(self, token: str) -> None:
        self.store.watches.pop(token, None)


class Dev(NetDevice):
    def transmit(self, frames):
        if not self.refuse_tx(frames):
            self.count_tx(frames)
            self.sent = getattr(self, "sent", []) + list(frames)


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


async def test_each_side_follows_the_others_node_as_its_carrier():
    store = Store()
    eth0, vif = Dev("eth0"), Dev("vif1.0")
    front, back = PeerLink(store.client(), eth0, FRONT, BACK), PeerLink(store.client(), vif, BACK, FRONT)
    await front.start()
    await back.start()
    await settle()
    assert store.nodes == {f"{FRONT}/{LINK_NODE}": "up", f"{BACK}/{LINK_NODE}": "up"}
    assert eth0.carrier and vif.carrier

    vif.set_admin_up(False)
    await vif.link_settled()
    await settle()
    assert store.nodes[f"{BACK}/{LINK_NODE}"] == "down" and not eth0.carrier and vif.carrier
    eth0.transmit([b"x" * 60])
    assert eth0.drops["no_carrier"] == 1

    # A carrier change is no news of our own: nothing written for it.
    writes = dict(store.nodes)
    eth0.set_admin_up(False)
    await eth0.link_settled()
    await settle()
    assert store.nodes[f"{FRONT}/{LINK_NODE}"] == "down" and not vif.carrier
    vif.set_admin_up(True)
    eth0.set_admin_up(True)
    await vif.link_settled()
    await eth0.link_settled()
    await settle()
    assert eth0.carrier and vif.carrier and writes != store.nodes

    await front.stop()
    vif.set_admin_up(False)
    await vif.link_settled()
    await settle()
    assert eth0.carrier                 # no longer watching
    assert front._on_change not in eth0.link_watchers


async def test_a_side_that_never_wrote_the_node_is_up_and_garbage_is_up():
    store = Store()
    vif = Dev("vif1.0")
    back = PeerLink(store.client(), vif, BACK, FRONT)
    await back.start()
    await settle()
    assert vif.carrier
    store.nodes[f"{FRONT}/{LINK_NODE}"] = "down"
    store.fire(f"{FRONT}/{LINK_NODE}")
    await settle()
    assert not vif.carrier
    store.nodes[f"{FRONT}/{LINK_NODE}"] = "sideways"
    store.fire(f"{FRONT}/{LINK_NODE}")
    await settle()
    assert vif.carrier


class Nic(NetDevice):
    def __init__(self):
        super().__init__("eth0", bytes.fromhex("00163e000001"))
        self.sent: list[bytes] = []

    def transmit(self, frames):
        if not self.refuse_tx(frames):
            self.count_tx(frames)
            self.sent += frames


def gratuitous_arps(frames) -> int:
    out = 0
    for raw in frames:
        frame = EthernetFrame.parse(raw)
        if frame.ethertype == ETH_P_ARP:
            arp = ArpPacket.parse(frame.payload)
            out += str(arp.spa) == str(arp.tpa) == "10.0.0.1"
    return out


async def test_the_guest_announces_its_address_when_its_link_comes_back():
    class Kernel:
        netifs, vifs, on_netif_change = {}, {}, []
    nic = Nic()
    Kernel.netifs = {"eth0": nic}
    net = GuestNetwork(cmdline="ip=10.0.0.1:::255.255.255.0::eth0:off")   # Linux's ip=
    net.attach(Kernel())
    assert gratuitous_arps(nic.sent) == 1           # at link up, as Linux
    nic.set_carrier(False)
    nic.set_carrier(True)
    assert gratuitous_arps(nic.sent) == 2
    nic.set_admin_up(False)
    nic.set_carrier(False)
    nic.set_admin_up(True)                          # still no carrier: nothing to say yet
    assert gratuitous_arps(nic.sent) == 2 and nic.drops == {}
    nic.set_carrier(True)
    assert gratuitous_arps(nic.sent) == 3
    assert nic.ifindex == 2                         # 1 is lo's
    net.remove("eth0")
    assert not nic.link_watchers
    net.close()
