"""A cable between two bridges of one service: two ports, each the other's
wire, as a veth pair joins two Linux bridges (`ip link add a type veth peer
name b; ip link set a master br0; ip link set b master br1`).

What one end transmits arrives at the other on the next turn of the event
loop, never inside the transmit call: a loop of bridges without STP storms
as a real one does, one hop per turn, instead of recursing until the stack
runs out. Each end counts what it sent and received; frames sent while the
other end is gone or down are dropped as ``link_down``.
"""
from __future__ import annotations

import asyncio

from xenlab.net.device import NetDevice


class PatchPort(NetDevice):
    def __init__(self, name: str, mac: bytes, mtu: int = 1500):
        super().__init__(name, mac, mtu)
        self.peer: PatchPort | None = None
        self.up = True

    @classmethod
    def pair(cls, a: str, mac_a: bytes, b: str, mac_b: bytes) -> tuple["PatchPort", "PatchPort"]:
        end_a, end_b = cls(a, mac_a), cls(b, mac_b)
        end_a.peer, end_b.peer = end_b, end_a
        return end_a, end_b

    @property
    def state(self) -> str:
        return "up" if self.up and self.peer is not None and self.peer.up else "down"

    def transmit(self, frames: list[bytes]) -> None:
        if self.state != "up":
            self.drop("link_down", len(frames))
            return
        self.count_tx(frames)
        asyncio.get_running_loop().call_soon(self.peer._arrive, list(frames))

    def _arrive(self, frames: list[bytes]) -> None:
        if not self.up:
            self.drop("link_down", len(frames))
            return
        self.deliver(frames)

    def close(self) -> None:
        self.up = False
