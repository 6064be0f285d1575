"""A domU's IP stack (xenlab.net.stack) behind a veth port of an
in-process bridge service: the far end of what a test sends through an
uplink, without a hypervisor."""
from __future__ import annotations

import asyncio
import ipaddress
import time

from xenlab.net.ethernet import format_mac
from xenlab.net.stack import IpStack, StackConfig
from xenlab.net.veth import connect_veth
from xenlab.testing import eventually


class StackPort:
    def __init__(self, mac: bytes, interface: str):
        self.stack = IpStack(StackConfig(mac, ipaddress.IPv4Interface(interface)), time.monotonic)
        self.mac = mac
        self.events: list = []          # the stack's events (echo replies, ...) as they come
        self.end = None
        self._poller: asyncio.Task | None = None

    async def attach(self, service, port: str = "vif1.0", bridge: str = "xenbr0") -> "StackPort":
        self.end = end = await connect_veth(service.veth_address, port,
                                            {"bridge": bridge, "mac": format_mac(self.mac)},
                                            mac=self.mac)

        def receive(frames):
            for frame in frames:
                end.transmit(self.stack.receive(frame))
            self.events.extend(self.stack.pop_events())

        end.receiver = receive
        await eventually(lambda: port in service.bridge(bridge).ports, f"{port} on {bridge}")
        end.transmit(self.stack.link_up())

        async def poll():
            while True:
                await asyncio.sleep(0.1)
                end.transmit(self.stack.poll())
                self.events.extend(self.stack.pop_events())

        self._poller = asyncio.create_task(poll())
        return self

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.end is not None:
            self.end.close()
