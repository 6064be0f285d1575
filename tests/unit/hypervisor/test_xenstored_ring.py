"""Domains reach xenstore over their store ring: what the toolstack sets up
at creation, the wire protocol over the ring, the notifications, and
hostile guests that cost only their own connection. The guest's end is
tests/xs_client.py's, written from xs_wire.h alone."""
from __future__ import annotations

import asyncio

import grpc
import pytest

import xs_client as xs
from xs_client import Closed, XsClient, XsError, ring_client, set_idx, z
from xenlab.hypervisor.identity import Caller
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.proto import memory_pb2
from xenlab.testing_invariants import invariant_violations
from xenlab.xen import abi
from xenlab.xen import xs_wire as w
from xenlab.xen.abi import EvtchnState

pytestmark = pytest.mark.timeout(60)
DOM0 = Caller(0, True)


class Guest:
    """A domain created by the toolstack, and its end of the store ring."""

    def __init__(self, lab, domid: int, client):
        self.lab, self.hv, self.domid, self.grpc = lab, lab.hv, domid, client
        self.port = int(self.hv.xenstore.read(DOM0, f"/local/domain/{domid}/store/port"))
        self.page = self.hv.memory.frame(domid, STORE_GFN)
        self.xs = ring_client(self.page, self.kick)

    def kick(self) -> None:
        self.hv.evtchn.send(self.domid, self.port)      # EVTCHNOP_send on the store port

    def pending(self) -> bool:
        return self.hv.evtchn.status(DOM0, self.domid, self.port)["pending"]

    def clear_pending(self) -> None:
        buf, offset = self.hv.memory.shared_info_buffer(self.domid)
        from xenlab.xen.shared_info import SharedInfo
        info = SharedInfo(buf, offset, 1)
        info.clear_port(self.port)
        info.release()

    def word(self, offset: int) -> int:
        return xs.idx(self.page, offset)


@pytest.fixture
async def guests(hypervisor):
    made = []

    async def make(name: str) -> Guest:
        domid, client = await hypervisor.create_domain(name)
        guest = Guest(hypervisor, domid, client)
        made.append(guest)
        return guest
    yield make
    for guest in made:
        guest.page.release()


async def dom0_socket(hypervisor) -> XsClient:
    return await XsClient.connect(hypervisor.hv.rundir.xenstored_socket)


async def test_the_toolstack_sets_up_the_store_ring_as_libxl_does(hypervisor, guests):
    g = await guests("g")
    hv = hypervisor.hv
    assert hv.xenstore.read(DOM0, f"/local/domain/{g.domid}/store/ring-ref") == str(STORE_GFN).encode()
    for key in ("store", "store/ring-ref", "store/port"):
        assert hv.xenstore.get_perms(DOM0, f"/local/domain/{g.domid}/{key}") == [(0, "n"), (g.domid, "r")]
    ch = hv.evtchn.channel(g.domid, g.port)
    assert (ch.state, ch.remote_dom) == (EvtchnState.interdomain, abi.DOMID_XEN)
    assert g.word(xs.SERVER_FEATURES) == w.XENSTORE_SERVER_FEATURE_ERROR
    assert g.word(xs.CONNECTION) == w.XENSTORE_CONNECTED
    assert not g.pending()      # a new domain looks at its ring when it boots
    assert invariant_violations(hv) == []


async def test_a_guest_speaks_xenstore_over_its_ring(hypervisor, guests):
    g = await guests("talker")
    assert await g.xs.read("name") == b"talker"
    assert await g.xs.read(f"/local/domain/{g.domid}/domid") == str(g.domid).encode()
    await g.xs.write("data/greeting", b"hello\0world")
    assert hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{g.domid}/data/greeting") == b"hello\0world"
    assert await g.xs.directory("data") == ["greeting"]
    assert await g.xs.get_perms("data/greeting") == [f"n{g.domid}"]
    with pytest.raises(XsError) as err:
        await g.xs.read("/local/domain/0/name")
    assert err.value.name == "EACCES"
    with pytest.raises(XsError) as err:
        await g.xs.write("name", "renamed")
    assert err.value.name == "EACCES"
    for call in (g.xs.control("print", "x"), g.xs.release(g.domid), g.xs.is_domain_introduced(0)):
        with pytest.raises(XsError) as err:
            await call
        assert err.value.name == "EACCES"
    tx = await g.xs.transaction_start()
    await g.xs.write("data/tx", "1", tx)
    await g.xs.transaction_end(tx)
    assert await g.xs.read("data/tx") == b"1"


async def test_watch_events_reach_the_guest_with_a_notification(hypervisor, guests):
    g = await guests("watcher")
    await g.xs.watch("control/shutdown", "sd")
    assert await g.xs.next_event() == ("control/shutdown", "sd")       # relative, as set
    g.clear_pending()
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{g.domid}/control/shutdown", b"poweroff")
    for _ in range(200):
        if g.pending():
            break
        await asyncio.sleep(0.005)
    assert g.pending()
    assert await g.xs.next_event() == ("control/shutdown", "sd")


async def test_a_reply_longer_than_the_ring_arrives_in_pieces(hypervisor, guests):
    g = await guests("big")
    value = bytes(range(256)) * 12                  # 3072 bytes, three rings' worth
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{g.domid}/data/big", value)
    assert await g.xs.read("data/big") == value
    back = value[:2048]                             # the most a domain's node may hold
    await g.xs.write("data/back", back)
    assert hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{g.domid}/data/back") == back


