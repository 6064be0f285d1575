"""Two guest stacks wired back to back, with a clock the test moves."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from xenlab.net.stack import IpStack, StackConfig
from xenlab.testing import ManualClock

MAC_A = bytes.fromhex("00163e000001")
MAC_B = bytes.fromhex("00163e000002")


class Wire:
    """A list-based cable between stacks: frames one side returns are fed to
    the others, and their answers back, until nothing is left in flight.
    ``log`` keeps every frame with its sender; ``cut`` drops everything."""

    def __init__(self, *stacks: IpStack) -> None:
        self.stacks = stacks
        self.log: list[tuple[IpStack, bytes]] = []
        self.cut = False

    def carry(self, sender: IpStack, frames: list[bytes]) -> None:
        in_flight = [(sender, f) for f in frames]
        while in_flight:
            src, frame = in_flight.pop(0)
            self.log.append((src, frame))
            if self.cut:
                continue
            for peer in self.stacks:
                if peer is not src:
                    in_flight += [(peer, f) for f in peer.receive(frame)]

    def frames_from(self, stack: IpStack) -> list[bytes]:
        return [f for s, f in self.log if s is stack]


def make_stack(clock: ManualClock, mac: bytes, address: str, gateway: str | None = None,
               **options) -> IpStack:
    config = StackConfig(mac=mac, address=IPv4Interface(address),
                         gateway=IPv4Address(gateway) if gateway else None, **options)
    return IpStack(config, clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def stack_factory(clock):
    """make(mac, "A.B.C.D/len", gateway=None, **StackConfig options) on the shared clock."""
    return lambda *args, **kwargs: make_stack(clock, *args, **kwargs)


@pytest.fixture
def wire_factory():
    return Wire


@pytest.fixture
def pair(clock):
    """(a, b, wire): 10.0.0.2 (00:16:3e:00:00:01) and 10.0.0.3 (00:16:3e:00:00:02)
    on 10.0.0.0/24, gateway 10.0.0.1."""
    a = make_stack(clock, MAC_A, "10.0.0.2/24", "10.0.0.1")
    b = make_stack(clock, MAC_B, "10.0.0.3/24", "10.0.0.1")
    return a, b, Wire(a, b)
