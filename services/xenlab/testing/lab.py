"""The in-process lab: a hypervisor on a unix socket in this process, and
domain kernels booted in this process on it.

A domain is created through the toolstack, as ``xl create`` would, with
launcher "none": no process is started for it. ``boot_domain`` then runs its
kernel here, with the xenbus drivers and the guest agent the caller hands
it, so a test (or a user's experiment) can reach into the kernel's devices,
the hypervisor's cores and xenstore at once:

    async with in_process_lab() as lab:
        dom0 = await lab.boot_dom0(drivers=lambda k: [NetbackDriver(k, LoopbackHotplug())])
        web = await lab.boot_domain("web", drivers=lambda k: [NetfrontDriver(k)])
        await lab.dom0.domains.NetworkAttach(...)
        eth0 = await eventually(lambda: web.netifs.get("eth0"), "web's eth0")

Kernels run without a guest agent unless one is asked for
(``agent=start_guest_agent``): the agent puts an IP stack on every
interface, which a test that drives the interfaces itself does not want.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from xenlab.client import HypervisorClient
from xenlab.domain.kernel import DomainKernel
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.server import HypervisorServer
from xenlab.toolstack.toolstack import Toolstack
from xenlab.proto import domains_pb2
from xenlab.rundir import DOORBELL, short_tempdir
from xenlab.xen import abi
from xenlab.xen.start_info import StartInfo

Drivers = Callable[[DomainKernel], list]
Agent = Callable[[DomainKernel], Awaitable[object | None]]


async def no_agent(kernel: DomainKernel) -> None:
    """The agent of a kernel that runs without one."""
    return None


def no_drivers(kernel: DomainKernel) -> list:
    return []


@dataclass
class InProcessLab:
    """A running in-process hypervisor (``server``), a Domain-0 client of it
    (``dom0``, the toolstack's credentials) and the kernels booted on it."""
    server: HypervisorServer
    address: str
    dom0: HypervisorClient
    rundir: Path
    clients: list[HypervisorClient] = field(default_factory=list)
    kernels: dict[int, DomainKernel] = field(default_factory=dict)

    @property
    def hv(self):
        """The hypervisor's cores (xenlab.hypervisor.core.Hypervisor)."""
        return self.server.hv

    @property
    def toolstack(self):
        return self.server.toolstack

    async def create_domain(self, name: str, memory_mb: int = 16, launcher: str = "none",
                            **spec) -> tuple[int, HypervisorClient]:
        """Create a domain as the toolstack would; return its id and a
        client that acts as it."""
        reply = await self._create(name, memory_mb, launcher, **spec)
        return reply.info.domid, self.client_as(reply.info.domid, reply.secret)

    def client_as(self, domid: int, secret: str) -> HypervisorClient:
        client = HypervisorClient.connect(self.address, domid, secret)
        self.clients.append(client)
        return client

    async def boot_dom0(self, drivers: Drivers = no_drivers, agent: Agent = no_agent,
                        prepare: Callable[[DomainKernel], None] | None = None) -> DomainKernel:
        """Boot Domain-0's kernel here (the hypervisor made the domain at
        start), with ``drivers(kernel)`` as its xenbus drivers: a driver
        domain's netback, say. Its xenbus speaks to xenstored's socket, as
        `xenlab dom0`'s does."""
        start = StartInfo(domid=0, name=abi.DOM0_NAME, secret=self.hv.dom0_secret,
                          hypervisor=self.address, doorbell=str(self.rundir / DOORBELL),
                          vcpus=self.hv.config.dom0_vcpus, console_log="",
                          xenstored=str(self.hv.xenstored_socket.path))
        return await self.boot(start, drivers=drivers, agent=agent, prepare=prepare)

    async def boot_domain(self, name: str, *, memory_mb: int = 16, drivers: Drivers = no_drivers,
                          agent: Agent = no_agent,
                          prepare: Callable[[DomainKernel], None] | None = None,
                          store_ring: bool = False, **spec) -> DomainKernel:
        """Create a domain through the toolstack (launcher "none", ``spec``:
        more DomainSpec fields) and boot its kernel here; ``store_ring``:
        on the store ring the toolstack made for it, as a launched domain's
        kernel boots (otherwise its xenstore goes over gRPC)."""
        reply = await self._create(name, memory_mb, "none", **spec)
        store = self.hv.xenstored.domains[reply.info.domid] if store_ring else None
        start = StartInfo(domid=reply.info.domid, name=name, secret=reply.secret,
                          hypervisor=self.address, doorbell=str(self.rundir / DOORBELL),
                          vcpus=reply.info.vcpus or 1, console_log="", agent=reply.agent,
                          agent_token=reply.agent_token,
                          store_gfn=store.gfn if store else 0, store_port=store.port if store else 0)
        return await self.boot(start, drivers=drivers, agent=agent, prepare=prepare)

    async def boot(self, start: StartInfo, *, drivers: Drivers = no_drivers,
                   agent: Agent = no_agent,
                   prepare: Callable[[DomainKernel], None] | None = None) -> DomainKernel:
        """Boot a kernel from ``start`` here; ``prepare(kernel)`` runs first
        (to hook ``on_netif_change`` before any device appears, say). The
        lab closes it at the end unless ``close_kernel`` did."""
        kernel = DomainKernel(start, drivers=drivers, agent=agent)
        if prepare is not None:
            prepare(kernel)
        try:
            await kernel.boot()
        except BaseException:
            await kernel.close()
            raise
        self.kernels[start.domid] = kernel
        return kernel

    async def close_kernel(self, kernel: DomainKernel) -> None:
        """Stop a kernel booted here, as if its process had gone: the
        hypervisor is not told (destroy the domain for that)."""
        self.kernels.pop(kernel.domid, None)
        await kernel.close()

    async def close(self) -> None:
        """Close every kernel (the last booted first), every client, then
        stop the hypervisor and remove its rundir."""
        try:
            for kernel in reversed(list(self.kernels.values())):
                await self.close_kernel(kernel)
            for client in self.clients:
                await client.close()
            await self.dom0.close()
        finally:
            await self.server.stop(grace=0.5)
            shutil.rmtree(self.rundir, ignore_errors=True)

    async def _create(self, name: str, memory_mb: int, launcher: str, **spec):
        return await self.dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=memory_mb, launcher=launcher, **spec)))


async def start_in_process_lab(total_memory_mb: int = 2048, log_level: str = "DEBUG",
                               **config) -> InProcessLab:
    """Start a hypervisor in this process (launcher "none" unless
    ``config`` says otherwise; HypervisorConfig's fields) in a new
    rundir. Close the lab when done; ``in_process_lab`` does."""
    rundir = short_tempdir()
    config = HypervisorConfig(**{"address": f"unix:{rundir}/hv.sock", "rundir": rundir,
                                 "total_memory_mb": total_memory_mb, "launcher": "none",
                                 "log_level": log_level, **config})
    server = HypervisorServer(config, Toolstack)
    try:
        await server.start()
    except BaseException:
        shutil.rmtree(rundir, ignore_errors=True)
        raise
    dom0 = HypervisorClient.connect(server.address, 0, server.hv.dom0_secret)
    return InProcessLab(server, server.address, dom0, rundir)


@contextlib.asynccontextmanager
async def in_process_lab(**config) -> AsyncIterator[InProcessLab]:
    """``start_in_process_lab``, closed on the way out."""
    lab = await start_in_process_lab(**config)
    try:
        yield lab
    finally:
        await lab.close()
