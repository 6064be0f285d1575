"""GNTTABOP_copy over the event-channel doorbell (COPY/COPIED) against the
in-process hypervisor: the same GNTST_* codes as the copy hypercall for
good and refused ops, several batches in flight, a malformed COPY closing
only its own connection, and the hypercall fallback when there is no
doorbell (xenlab.domain.hypercall.gnttab's GrantTable.copy)."""
from __future__ import annotations

import asyncio
import mmap
import os
import socket

import pytest

from xenlab.domain.evtchn import GuestEventChannels
from xenlab.domain.hypercall import GrantTable, Hypercalls
from xenlab.proto import common_pb2, domains_pb2, grants_pb2
from xenlab.xen import abi
from xenlab.xen import doorbell as wire
from xenlab.xen.grant_table import GrantFrames
from xenlab.xen.shared_info import SharedInfo

PAGE = abi.PAGE_SIZE
SELF = abi.DOMID_SELF
SRC_GREF, DST_GREF = abi.GNTCOPY_source_gref, abi.GNTCOPY_dest_gref


class Domain:
    def __init__(self, domid, secret, client):
        self.domid, self.secret, self.client = domid, secret, client
        self.evtchn: GuestEventChannels | None = None
        self._mm = self._shared = None

    async def start_evtchn(self, doorbell: bool) -> GuestEventChannels:
        info = await self.client.evtchn.GetDoorbell(common_pb2.Empty())
        fd = os.open(info.shared_info_shm, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, PAGE, offset=info.shared_info_offset)
        finally:
            os.close(fd)
        self._shared = SharedInfo(self._mm, 0, 1)
        self.evtchn = GuestEventChannels(Hypercalls(self.client).evtchn, self._shared,
                                         info.path if doorbell else None, self.secret)
        await self.evtchn.start()
        assert self.evtchn.via_doorbell == doorbell
        return self.evtchn

    async def close(self) -> None:
        if self.evtchn is not None:
            await self.evtchn.close()
            self._shared.release()
            self._mm.close()


@pytest.fixture
async def doms(hypervisor):
    made: list[Domain] = []

    async def make(name: str) -> Domain:
        reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=16, launcher="none")))
        dom = Domain(reply.info.domid, reply.secret,
                     hypervisor.client_as(reply.info.domid, reply.secret))
        made.append(dom)
        return dom

    yield make
    for dom in made:
        await dom.close()


@pytest.fixture
async def grants(hypervisor, doms):
    """front grants to back a writable page (gfn 5) and a read-only one
    (gfn 6), and to a third domain gfn 7, writing its grant frame (gfn 20)
    as its kernel would; back copies to and from its own gfn 3. Returns
    the lab, the domains and each case's op and GNTST_*."""
    front, back, other = await doms("front"), await doms("back"), await doms("other")
    await front.client.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=[20]))
    table = GrantFrames([hypervisor.hv.memory.frame(front.domid, 20)])
    rw, ro, theirs = 8, 9, 10
    table.grant(rw, back.domid, 5, readonly=False)
    table.grant(ro, back.domid, 6, readonly=True)
    table.grant(theirs, other.domid, 7, readonly=False)
    hypervisor.hv.memory.frame(front.domid, 5)[:PAGE] = bytes(range(256)) * 16
    f = front.domid
    cases = {
        "in": (wire.GnttabCopy(rw, f, 0, 3, SELF, 100, 64, SRC_GREF), abi.GNTST_okay),
        "out": (wire.GnttabCopy(3, SELF, 100, rw, f, 1000, 64, DST_GREF), abi.GNTST_okay),
        "bad ref": (wire.GnttabCopy(1 << 20, f, 0, 3, SELF, 0, 64, SRC_GREF), abi.GNTST_bad_gntref),
        "unused ref": (wire.GnttabCopy(400, f, 0, 3, SELF, 0, 64, SRC_GREF),
                       abi.GNTST_general_error),
        "other domain's grant": (wire.GnttabCopy(theirs, f, 0, 3, SELF, 0, 64, SRC_GREF),
                                 abi.GNTST_general_error),
        "past page end": (wire.GnttabCopy(rw, f, PAGE - 10, 3, SELF, 0, 64, SRC_GREF),
                          abi.GNTST_bad_copy_arg),
        "readonly dest": (wire.GnttabCopy(3, SELF, 0, ro, f, 0, 64, DST_GREF),
                          abi.GNTST_general_error),
        "foreign gfn": (wire.GnttabCopy(5, f, 0, 3, SELF, 0, 64, 0), abi.GNTST_permission_denied),
        "no such domain": (wire.GnttabCopy(rw, 999, 0, 3, SELF, 0, 64, SRC_GREF),
                           abi.GNTST_bad_domain),
    }
    yield hypervisor, front, back, cases
    table.release()


