"""The Paging service and the paging modes over real gRPC and the real
doorbell: a domain created in each mode says so (xl list -l, Info,
GetPagingInfo, its start_info), its pool leaves the host's free memory
until it is destroyed, its exits are its own, and its pool comes to it
read-only with the doorbell's OK."""
from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import mmap
import os

import grpc
import pytest

from xenlab.boot.domu import _enter_domain
from xenlab.cli import output
from xenlab.domain.evtchn import greet
from xenlab.proto import common_pb2, domains_pb2, memory_pb2, paging_pb2, save_pb2
from xenlab.testing import check_invariants
from xenlab.xen import abi
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError
from xenlab.xen.paging import PFEC_WRITE
from xenlab.xen.start_info import StartInfo

SELF = abi.DOMID_SELF
MODES = [("pv", {}, "direct"), ("hvm", {}, "hap"), ("pvh", {"hap": False}, "shadow")]


async def refused(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    for word in words:
        assert word in e.value.details()
    return e.value.details()


def ref(domid: int = SELF, name: str = "") -> common_pb2.DomainRef:
    return common_pb2.DomainRef(domid=domid, name=name)


async def create(lab, name: str, kind: str, memory_mb: int = 16, **paging):
    reply = await lab.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=memory_mb, launcher="none", type=kind,
                                    **paging)))
    return reply.info.domid, reply.secret, lab.client_as(reply.info.domid, reply.secret)


async def host_free_kb(lab) -> int:
    return (await lab.dom0.domains.GetHostInfo(common_pb2.Empty())).free_memory_kb


@pytest.mark.parametrize("kind, paging, mode", MODES)
async def test_a_domain_reports_the_mode_it_was_created_in(hypervisor, kind, paging, mode):
    domid, _, client = await create(hypervisor, "web", kind, **paging)
    info = await hypervisor.dom0.domains.Info(ref(domid))
    assert info.paging_mode == mode
    pool_mb = 0 if mode == "direct" else 2          # libxl's default for 1 vCPU, 16 MiB
    assert info.paging_pool_kb == pool_mb * 1024
    entry = json.loads(output.format_domain_long([info]))[0]
    assert entry["paging"] == {"mode": mode, "pool_kb": pool_mb * 1024}
    assert entry["config"]["type"] == kind
    if mode != "direct":
        assert entry["config"]["hap"] is (mode == "hap")
        assert entry["config"]["shadow_memory_mb"] == pool_mb
    own = await client.paging.GetPagingInfo(ref())
    assert (own.domid, own.mode, own.pool_pages) == (domid, mode, pool_mb * 256)
    assert len(own.pool_mfns) == own.pool_pages
    assert (own.eptp != 0) is (mode == "hap")
    assert own.eptp in own.pool_mfns or mode != "hap"
    start = hypervisor.hv._start_info(hypervisor.hv.domains.get(domid), "s")
    assert StartInfo.from_json(start.to_json()).paging_mode == mode
    check_invariants(hypervisor.hv)


async def test_the_pool_leaves_free_memory_and_comes_back_at_destroy(hypervisor):
    free = await host_free_kb(hypervisor)
    domid, _, client = await create(hypervisor, "web", "hvm", shadow_memory_mb=4)
    assert await host_free_kb(hypervisor) == free - 16 * 1024 - 4 * 1024
    info = await client.paging.GetPagingInfo(ref())
    # The pool's frames are no domain's: the M2P knows none of them.
    m2p = await client.memory.MachineToPhys(memory_pb2.MachineToPhysRequest(
        mfns=list(info.pool_mfns)[:512]))
    assert set(m2p.gfns) == {abi.INVALID_M2P_ENTRY}
    await hypervisor.dom0.domains.Destroy(ref(domid))
    assert await host_free_kb(hypervisor) == free


async def test_a_pool_bigger_than_the_host_is_refused_and_nothing_is_left(hypervisor):
    free = await host_free_kb(hypervisor)
    await refused(create(hypervisor, "big", "hvm", shadow_memory_mb=free // 1024),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "paging pool")
    assert await host_free_kb(hypervisor) == free
    assert [d.name for d in (await hypervisor.dom0.domains.List(common_pb2.Empty())).domains] \
        == ["Domain-0"]


async def test_the_nested_p2m_follows_the_balloon(hypervisor):
    domid, _, client = await create(hypervisor, "web", "hvm", memory_mb=16)
    nested = hypervisor.hv.paging.get(domid).nested
    before = hypervisor.hv.memory.p2m(domid)
    gone = list(range(100, 164))
    await client.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
        domid=SELF, gfns=gone))
    assert [nested.lookup(g) for g in gone] == [None] * len(gone)
    back = await client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=SELF, gfns=gone))
    assert list(back.gfns) == gone
    after = hypervisor.hv.memory.p2m(domid)
    assert [nested.lookup(g) for g in gone] == [after[g] for g in gone]
    assert not {after[g] for g in gone} & set(before.values())
    # The guest's view of an EPT violation on a frame it has: fixed, with its mfn.
    reply = await client.paging.NestedFault(paging_pb2.NestedFaultRequest(
        domid=SELF, gpa=gone[0] * abi.PAGE_SIZE, write=True))
    assert (reply.outcome, reply.mfn) == ("fixed", after[gone[0]])
    # Entries the balloon cleared may still be in the guest's TLB: the first
    # exit since says to flush it, the next one does not.
    assert reply.flush_tlb
    again = await client.paging.NestedFault(paging_pb2.NestedFaultRequest(
        domid=SELF, gpa=gone[0] * abi.PAGE_SIZE))
    assert not again.flush_tlb


