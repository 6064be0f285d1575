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
from xenlab.testing import eventually
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


# -- the direct path: a notification object per interdomain channel ------------------
async def direct(*ends: tuple[Guest, int]) -> None:
    """Wait until each (guest, port) holds its channel's notification object."""
    await eventually(lambda: all(p in g.evtchn.direct_ports() for g, p in ends),
                     "the channels' notification objects")


def end_of(guest: Guest, port: int):
    """The raw socket a domain holds for its port: what a hostile kernel can use."""
    return guest.evtchn._direct[port][0]


async def boot_three(hypervisor, doorbell=(True, True, True)):
    return [await boot(hypervisor, name, d) for name, d in zip(("x", "y", "z"), doorbell)]


async def test_interdomain_notifications_bypass_the_hypervisor(hypervisor, pair_factory):
    a, b = await pair_factory(True, True)
    got_a, got_b = Recorder(), Recorder()
    pa, pb = await connect(a, b, got_a, got_b)
    await got_b.wait(1)
    await direct((a, pa), (b, pb))
    before = dict(hypervisor.hv.ops)
    for i in range(1, 51):
        b.evtchn.notify(pb)
        await got_a.wait(i)
        a.evtchn.notify(pa)
        await got_b.wait(i + 1)
    assert dict(hypervisor.hv.ops) == before
    assert a.evtchn.stats["direct_send"] == 50 and b.evtchn.stats["direct_signal"] == 50
    assert set(got_a.ports) == {pa} and set(got_b.ports) == {pb}


async def test_a_channel_object_reaches_only_its_own_peer_port(hypervisor):
    x, y, z = await boot_three(hypervisor)
    try:
        got_x1, got_x2, got_z = Recorder(), Recorder(), Recorder()
        x1, y1 = await connect(x, y, got_x1, lambda p: None)
        x2, z2 = await connect(x, z, got_x2, got_z)
        await direct((x, x1), (y, y1), (x, x2), (z, z2))
        # z holds an object for its own channel with x, none for x's with y
        assert z.evtchn.direct_ports() == [z2]
        assert hypervisor.hv.doorbell.linked(z.domid) == [z2]
        # whatever y writes on its object, it raises x's end of its channel alone
        for _ in range(5):
            end_of(y, y1).send(b"any bytes, not a port number")
        assert await got_x1.wait(1) == [x1]
        await asyncio.sleep(0.05)
        assert got_x2.ports == [] and got_z.ports == [z2]    # z's own bind event only
        # and naming x's port on y's doorbell is y's port namespace: nothing for x
        y.evtchn._ring((x2,))
        await asyncio.sleep(0.05)
        assert got_x2.ports == []
    finally:
        for g in (x, y, z):
            await g.close()


async def test_a_closed_channel_stops_signalling_at_once(hypervisor, pair_factory):
    a, b = await pair_factory(True, True)
    got_a = Recorder()
    pa, pb = await connect(a, b, got_a, lambda p: None)
    await direct((a, pa), (b, pb))
    kept = end_of(b, pb).dup()          # a hostile B keeps a copy of its object
    try:
        await a.evtchn.close_port(pa)
        with pytest.raises(BrokenPipeError):
            kept.send(b"\x01")
        # nor can B's kernel signal through it: its notify goes to the hypervisor
        b.evtchn.notify(pb)
        await eventually(lambda: pb not in b.evtchn.direct_ports(), "b's object to be revoked")
        st = await a.client.evtchn.Status(evtchn_pb2.StatusRequest(dom=a.domid, port=pa))
        assert st.state == evtchn_pb2.ChannelStatus.CLOSED and not st.pending
        assert got_a.ports == []
    finally:
        kept.close()


async def test_a_reset_revokes_the_channel_at_once(hypervisor, pair_factory):
    a, b = await pair_factory(True, True)
    pa, pb = await connect(a, b, lambda p: None, lambda p: None)
    await direct((a, pa), (b, pb))
    kept = end_of(a, pa).dup()
    try:
        await hypervisor.dom0.evtchn.Reset(evtchn_pb2.ResetRequest(dom=b.domid))
        with pytest.raises(BrokenPipeError):
            kept.send(b"\x01")
    finally:
        kept.close()


async def test_a_peer_that_dies_leaves_no_one_blocked(hypervisor, pair_factory):
    a, b = await pair_factory(True, True)
    pa, pb = await connect(a, b, lambda p: None, lambda p: None)
    await direct((a, pa), (b, pb))
    # B's kernel stops reading (hung, or dead with the hypervisor's copy
    # still open): A's notifications fill B's end, then cost nothing
    asyncio.get_running_loop().remove_reader(end_of(b, pb))
    for _ in range(5000):
        a.evtchn.notify(pa)
    assert a.evtchn.stats["direct_coalesced"] > 0
    # B is destroyed: A's object is revoked and A's notify goes back to the
    # hypervisor, which finds the port unbound (Xen's send: nothing to do)
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=b.domid))
    await eventually(lambda: pa not in a.evtchn.direct_ports(), "a's object to be revoked")
    a.evtchn.notify(pa)
    st = await a.client.evtchn.Status(evtchn_pb2.StatusRequest(dom=a.domid, port=pa))
    assert st.state == evtchn_pb2.ChannelStatus.UNBOUND


async def test_a_storm_on_one_channel_costs_only_that_channel(hypervisor):
    x, y, z = await boot_three(hypervisor)
    try:
        got_x1, got_x2 = Recorder(), Recorder()
        x1, y1 = await connect(x, y, got_x1, lambda p: None)
        x2, z2 = await connect(x, z, got_x2, lambda p: None)
        await direct((x, x1), (y, y1), (x, x2), (z, z2))
        before = dict(hypervisor.hv.ops)
        storming = True

        async def storm():
            sock = end_of(y, y1)
            while storming:
                try:
                    while True:
                        sock.send(b"\x01")
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)

        task = asyncio.create_task(storm())
        try:
            for i in range(1, 21):
                z.evtchn.notify(z2)
                await got_x2.wait(i)
        finally:
            storming = False
            await task
        assert got_x2.ports == [x2] * 20
        assert got_x1.ports and set(got_x1.ports) == {x1}
        assert dict(hypervisor.hv.ops) == before
    finally:
        for g in (x, y, z):
            await g.close()


async def test_a_domain_without_the_direct_path_keeps_the_hypervisors(hypervisor, pair_factory):
    a, b = await pair_factory(True, False)
    got_a, got_b = Recorder(), Recorder()
    pa, pb = await connect(a, b, got_a, got_b)
    await got_b.wait(1)
    a.evtchn.notify(pa)
    b.evtchn.notify(pb)
    assert await got_b.wait(2) == [pb, pb] and await got_a.wait(1) == [pa]
    assert a.evtchn.direct_ports() == [] and hypervisor.hv.doorbell.linked(a.domid) == [pa]