def gnttab_of(dom: Domain, evtchn: GuestEventChannels | None) -> GrantTable:
    return GrantTable(dom.client.grants, dom.domid, doorbell=evtchn)


async def test_doorbell_copy_gives_the_hypercall_statuses(grants):
    lab, front, back, cases = grants
    ops = [op for op, _ in cases.values()]
    expected = [status for _, status in cases.values()]
    assert await gnttab_of(back, None).copy_hypercall(ops) == expected

    gnttab = gnttab_of(back, await back.start_evtchn(doorbell=True))
    before = lab.hv.doorbell.stats["copy"]
    assert await gnttab.copy(ops) == expected
    assert lab.hv.doorbell.stats["copy"] == before + 1      # it went over the doorbell
    memory = lab.hv.memory
    assert bytes(memory.frame(back.domid, 3)[100:164]) == bytes(range(64))
    assert bytes(memory.frame(front.domid, 5)[1000:1064]) == bytes(range(64))


async def test_without_a_doorbell_the_copy_is_a_hypercall(grants):
    lab, front, back, cases = grants
    gnttab = gnttab_of(back, await back.start_evtchn(doorbell=False))
    ops = [op for op, _ in cases.values()]
    before = lab.hv.doorbell.stats["copy"]
    assert await gnttab.copy(ops) == [status for _, status in cases.values()]
    assert lab.hv.doorbell.stats["copy"] == before
    assert bytes(lab.hv.memory.frame(back.domid, 3)[100:164]) == bytes(range(64))