async def test_exits_of_the_wrong_mode_are_refused(hypervisor):
    _, _, hap = await create(hypervisor, "hap", "hvm")
    _, _, shadow = await create(hypervisor, "shadow", "pvh", hap=False)
    _, _, pv = await create(hypervisor, "pv", "pv")
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    for client, mode in ((hap, "hap"), (pv, "direct")):
        await refused(client.paging.PageFault(paging_pb2.PageFaultRequest(
            domid=SELF, va=0x1000, code=PFEC_WRITE)), INVALID, f"runs on {mode} paging",
            "PageFault is a shadow-mode exit")
        await refused(client.paging.SetCr3(paging_pb2.SetCr3Request(domid=SELF, gfn=1)),
                      INVALID, "SetCr3 is a shadow-mode exit")
        await refused(client.paging.PagetableDying(paging_pb2.PagetableDyingRequest(
            domid=SELF, gpa=0x1000)), INVALID, "PagetableDying is a shadow-mode exit")
    for client, mode in ((shadow, "shadow"), (pv, "direct")):
        await refused(client.paging.NestedFault(paging_pb2.NestedFaultRequest(
            domid=SELF, gpa=0x1000)), INVALID, f"runs on {mode} paging",
            "NestedFault is a hap-mode exit")
    # And the right one goes through.
    reply = await shadow.paging.SetCr3(paging_pb2.SetCr3Request(domid=SELF, gfn=1))
    assert reply.shadow_root in (await shadow.paging.GetPagingInfo(ref())).pool_mfns


async def test_a_domains_exits_are_its_own(hypervisor):
    """Nobody makes an exit for another domain, Domain-0 included; Domain-0
    reads any domain's paging, a domU only its own."""
    web, _, web_client = await create(hypervisor, "web", "pvh", hap=False)
    db, _, db_client = await create(hypervisor, "db", "hvm")
    DENIED = grpc.StatusCode.PERMISSION_DENIED
    for caller in (db_client, hypervisor.dom0):
        await refused(caller.paging.SetCr3(paging_pb2.SetCr3Request(domid=web, gfn=1)),
                      DENIED, "exits are its own")
        await refused(caller.paging.PageFault(paging_pb2.PageFaultRequest(
            domid=web, va=0, code=0)), DENIED)
        await refused(caller.paging.PagetableDying(paging_pb2.PagetableDyingRequest(
            domid=web, gpa=0x1000)), DENIED)
    await refused(web_client.paging.NestedFault(paging_pb2.NestedFaultRequest(domid=db)),
                  DENIED)
    await refused(web_client.paging.Stats(ref(db)), DENIED)
    await refused(web_client.paging.GetPagingInfo(ref(db)), DENIED)
    await refused(web_client.paging.Stats(ref(name="db")), DENIED)
    await web_client.paging.SetCr3(paging_pb2.SetCr3Request(domid=web, gfn=1))
    stats = await hypervisor.dom0.paging.Stats(ref(web))
    assert (stats.domid, stats.mode, stats.traps) == (web, "shadow", 1)
    assert dict(stats.hypercalls) == {"set_cr3": 1}
    assert stats.pool_used >= 1 and stats.pool_pages == 512
    assert (await hypervisor.dom0.paging.Stats(ref(db))).mode == "hap"
    assert (await db_client.paging.Stats(ref())).domid == db
    assert (await hypervisor.dom0.paging.GetPagingInfo(ref(name="web"))).domid == web


