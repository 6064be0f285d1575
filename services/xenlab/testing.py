"""pytest fixtures shipped with xenlab, for our tests and for users'.

The plugin is registered through the ``pytest11`` entry point, so any
project that installs xenlab can use these fixtures:

    async def test_two_domains(hypervisor):
        domid, client = await hypervisor.create_domain("web")
        ...

* ``hypervisor``: an in-process hypervisor on a unix socket; domains are
  created without processes (launcher "none") unless asked, and each comes
  with a client that acts as that domain.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from xenlab.client import HypervisorClient
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.proto import domains_pb2


def short_tempdir(prefix: str = "xl-") -> Path:
    """A directory whose unix socket paths stay under the 108-byte limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class InProcessLab:
    server: object
    address: str
    dom0: HypervisorClient
    rundir: Path
    clients: list = field(default_factory=list)

    @property
    def hv(self):
        return self.server.hv

    async def create_domain(self, name: str, memory_mb: int = 16, launcher: str = "none",
                            **spec) -> tuple[int, HypervisorClient]:
        """Create a domain as the toolstack would; return its id and a
        client that acts as it."""
        reply = await self.dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=memory_mb, launcher=launcher, **spec)))
        client = HypervisorClient.connect(self.address, reply.info.domid, reply.secret)
        self.clients.append(client)
        return reply.info.domid, client

    def client_as(self, domid: int, secret: str) -> HypervisorClient:
        client = HypervisorClient.connect(self.address, domid, secret)
        self.clients.append(client)
        return client


@pytest_asyncio.fixture
async def hypervisor():
    from xenlab.hypervisor.server import HypervisorServer

    rundir = short_tempdir()
    config = HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir,
                              total_memory_mb=2048, launcher="none", log_level="DEBUG")
    server = HypervisorServer(config)
    await server.start()
    dom0 = HypervisorClient.connect(server.address, 0, server.hv.dom0_secret)
    lab = InProcessLab(server, server.address, dom0, rundir)
    try:
        yield lab
    finally:
        for client in lab.clients:
            await client.close()
        await dom0.close()
        await server.stop(grace=0.5)
        shutil.rmtree(rundir, ignore_errors=True)