async def test_batches_in_flight_and_over_the_batch_limit(grants):
    lab, front, back, cases = grants
    gnttab = gnttab_of(back, await back.start_evtchn(doorbell=True))
    good, bad = cases["in"][0], cases["bad ref"][0]
    big = [good, bad] * (wire.MAX_COPY_BATCH // 2 + 3)      # split into two COPYs
    answers = [gnttab.copy([good]), gnttab.copy([bad, good]), gnttab.copy(big)]
    assert await asyncio.gather(*answers) == [
        [abi.GNTST_okay], [abi.GNTST_bad_gntref, abi.GNTST_okay],
        [abi.GNTST_okay, abi.GNTST_bad_gntref] * (wire.MAX_COPY_BATCH // 2 + 3)]


async def test_a_lost_doorbell_falls_back_to_the_hypercall(grants):
    lab, front, back, cases = grants
    evtchn = await back.start_evtchn(doorbell=True)
    gnttab = gnttab_of(back, evtchn)
    # The hypervisor drops the connection: copies in flight and later
    # ones finish as hypercalls, with the same statuses.
    answer = gnttab.copy([cases["in"][0], cases["bad ref"][0]])
    lab.hv.doorbell.disconnect(back.domid)
    assert await answer == [abi.GNTST_okay, abi.GNTST_bad_gntref]
    for _ in range(100):
        if not evtchn.via_doorbell:
            break
        await asyncio.sleep(0.01)
    assert not evtchn.via_doorbell
    assert await gnttab.copy([cases["readonly dest"][0]]) == [abi.GNTST_general_error]


# -- the wire, raw ----------------------------------------------------------------------------
async def hello(lab, dom: Domain) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await loop.sock_connect(sock, lab.hv.doorbell.path)
    sock.send(wire.Hello(dom.domid, dom.secret).encode())
    assert wire.decode(await recv(sock)) == wire.Ok(dom.domid)
    return sock


async def recv(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(
        asyncio.get_running_loop().sock_recv(sock, wire.MAX_DATAGRAM + 1), 5)


async def copied(sock: socket.socket) -> wire.Copied:
    while True:
        msg = wire.decode(await recv(sock))
        if isinstance(msg, wire.Copied):
            return msg


def malformed_copies(op: wire.GnttabCopy) -> dict[str, bytes]:
    good = wire.Copy(9, (op, op)).encode()
    head = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_COPY)
    return {
        "count past the ops": good[:-wire.GNTTAB_COPY.size],
        "trailing bytes": good + b"\0",
        "no ops": head + (9).to_bytes(4, "little") + bytes(4),
        "unknown flag": wire.Copy(9, (op._replace(flags=0x4),)).encode(),
        "over the batch limit": head + (9).to_bytes(4, "little")
        + (wire.MAX_COPY_BATCH + 1).to_bytes(2, "little") + bytes(2)
        + wire.GNTTAB_COPY.pack(*op) * (wire.MAX_COPY_BATCH + 1),
        "a COPIED from the domain": wire.Copied(9, (0,)).encode(),
    }


@pytest.mark.parametrize("name", list(malformed_copies(wire.GnttabCopy(1, 1, 0, 1, 1, 0, 1, 0))))
async def test_malformed_copy_closes_only_that_connection(grants, name):
    lab, front, back, cases = grants
    bad_sock, good_sock = await hello(lab, back), await hello(lab, front)
    malformed = lab.hv.doorbell.stats["malformed"]
    bad_sock.send(malformed_copies(cases["in"][0])[name])
    assert await recv(bad_sock) == b""
    assert lab.hv.doorbell.stats["malformed"] == malformed + 1
    # front's connection still copies; its own page is a gfn it may name.
    good_sock.send(wire.Copy(77, (wire.GnttabCopy(5, SELF, 0, 9, SELF, 0, 8, 0),)).encode())
    assert await copied(good_sock) == wire.Copied(77, (abi.GNTST_okay,))
    bad_sock.close()
    good_sock.close()


async def test_a_domain_not_reading_its_answers_stalls_only_itself(grants):
    lab, front, back, cases = grants
    slow, fast = await hello(lab, back), await hello(lab, front)
    op = cases["in"][0]
    request = wire.Copy(0, (op,) * wire.MAX_COPY_BATCH).encode()
    sent = 0
    # Keep asking without reading until our own socket pushes back.
    for seq in range(2000):
        try:
            slow.send(request[:4] + seq.to_bytes(4, "little") + request[8:])
        except BlockingIOError:
            break
        sent += 1
        if seq % 16 == 15:
            await asyncio.sleep(0.01)
    assert 0 < sent < 2000
    fast.send(wire.Copy(5, (wire.GnttabCopy(5, SELF, 0, 9, SELF, 0, 8, 0),)).encode())
    assert await copied(fast) == wire.Copied(5, (abi.GNTST_okay,))
    # Reading now gets every answer, in order, the connection intact.
    for seq in range(sent):
        reply = await copied(slow)
        assert reply.seq == seq and reply.statuses == (abi.GNTST_okay,) * wire.MAX_COPY_BATCH
    assert lab.hv.doorbell.connections(back.domid) == 1
    slow.close()
    fast.close()


def test_copy_messages_round_trip():
    op = wire.GnttabCopy(2**40, SELF, 4095, 7, 3, 0, 1, SRC_GREF | DST_GREF)
    for msg in (wire.Copy(0xFFFFFFFF, (op,) * wire.MAX_COPY_BATCH), wire.Copy(1, (op,)),
                wire.Copied(3, (0, -1, -10)), wire.Copied(4, (0,) * wire.MAX_COPY_BATCH)):
        assert wire.decode(msg.encode()) == msg
    assert len(wire.Copy(1, (op,) * wire.MAX_COPY_BATCH).encode()) <= wire.MAX_DATAGRAM
    with pytest.raises(ValueError):
        wire.Copy(1, ()).encode()
    with pytest.raises(ValueError):
        wire.Copy(1, (op._replace(len=PAGE * 32),)).encode()     # len is a u16