async def test_the_pool_comes_read_only_with_the_doorbells_ok(hypervisor):
    domid, secret, client = await create(hypervisor, "web", "hvm")
    doorbell = str(hypervisor.hv.rundir.doorbell)
    sock, handed = await asyncio.to_thread(greet, doorbell, domid, secret, wire.HELLO_PAGING)
    sock.close()
    assert handed.memory == -1 and handed.paging >= 0
    info = await client.paging.GetPagingInfo(ref())
    root = list(info.pool_mfns).index(info.eptp)
    try:
        assert os.fstat(handed.paging).st_size == info.pool_pages * abi.PAGE_SIZE
        assert os.fstat(handed.paging).st_ino == hypervisor.hv.paging.get(domid).path.stat().st_ino
        # The nested P2M's root, as the hypervisor wrote it.
        ept = os.pread(handed.paging, abi.PAGE_SIZE, root * abi.PAGE_SIZE)
        assert ept == bytes(hypervisor.hv.paging.get(domid).frame(info.eptp))
        assert ept != bytes(abi.PAGE_SIZE)
        with pytest.raises(OSError) as err:
            os.pwrite(handed.paging, b"\xff" * 8, root * abi.PAGE_SIZE)
        assert err.value.errno == errno.EBADF
        with pytest.raises(PermissionError):
            mmap.mmap(handed.paging, abi.PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(handed.paging)


async def test_a_guest_maps_its_pool_prot_read_and_cannot_make_it_writable(hypervisor):
    """What boot does in shadow or HAP mode (boot.domu._enter_domain): the
    pool comes with the OK on the doorbell it keeps, mapped PROT_READ; an
    mprotect to writable is EACCES, a write through the view a TypeError."""
    domid, secret, client = await create(hypervisor, "web", "pvh", hap=False)
    start = StartInfo(domid=domid, name="web", secret=secret, hypervisor=hypervisor.address,
                      doorbell=str(hypervisor.hv.rundir.doorbell), vcpus=1, console_log="",
                      paging_mode="shadow")
    memory, pool, doorbell = await asyncio.to_thread(_enter_domain, start)
    try:
        assert memory is not None and doorbell is not None
        info = await client.paging.GetPagingInfo(ref())
        assert pool.length == info.pool_pages * abi.PAGE_SIZE and pool.view.readonly
        with pytest.raises(TypeError):
            pool.view[0] = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        assert libc.mprotect(pool.addr, abi.PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE) == -1
        assert ctypes.get_errno() == errno.EACCES
        # What the hypervisor writes there, the guest reads.
        await client.paging.SetCr3(paging_pb2.SetCr3Request(domid=SELF, gfn=1))
        root = (await client.paging.GetPagingInfo(ref())).shadow_root
        page = list(info.pool_mfns).index(root)
        view = pool.view[page * abi.PAGE_SIZE:(page + 1) * abi.PAGE_SIZE]
        assert bytes(view) == bytes(hypervisor.hv.paging.get(domid).frame(root))
        view.release()
    finally:
        doorbell.close()
        pool.close()
        memory.close()


async def test_a_direct_mode_domain_asking_for_a_pool_is_refused(hypervisor):
    domid, secret, _ = await create(hypervisor, "web", "pv")
    with pytest.raises(XenError) as err:
        await asyncio.to_thread(greet, str(hypervisor.hv.rundir.doorbell), domid, secret,
                                wire.HELLO_PAGING | wire.HELLO_MEMORY)
    assert err.value.errno == errno.ENOENT and "direct paging" in err.value.message
    # The refusal spent nothing: the memory object is still the domain's to take.
    sock, handed = await asyncio.to_thread(greet, str(hypervisor.hv.rundir.doorbell), domid,
                                           secret, wire.HELLO_MEMORY)
    sock.close()
    os.close(handed.memory)


async def test_a_restored_domain_keeps_its_mode_and_its_nested_p2m_is_its_new_p2m(hypervisor):
    """xl save / xl restore: the image's config brings type= and hap= back,
    and the frames the restore populates reach the new nested P2M."""
    lab = hypervisor
    domid, guest = await lab.create_domain("web", type="hvm", maxmem_mb=32)
    frame = lab.hv.memory.frame(domid, 1)
    frame[:8] = b"RECORD!!"
    frame.release()
    call = asyncio.ensure_future(guest.save.SchedSuspend(save_pb2.SchedSuspendRequest(
        record_gfn=1)))
    dom = lab.hv.domains.get(domid)
    for _ in range(200):
        if lab.hv.is_suspended(dom):
            break
        await asyncio.sleep(0.01)
    saver = lab.toolstack.saver
    image = b"".join(saver.image(dom))
    await lab.toolstack.destroy_domain(domid)
    await asyncio.gather(call, return_exceptions=True)

    async def chunks():
        yield image

    new, _ = await saver.restore_stream(chunks())
    assert new.paging_mode.value == "hap" and new.paging_pool_pages == 2 * 256
    nested = lab.hv.paging.get(new.domid).nested
    p2m = lab.hv.memory.p2m(new.domid)
    assert {gfn: nested.lookup(gfn) for gfn in range(32 * 256)} == \
        {gfn: p2m.get(gfn) for gfn in range(32 * 256)}
    assert lab.hv.memory.frame(new.domid, 1)[:8] == b"RECORD!!"
    check_invariants(lab.hv)
