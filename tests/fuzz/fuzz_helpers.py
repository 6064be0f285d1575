"""Helpers for the fuzzers in this directory: NetLab (the in-process lab,
xenlab.testing.InProcessLab, whose Domain-0 runs netback with a
SwitchHotplug, and netfront domUs on it) and Traffic (frames between two
well-behaved interfaces, every one of which must arrive)."""
from __future__ import annotations

import os
import random

from xenlab.domain.kernel import DomainKernel
from xenlab.drivers.netback import NetbackDriver
from xenlab.drivers.netfront import NetfrontDriver
from xenlab.proto import common_pb2, domains_pb2
from xenlab.testing import eventually, no_drivers
from xenlab.testing_hostile import SwitchHotplug


def fuzz_budget(default: int = 100_000) -> int:
    """Hostile requests per fuzzer (XENLAB_FUZZ_REQUESTS)."""
    return int(os.environ.get("XENLAB_FUZZ_REQUESTS", str(default)))


class NetLab:
    """The in-process lab's kernels as the fuzzers use them: Domain-0 with
    netback on a SwitchHotplug, domUs with netfront or no driver at all; no
    guest agent anywhere (it would put an IP stack on every interface)."""

    def __init__(self, lab):
        self.lab = lab
        self.hv = lab.hv
        self.switch = SwitchHotplug()
        self.dom0: DomainKernel | None = None

    async def boot_dom0(self) -> DomainKernel:
        self.dom0 = await self.lab.boot_dom0(drivers=lambda k: [NetbackDriver(k, self.switch)])
        return self.dom0

    async def boot(self, name: str, netfront: bool = False) -> DomainKernel:
        return await self.lab.boot_domain(
            name, drivers=(lambda k: [NetfrontDriver(k)]) if netfront else no_drivers)

    async def attach(self, kernel: DomainKernel, mac: str, bridge: str = "xenbr0"):
        """xl network-attach through dom0's netback; the connected netfront device."""
        info = await self.lab.dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
            domain=common_pb2.DomainRef(domid=kernel.domid),
            vif=domains_pb2.VifSpec(mac=mac, bridge=bridge)))
        name = f"eth{info.devid}"
        eth = await eventually(lambda: kernel.netifs.get(name), f"d{kernel.domid}'s {name}")
        await eventually(lambda: eth.state == "connected", f"d{kernel.domid}'s {name} to connect")
        # The frontend is Connected before netback has run hotplug: wait for the vif too.
        await eventually(lambda: self.dom0.vifs.get(info.vifname), f"{info.vifname} on its bridge")
        return eth


def make_frame(dst: bytes, src: bytes, seq: int, size: int) -> bytes:
    head = dst + src + b"\x88\xb5" + seq.to_bytes(4, "big")
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


class Traffic:
    """Frames both ways between two well-behaved interfaces; every one must arrive."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.sent = {a: [], b: []}
        self.got = {a: [], b: []}
        for src, dst in ((a, b), (b, a)):
            dst.receiver = lambda frames, s=src, d=dst: self.got[d].extend(
                bytes(f) for f in frames if bytes(f[6:12]) == s.mac)
        self.seq = 0

    def send(self, rng: random.Random, broadcast: bool = False) -> None:
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            out = []
            for _ in range(2):
                self.seq += 1
                target = SwitchHotplug.BROADCAST if broadcast and src is self.a else dst.mac
                out.append(make_frame(target, src.mac, self.seq, rng.choice((60, 700, 1514))))
            self.sent[dst].extend(out)
            src.transmit(out)

    def frames(self) -> int:
        return sum(len(s) for s in self.sent.values())

    async def settle(self) -> None:
        await eventually(
            lambda: all(len(self.got[d]) >= len(self.sent[d]) for d in self.got),
            lambda: (f"every frame between the two (sent {[len(s) for s in self.sent.values()]}, "
                     f"got {[len(g) for g in self.got.values()]}, drops "
                     f"{[dict(d.drops) for d in self.got]}, counters "
                     f"{[dict(d.counters) for d in self.got]}, states {[d.state for d in self.got]})"))
        for dst in self.got:
            assert self.got[dst] == self.sent[dst], "frames were lost or reordered"
            assert not dst.drops, dict(dst.drops)

