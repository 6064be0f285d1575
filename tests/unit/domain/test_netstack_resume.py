"""GuestNetwork across a suspend: what it writes into the suspend record,
and a resumed kernel's stacks taken from that record, never from its
command line (docs/SAVE_FORMAT.md)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from xenlab.domain import saved_state
from xenlab.domain.netstack import GuestNetwork
from xenlab.net.arp import ArpPacket
from xenlab.net.ethernet import BROADCAST, ETH_P_ARP, EthernetFrame
from xenlab.testing.clock import ManualClock

from test_netstack_adapter import MAC_A, MAC_B, FakeKernel, FakeNic


class SuspendingKernel(FakeKernel):
    def __init__(self, *netifs, resumed=None):
        super().__init__(*netifs)
        self.suspend_savers: list = []
        self.resumed_state = resumed


def _arp_request_from_b() -> bytes:
    arp = ArpPacket.request(MAC_B, IPv4Address("10.9.0.2"), IPv4Address("10.9.0.1"))
    return EthernetFrame(BROADCAST, MAC_B, ETH_P_ARP, arp.build()).build()


async def test_the_record_carries_the_stack_and_a_resumed_kernel_takes_it_back():
    clock = ManualClock(100.0)
    nic = FakeNic("eth0", MAC_A)
    kernel = SuspendingKernel(nic)
    net = GuestNetwork(clock=clock, cmdline="ip=10.9.0.1::10.9.0.254:255.255.255.0::eth0:off")
    net.attach(kernel)
    net.stack("eth0").receive(_arp_request_from_b())
    clock.advance(10)
    record = saved_state.encode([i for saver in kernel.suspend_savers for i in saver()])

    # The new kernel: a different command line, a clock elsewhere.
    later = ManualClock(5000.0)
    (state,) = saved_state.decode(record)
    nic2 = FakeNic("eth0", MAC_A)
    net2 = GuestNetwork(clock=later, cmdline="ip=192.168.7.7:::255.255.255.0::eth0:off")
    net2.attach(SuspendingKernel(nic2, resumed=[state]))
    stack = net2.stack("eth0")
    assert stack.config.address == IPv4Interface("10.9.0.1/24")
    assert stack.config.gateway == IPv4Address("10.9.0.254")
    mac, expires = stack.arp_cache()[IPv4Address("10.9.0.2")]
    assert mac == MAC_B and expires == 5000.0 + 50.0        # 60 s less the 10 it had run
    assert stack.counters["rx_frames"] == 1


async def test_a_record_for_another_mac_is_not_used():
    (state,) = saved_state.decode(saved_state.encode([saved_state.SavedInterface(
        "eth0", MAC_B, IPv4Interface("10.9.0.1/24"))]))
    nic = FakeNic("eth0", MAC_A)
    net = GuestNetwork(clock=ManualClock(0.0), cmdline="ip=10.1.0.5:::255.255.255.0::eth0:off")
    net.attach(SuspendingKernel(nic, resumed=[state]))
    assert net.stack("eth0").config.address == IPv4Interface("10.1.0.5/24")
