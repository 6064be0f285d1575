"""Helpers for the fuzzers in this directory: NetLab (an in-process
hypervisor whose Domain-0 runs netback with a SwitchHotplug, and netfront
domUs on it) and Traffic (frames between two well-behaved interfaces, every
one of which must arrive)."""
from __future__ import annotations

import asyncio
import os
import random
import time

from xenlab.domain.kernel import DomainKernel
from xenlab.drivers.netback import NetbackDriver
from xenlab.drivers.netfront import NetfrontDriver
from xenlab.proto import common_pb2, domains_pb2
from xenlab.testing_hostile import SwitchHotplug, boot_domain
from xenlab.xen import abi
from xenlab.xen.start_info import StartInfo

WAIT = 10.0


def fuzz_budget(default: int = 100_000) -> int:
    """Hostile requests per fuzzer (XENLAB_FUZZ_REQUESTS)."""
    return int(os.environ.get("XENLAB_FUZZ_REQUESTS", str(default)))


async def wait_until(condition, what, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.005)
    return value


class NetLab:
    def __init__(self, lab):
        self.lab = lab
        self.hv = lab.hv
        self.switch = SwitchHotplug()
        self.kernels: list[DomainKernel] = []
        self.dom0: DomainKernel | None = None

    async def boot_dom0(self) -> DomainKernel:
        start = StartInfo(domid=0, name=abi.DOM0_NAME, secret=self.hv.dom0_secret,
                          hypervisor=self.lab.address, doorbell=str(self.lab.rundir / "evtchn.sock"),
                          vcpus=self.hv.config.dom0_vcpus, console_log="")
        self.dom0 = DomainKernel(start, drivers=lambda k: [NetbackDriver(k, self.switch)])
        await self.dom0.boot()
        self.kernels.append(self.dom0)
        return self.dom0

    async def boot(self, name: str, netfront: bool = False) -> DomainKernel:
        kernel = await boot_domain(self.lab, name,
                                   drivers=(lambda k: [NetfrontDriver(k)]) if netfront else None)
        self.kernels.append(kernel)
        return kernel

    async def attach(self, kernel: DomainKernel, mac: str, bridge: str = "xenbr0"):
        """xl network-attach through dom0's netback; the connected netfront device."""
        info = await self.lab.dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
            domain=common_pb2.DomainRef(domid=kernel.domid),
            vif=domains_pb2.VifSpec(mac=mac, bridge=bridge)))
        name = f"eth{info.devid}"
        eth = await wait_until(lambda: kernel.netifs.get(name), f"d{kernel.domid}'s {name}")
        await wait_until(lambda: eth.state == "connected", f"d{kernel.domid}'s {name} to connect")
        # The frontend is Connected before netback has run hotplug: wait for the vif too.
        await wait_until(lambda: self.dom0.vifs.get(info.vifname), f"{info.vifname} on its bridge")
        return eth

    async def close(self) -> None:
        for kernel in reversed(self.kernels):
            await kernel._close()


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
        await wait_until(
            lambda: all(len(self.got[d]) >= len(self.sent[d]) for d in self.got),
            lambda: (f"every frame between the two (sent {[len(s) for s in self.sent.values()]}, "
                     f"got {[len(g) for g in self.got.values()]}, drops "
                     f"{[dict(d.drops) for d in self.got]}, counters "
                     f"{[dict(d.counters) for d in self.got]}, states {[d.state for d in self.got]})"))
        for dst in self.got:
            assert self.got[dst] == self.sent[dst], "frames were lost or reordered"
            assert not dst.drops, dict(dst.drops)

