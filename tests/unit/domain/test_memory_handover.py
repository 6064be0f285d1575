"""A domain whose launcher cannot hand it descriptors (a docker container,
which mounts neither the rundir nor the shm dir: issue 13, "every domU
container ... mounts the rundir (with dom0.secret) and every domain's
memory") takes its memory object from the doorbell's OK, against the
in-process hypervisor: only its own, only once, and it fails clearly when
there is no doorbell to take it from."""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys

import pytest

from xenlab.boot.domu import NoMemory, _enter_domain
from xenlab.domain.evtchn import GuestEventChannels, connect_for_memory
from xenlab.domain.hypercall import Hypercalls
from xenlab.launchers.base import DomainHandles, Launcher
from xenlab.proto import common_pb2, domains_pb2, evtchn_pb2, memory_pb2
from xenlab.xen import abi
from xenlab.xen.errors import XenError
from xenlab.xen.shared_info import SharedInfo
from xenlab.xen.start_info import StartInfo


def container_start_info(lab, domid: int, secret: str, doorbell: str | None = None) -> StartInfo:
    """What the docker launcher sends: no descriptor, a doorbell path."""
    return StartInfo(domid=domid, name=f"d{domid}", secret=secret, hypervisor=lab.address,
                     doorbell=str(lab.hv.rundir.doorbell) if doorbell is None else doorbell,
                     vcpus=1, console_log="")


async def create(lab, name: str) -> tuple[int, str]:
    reply = await lab.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=16, launcher="none")))
    return reply.info.domid, reply.secret


def segment_inode(lab, domid: int) -> int:
    return os.stat(lab.hv.memory.segment_path(domid)).st_ino


async def ask(lab, domid: int, secret: str) -> tuple[socket.socket, int]:
    return await asyncio.to_thread(connect_for_memory, str(lab.hv.rundir.doorbell), domid, secret)


async def test_a_domain_takes_its_own_memory_from_the_doorbell_and_only_once(hypervisor):
    web, web_secret = await create(hypervisor, "web")
    db, db_secret = await create(hypervisor, "db")
    sock, fd = await ask(hypervisor, web, web_secret)
    try:
        assert os.fstat(fd).st_ino == segment_inode(hypervisor, web)
    finally:
        os.close(fd)
        sock.close()
    # Asking again (a compromised domain after boot, wanting a descriptor to
    # shrink the segment with) is refused, on any connection.
    with pytest.raises(XenError) as err:
        await ask(hypervisor, web, web_secret)
    assert err.value.errno == errno.EPERM
    # Another domain's secret never yields web's memory, nor its own under web's id.
    with pytest.raises(XenError) as err:
        await ask(hypervisor, web, db_secret)
    assert err.value.errno == errno.EACCES
    sock, fd = await ask(hypervisor, db, db_secret)
    try:
        assert os.fstat(fd).st_ino == segment_inode(hypervisor, db) != segment_inode(hypervisor, web)
    finally:
        os.close(fd)
        sock.close()


async def test_a_container_domain_maps_the_memory_and_rings_on_the_same_connection(hypervisor):
    domid, secret = await create(hypervisor, "web")
    memory, paging, doorbell = await asyncio.to_thread(
        _enter_domain, container_start_info(hypervisor, domid, secret))
    assert paging is None                   # direct paging: no pool
    assert memory.length == os.stat(hypervisor.hv.memory.segment_path(domid)).st_size
    client = hypervisor.client_as(domid, secret)
    mm = await client.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
        domain=common_pb2.DomainRef(domid=domid)))
    shared = SharedInfo(memory.view, mm.shared_info_offset, 1)
    evtchn = GuestEventChannels(Hypercalls(client).evtchn, shared, doorbell, secret)
    try:
        await evtchn.start()
        assert evtchn.via_doorbell           # the greeted connection, no second HELLO
        # The timer's upcall lands in the mapping: it is the hypervisor's segment.
        port = await evtchn.bind_virq(abi.VIRQ_TIMER, 0)
        fired = asyncio.Event()
        evtchn.bind_handler(port, lambda p: fired.set())
        await client.evtchn.SetTimer(evtchn_pb2.SetTimerRequest(vcpu=0, timeout=0.01))
        await asyncio.wait_for(fired.wait(), 5)
    finally:
        await evtchn.close()
        shared.release()
        memory.close()


async def test_a_container_domain_without_a_doorbell_says_it_has_no_memory(hypervisor, tmp_path):
    """It cannot fall back to gRPC for its memory: it stops, saying why."""
    domid, secret = await create(hypervisor, "web")
    start = container_start_info(hypervisor, domid, secret, doorbell=str(tmp_path / "gone.sock"))
    with pytest.raises(NoMemory, match="gone.sock.*gRPC fallback carries no memory"):
        await asyncio.to_thread(_enter_domain, start)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.boot.domu", "--orphan-ok", stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(start.to_json().encode() + b"\n"), 60)
    assert proc.returncode == 2
    assert f"d{domid}: no memory to run in" in err.decode()


class HandingLauncher(Launcher):
    """A launcher that takes the handles, as the local one does, and keeps
    them instead of starting a process."""
    name = "handing"
    takes_handles = True

    def __init__(self):
        self.handles: list[DomainHandles] = []

    async def start(self, info, handles=None):
        self.handles.append(handles)
        return None


async def test_a_domain_handed_its_memory_at_start_cannot_ask_the_doorbell_for_it_again(hypervisor):
    """A local domain (its launcher passed the descriptor) that asks again,
    to get a descriptor it could shrink the segment through, is refused."""
    hypervisor.hv.launchers["handing"] = HandingLauncher()
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="local", memory_mb=16, launcher="handing")))
    assert hypervisor.hv.launchers["handing"].handles[0].memory_fd >= 0
    with pytest.raises(XenError) as err:
        await ask(hypervisor, reply.info.domid, reply.secret)
    assert err.value.errno == errno.EPERM and "once" in err.value.message
