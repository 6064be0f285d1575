"""GuestEventChannels end to end against the in-process hypervisor: two
domains notify each other through the doorbell, the gRPC fallback, or a mix."""
from __future__ import annotations

import asyncio
import mmap
import os

import pytest

from xenlab.domain.evtchn import GuestEventChannels
from xenlab.domain.hypercall import Hypercalls
from xenlab.proto import common_pb2, domains_pb2, evtchn_pb2
from xenlab.xen import abi
from xenlab.xen.shared_info import SharedInfo


class Guest:
    """What a domain kernel holds: its client, its shared_info mapping and
    its event channels."""

    def __init__(self, domid, client, secret, shared, mm, evtchn):
        self.domid, self.client, self.secret = domid, client, secret
        self.shared, self.mm, self.evtchn = shared, mm, evtchn

    async def close(self):
        await self.evtchn.close()
        self.shared.release()
        self.mm.close()


async def boot(lab, name: str, doorbell: bool, vcpus: int = 1) -> Guest:
    reply = await lab.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=16, vcpus=vcpus, launcher="none")))
    domid, secret = reply.info.domid, reply.secret
    client = lab.client_as(domid, secret)
    info = await client.evtchn.GetDoorbell(common_pb2.Empty())
    fd = os.open(info.shared_info_shm, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, abi.PAGE_SIZE, offset=info.shared_info_offset)
    finally:
        os.close(fd)
    shared = SharedInfo(mm, 0, vcpus)
    evtchn = GuestEventChannels(Hypercalls(client).evtchn, shared,
                                info.path if doorbell else None, secret)
    await evtchn.start()
    return Guest(domid, client, secret, shared, mm, evtchn)


class Recorder:
    def __init__(self):
        self.ports: list[int] = []
        self._event = asyncio.Event()

    def __call__(self, port: int) -> None:
        self.ports.append(port)
        self._event.set()

    async def wait(self, n: int = 1) -> list[int]:
        async def until():
            while len(self.ports) < n:
                self._event.clear()
                await self._event.wait()
        await asyncio.wait_for(until(), 5)
        return self.ports


@pytest.fixture
async def pair_factory(hypervisor):
    booted: list[Guest] = []

    async def make(doorbell_a: bool, doorbell_b: bool) -> tuple[Guest, Guest]:
        a = await boot(hypervisor, f"a{len(booted)}", doorbell_a)
        booted.append(a)
        b = await boot(hypervisor, f"b{len(booted)}", doorbell_b)
        booted.append(b)
        return a, b

    yield make
    for g in booted:
        await g.close()


async def connect(a: Guest, b: Guest, handler_a, handler_b) -> tuple[int, int]:
    """The netfront/netback handshake: A offers a port to B, B binds it."""
    pa = await a.evtchn.alloc_unbound(b.domid)
    a.evtchn.bind_handler(pa, handler_a)
    pb = await b.evtchn.bind_interdomain(a.domid, pa)
    b.evtchn.bind_handler(pb, handler_b)
    return pa, pb


@pytest.mark.parametrize("doorbell_a,doorbell_b", [(True, True), (False, False), (True, False)],
                         ids=["doorbell", "grpc", "mixed"])
async def test_notify_runs_the_peer_handler(pair_factory, doorbell_a, doorbell_b):
    a, b = await pair_factory(doorbell_a, doorbell_b)
    assert (a.evtchn.via_doorbell, b.evtchn.via_doorbell) == (doorbell_a, doorbell_b)
    got_a, got_b = Recorder(), Recorder()
    pa, pb = await connect(a, b, got_a, got_b)
    # B's bind raised its own end once (Xen does, so nothing sent earlier is lost).
    assert await got_b.wait(1) == [pb]
    b.evtchn.notify(pb)
    assert await got_a.wait(1) == [pa]
    a.evtchn.notify(pa)
    assert await got_b.wait(2) == [pb, pb]