async def test_the_guest_cannot_balloon_out_its_store_page(hypervisor, guests):
    g = await guests("balloon")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await g.grpc.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
            domid=g.domid, gfns=[STORE_GFN]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "xenstore ring" in info.value.details()
    assert await g.xs.read("name") == b"balloon"


@pytest.mark.parametrize("attack,error", [
    ("req_prod past the ring", w.XENSTORE_ERROR_RINGIDX),
    ("rsp_cons ahead of rsp_prod", w.XENSTORE_ERROR_RINGIDX),
    ("a length over 4096", w.XENSTORE_ERROR_PROTO),
])
async def test_a_hostile_ring_costs_only_its_own_connection(hypervisor, guests, attack, error):
    bad, good = await guests("bad"), await guests("good")
    await bad.xs.watch("data", "w")
    await good.xs.watch("data", "w")
    assert hypervisor.hv.xenstore.watch_count(bad.domid) == 1
    if attack == "req_prod past the ring":
        set_idx(bad.page, xs.REQ_PROD, xs.idx(bad.page, xs.REQ_PROD) + 5000)
        bad.kick()
    elif attack == "rsp_cons ahead of rsp_prod":
        set_idx(bad.page, xs.RSP_CONS, xs.idx(bad.page, xs.RSP_PROD) + 7)
        await bad.xs.send_raw(bad.xs.frame(xs.READ, z("name"))[1])
    else:
        await bad.xs.send_raw(xs.HDR.pack(xs.READ, 1, 0, 5000) + b"x" * 100)
    for _ in range(200):
        if bad.word(xs.RING_ERROR):
            break
        await asyncio.sleep(0.005)
    assert bad.word(xs.RING_ERROR) == error
    assert hypervisor.hv.xenstore.watch_count(bad.domid) == 0      # its connection is gone
    with pytest.raises(Closed):
        await bad.xs.read("name")
    assert await good.xs.read("name") == b"good"
    sock = await dom0_socket(hypervisor)
    assert await sock.read(f"/local/domain/{bad.domid}/name") == b"bad"
    await sock.close()
    assert invariant_violations(hypervisor.hv) == []


async def test_closing_the_store_port_leaves_xenstored_alone(hypervisor, guests):
    g = await guests("closer")
    hypervisor.hv.evtchn.close(g.domid, g.port)
    assert not hypervisor.hv.evtchn.has_consumer(g.domid, g.port)
    assert invariant_violations(hypervisor.hv) == []
    other = await guests("other")
    assert await other.xs.read("name") == b"other"


async def test_release_then_introduce_reconnects_the_ring(hypervisor, guests):
    g = await guests("again")
    sock = await dom0_socket(hypervisor)
    try:
        await sock.release(g.domid)
        assert not await sock.is_domain_introduced(g.domid)
        ch = hypervisor.hv.evtchn.channel(g.domid, g.port)
        assert (ch.state, ch.remote_dom) == (EvtchnState.unbound, 0)
        with pytest.raises(XsError) as err:
            await sock.introduce(g.domid, STORE_GFN, 999)        # not an unbound port of it
        assert err.value.name == "EINVAL"
        await sock.introduce(g.domid, STORE_GFN, g.port)
        assert await sock.is_domain_introduced(g.domid)
        g.xs = ring_client(g.page, g.kick)
        assert await g.xs.get_domain_path(g.domid) == f"/local/domain/{g.domid}"
    finally:
        await sock.close()
    assert invariant_violations(hypervisor.hv) == []


async def test_destroying_a_domain_lets_its_ring_go(hypervisor, guests):
    g = await guests("doomed")
    await g.xs.watch("data", "w")
    await hypervisor.toolstack.destroy_domain(g.domid)
    assert g.domid not in hypervisor.hv.store_rings.rings
    assert not [c for c in hypervisor.hv.xenstored.connections if c.caller.domid == g.domid]
    assert invariant_violations(hypervisor.hv) == []


async def test_a_guest_that_never_reads_its_replies_stalls_only_itself(hypervisor, guests):
    deaf, other = await guests("deaf"), await guests("other")
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{deaf.domid}/data/big", b"b" * 2000)
    frames = b"".join(deaf.xs.frame(xs.READ, z("data/big"))[1] for _ in range(2000))
    sent = 0
    page = deaf.page
    while sent < len(frames):           # fill the request ring as long as xenstored takes
        cons, prod = xs.idx(page, xs.REQ_CONS), xs.idx(page, xs.REQ_PROD)
        room = xs.RING_SIZE - (prod - cons)
        if room == 0:
            deaf.kick()
            await asyncio.sleep(0.01)
            if xs.idx(page, xs.REQ_CONS) == cons:
                break                   # xenstored stopped reading: stalled
            continue
        chunk = frames[sent:sent + room]
        for i, byte in enumerate(chunk):
            page[xs.REQ + ((prod + i) % xs.RING_SIZE)] = byte
        set_idx(page, xs.REQ_PROD, prod + len(chunk))
        sent += len(chunk)
        deaf.kick()
    assert sent < len(frames)
    ring = hypervisor.hv.store_rings.rings[deaf.domid]
    assert not ring.conn.closed and not ring.conn.wants_input
    assert await other.xs.read("name") == b"other"
    reader = ring_client(page, deaf.kick)
    replies = 0
    while replies < 50:
        type_, _, _, payload = await reader.recv()
        assert (type_, payload) == (xs.READ, b"b" * 2000)
        replies += 1


def test_the_store_page_is_one_the_guest_kernel_keeps_for_itself():
    from xenlab.domain.memory import RESERVED_FRAMES
    assert 0 <= STORE_GFN < RESERVED_FRAMES
