"""GuestNetwork keeps the last counters of interfaces that went away."""
from types import SimpleNamespace

from xenlab.domain.netstack import GONE_INTERFACES, GuestNetwork
from xenlab.net.device import NetDevice


class Nic(NetDevice):
    def transmit(self, frames):
        self.count_tx(frames)


def kernel():
    return SimpleNamespace(netifs={}, vifs={}, on_netif_change=[])


def announce(k, name, dev):
    for callback in list(k.on_netif_change):
        callback(name, dev)


def test_a_withdrawn_interface_leaves_its_counters_and_a_returning_one_takes_them_back():
    k = kernel()
    net = GuestNetwork()
    net.attach(k)
    vif = Nic("vif3.0", bytes.fromhex("00163e000003"))
    announce(k, "vif3.0", vif)
    vif.transmit([b"x" * 60] * 4)
    vif.drop("rx_ring_full", 2)
    announce(k, "vif3.0", None)
    assert [g.name for g in net.gone] == ["vif3.0"] and net.interfaces() == []
    gone = net.gone[0]
    assert gone.state == "gone" and gone.stats()["tx_packets"] == 4 and gone.drops["rx_ring_full"] == 2
    vif.drop("not_connected", 3)              # winding down after it went: still counted
    assert gone.drops["not_connected"] == 3
    # A new device of the same name adds a live interface; the old counters stay.
    second = Nic("vif3.0", bytes.fromhex("00163e000003"))
    announce(k, "vif3.0", second)
    assert len(net.gone) == 1
    # The same device coming back (a netfront reconnecting) goes on counting itself.
    announce(k, "vif3.0", None)
    announce(k, "vif3.0", second)
    assert [g.origin() for g in net.gone] == [vif]


def test_the_ledger_is_bounded():
    k = kernel()
    net = GuestNetwork()
    net.attach(k)
    for i in range(GONE_INTERFACES + 10):
        announce(k, "vif9.0", Nic("vif9.0"))
        announce(k, "vif9.0", None)
    assert len(net.gone) == GONE_INTERFACES