async def test_many_notifies_are_all_seen(pair_factory):
    a, b = await pair_factory(True, True)
    got_a = Recorder()
    pa, pb = await connect(a, b, got_a, lambda p: None)
    for _ in range(50):
        b.evtchn.notify(pb)
        await got_a.wait(len(got_a.ports) + 1)
    assert set(got_a.ports) == {pa} and len(got_a.ports) == 50


async def test_masked_port_waits_for_unmask(pair_factory):
    a, b = await pair_factory(True, True)
    got_a = Recorder()
    pa, pb = await connect(a, b, got_a, lambda p: None)
    a.evtchn.mask(pa)
    b.evtchn.notify(pb)
    st = None
    for _ in range(100):
        st = await a.client.evtchn.Status(evtchn_pb2.StatusRequest(dom=a.domid, port=pa))
        if st.pending:
            break
        await asyncio.sleep(0.01)
    assert st.pending and st.masked and got_a.ports == []
    await a.evtchn.unmask(pa)
    assert await got_a.wait(1) == [pa]


async def test_a_failing_handler_does_not_stop_the_loop(pair_factory):
    a, b = await pair_factory(True, True)
    seen = Recorder()

    def flaky(port):
        seen(port)
        if len(seen.ports) == 1:
            raise RuntimeError("boom")

    pa, pb = await connect(a, b, flaky, lambda p: None)
    b.evtchn.notify(pb)
    await seen.wait(1)
    b.evtchn.notify(pb)
    assert await seen.wait(2) == [pa, pa]
    assert a.evtchn.stats["handler_error"] == 1


async def test_async_handlers_are_scheduled(pair_factory):
    a, b = await pair_factory(True, True)
    done = asyncio.Event()

    async def handler(port):
        done.set()

    pa, pb = await connect(a, b, handler, lambda p: None)
    b.evtchn.notify(pb)
    await asyncio.wait_for(done.wait(), 5)


async def test_event_before_handler_is_delivered_on_bind(pair_factory):
    a, b = await pair_factory(True, True)
    pa = await a.evtchn.alloc_unbound(b.domid)
    pb = await b.evtchn.bind_interdomain(a.domid, pa)
    b.evtchn.notify(pb)
    while a.evtchn.stats["unhandled"] == 0:
        await asyncio.sleep(0.01)
    got = Recorder()
    a.evtchn.bind_handler(pa, got)
    assert await got.wait(1) == [pa]


async def test_timer_virq_through_the_guest(pair_factory):
    a, _ = await pair_factory(True, False)
    got = Recorder()
    port = await a.evtchn.bind_virq(abi.VIRQ_TIMER)
    a.evtchn.bind_handler(port, got)
    await a.client.evtchn.SetTimer(evtchn_pb2.SetTimerRequest(vcpu=0, timeout=0.01))
    assert await got.wait(1) == [port]


async def test_close_port_unbinds_the_peer(pair_factory):
    a, b = await pair_factory(True, True)
    pa, pb = await connect(a, b, lambda p: None, lambda p: None)
    await b.evtchn.close_port(pb)
    st = await a.client.evtchn.Status(evtchn_pb2.StatusRequest(dom=a.domid, port=pa))
    assert st.state == evtchn_pb2.ChannelStatus.UNBOUND


async def test_missing_doorbell_path_falls_back(hypervisor):
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="lost", memory_mb=16, launcher="none")))
    client = hypervisor.client_as(reply.info.domid, reply.secret)
    shared = SharedInfo(bytearray(abi.PAGE_SIZE), 0, 1)
    evtchn = GuestEventChannels(Hypercalls(client).evtchn, shared, "/nonexistent/evtchn.sock",
                                reply.secret)
    await evtchn.start()
    assert not evtchn.via_doorbell
    await evtchn.close()


async def test_destroyed_domain_loses_the_doorbell_quietly(hypervisor):
    g = await boot(hypervisor, "doomed", True)
    assert g.evtchn.via_doorbell
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=g.domid))
    for _ in range(200):
        if not g.evtchn.via_doorbell:
            break
        await asyncio.sleep(0.01)
    assert not g.evtchn.via_doorbell
    await g.evtchn.close()
    g.shared.release()
    g.mm.close()
