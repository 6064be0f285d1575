"""The Memory service over real gRPC: who may do what, and the status codes
of each refusal. Every refusal is followed by a call that must still work."""
from __future__ import annotations

import errno
import mmap
import os

import grpc
import pytest

from xenlab.testing.grants import GuestGrantTable

from xenlab.hypervisor.caller import DOM0
from xenlab.proto import common_pb2, grants_pb2, memory_pb2
from xenlab.xen import abi
from xenlab.xen.paging import MMUEXT_PIN_L1_TABLE, PTE_PRESENT, PTE_RW

PAGE = abi.PAGE_SIZE
RW = PTE_PRESENT | PTE_RW
RO = PTE_PRESENT


async def refused(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    details = e.value.details()
    assert details
    for word in words:
        assert word in details
    return details


def ref(domid: int = 0, name: str = "") -> common_pb2.DomainRef:
    return common_pb2.DomainRef(domid=domid, name=name)


async def still_serving(client, domid: int) -> None:
    res = await client.memory.GetReservation(ref(domid))
    assert res.domid == domid


async def test_domain_maps_its_own_segment(hypervisor):
    domid, dom = await hypervisor.create_domain("web")
    mm = await dom.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(abi.DOMID_SELF),
                                                                   with_populated=True))
    assert mm.domid == domid and mm.first_frame_offset == PAGE
    assert list(mm.populated) == list(range(16 * 256))
    assert mm.segment_pages == 1 + 16 * 256
    hypervisor.hv.memory.frame(domid, 7)[:5] = b"hello"
    with open(mm.shm_path, "r+b") as f:
        view = mmap.mmap(f.fileno(), mm.segment_pages * PAGE)
    assert view[mm.first_frame_offset + 7 * PAGE:][:5] == b"hello"
    view.close()


async def test_domu_may_not_touch_other_domains(hypervisor):
    domid, dom = await hypervisor.create_domain("web")
    other, _ = await hypervisor.create_domain("db")
    P = grpc.StatusCode.PERMISSION_DENIED
    await refused(dom.memory.GetReservation(ref(0)), P)
    await refused(dom.memory.GetReservation(ref(name="db")), P)
    await refused(dom.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(other))), P)
    await refused(dom.memory.IncreaseReservation(
        memory_pb2.IncreaseReservationRequest(domid=other, nr_pages=1)), P)
    await refused(dom.memory.DecreaseReservation(
        memory_pb2.DecreaseReservationRequest(domid=other, gfns=[0])), P)
    await refused(dom.memory.SetTarget(memory_pb2.MemSetRequest(domain=ref(domid), kb=4096)),
                  P, "mem-set")
    await refused(dom.memory.SetMax(memory_pb2.MemSetRequest(domain=ref(domid), kb=65536)),
                  P, "mem-max")
    assert hypervisor.hv.memory.reservation(other)[0] == 16 * 256
    await still_serving(dom, domid)


async def test_wrong_secret_is_unauthenticated(hypervisor):
    domid, dom = await hypervisor.create_domain("web")
    impostor = hypervisor.client_as(domid, "not-the-secret")
    await refused(impostor.memory.GetReservation(ref(domid)), grpc.StatusCode.UNAUTHENTICATED)
    await still_serving(dom, domid)


async def test_unknown_domain_is_not_found(hypervisor):
    await refused(hypervisor.dom0.memory.GetReservation(ref(77)), grpc.StatusCode.NOT_FOUND)
    await refused(hypervisor.dom0.memory.GetReservation(ref(name="nobody")),
                  grpc.StatusCode.NOT_FOUND)
    await still_serving(hypervisor.dom0, 0)


async def test_balloon(hypervisor):
    domid, dom = await hypervisor.create_domain("web", memory_mb=16, maxmem_mb=17)
    out = await dom.memory.DecreaseReservation(
        memory_pb2.DecreaseReservationRequest(domid=domid, gfns=[0, 1]))
    assert list(out.gfns) == [0, 1] and out.reservation.current_pages == 4094
    out = await dom.memory.IncreaseReservation(
        memory_pb2.IncreaseReservationRequest(domid=abi.DOMID_SELF, nr_pages=258))
    assert list(out.gfns)[:2] == [0, 1] and out.reservation.current_pages == 17 * 256
    await refused(dom.memory.IncreaseReservation(
        memory_pb2.IncreaseReservationRequest(domid=domid, nr_pages=1)),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "maximum")
    await refused(dom.memory.DecreaseReservation(
        memory_pb2.DecreaseReservationRequest(domid=domid, gfns=[17 * 256 + 5])),
        grpc.StatusCode.INVALID_ARGUMENT)
    await refused(dom.memory.IncreaseReservation(
        memory_pb2.IncreaseReservationRequest(domid=domid, gfns=[3])),
        grpc.StatusCode.INVALID_ARGUMENT, "already populated")
    await still_serving(dom, domid)


async def test_mem_set_writes_the_xenstore_target(hypervisor):
    domid, dom = await hypervisor.create_domain("web", memory_mb=16)
    res = await hypervisor.dom0.memory.SetTarget(
        memory_pb2.MemSetRequest(domain=ref(name="web"), kb=8192))
    assert res.target_pages == 2048 and res.current_pages == 4096
    target = hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{domid}/memory/target")
    assert target == b"8192"
    await refused(hypervisor.dom0.memory.SetTarget(
        memory_pb2.MemSetRequest(domain=ref(domid), kb=32768)),
        grpc.StatusCode.INVALID_ARGUMENT, "maximum")
    assert (await dom.memory.GetReservation(ref(domid))).target_pages == 2048


async def test_mem_max(hypervisor):
    domid, dom = await hypervisor.create_domain("web", memory_mb=16)
    await refused(hypervisor.dom0.memory.SetMax(
        memory_pb2.MemSetRequest(domain=ref(domid), kb=8192)),
        grpc.StatusCode.INVALID_ARGUMENT, "below the current reservation")
    res = await hypervisor.dom0.memory.SetMax(
        memory_pb2.MemSetRequest(domain=ref(domid), kb=32768))
    assert res.max_pages == 8192
    out = await dom.memory.IncreaseReservation(
        memory_pb2.IncreaseReservationRequest(domid=domid, gfns=[8191]))
    assert list(out.gfns) == [8191]
    mm = await dom.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(domid)))
    assert mm.segment_pages == 8193
    info = await hypervisor.dom0.domains.Info(ref(domid))
    assert info.maxmem_kb == 32768


async def test_mmu_update(hypervisor):
    domid, dom = await hypervisor.create_domain("web")
    mm = await dom.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(domid),
                                                                   with_populated=True))
    table, frame = mm.mfns[0], mm.mfns[1]
    pin = memory_pb2.MmuextRequest(ops=[memory_pb2.MmuextOp(
        cmd=MMUEXT_PIN_L1_TABLE, arg=table)])
    assert (await dom.memory.MmuextOp(pin)).done == 1
    res = await dom.memory.MmuUpdate(memory_pb2.MmuUpdateRequest(updates=[
        memory_pb2.MmuUpdate(ptr=table << 12, val=frame << 12 | RW),
        memory_pb2.MmuUpdate(ptr=table << 12 | 8, val=0x42 << 12 | RO),
        memory_pb2.MmuUpdate(ptr=table << 12 | 16, val=frame << 12 | RO)]))
    assert res.done == 1 and list(res.status) == [0, -errno.EPERM]
    again = await dom.memory.MmuextOp(memory_pb2.MmuextRequest(ops=[memory_pb2.MmuextOp(
        cmd=MMUEXT_PIN_L1_TABLE, arg=frame)]))
    assert again.done == 0 and list(again.status) == [-errno.EINVAL]    # a type conflict
    await still_serving(dom, domid)


async def test_a_four_level_tree_through_the_guests_typed_calls(hypervisor):
    """The kernel's side (domain/hypercall/memory.py): pin an L4 built in
    its own frames, load it, flush, and change an L1 entry; a refusal comes
    back as MemoryError_ with Xen's errno and how many items were done."""
    from xenlab.domain.hypercall.memory import MemoryOps
    from xenlab.xen import paging as pg
    from xenlab.xen.errors import MemoryError_
    domid, dom = await hypervisor.create_domain("web")
    mem = hypervisor.hv.memory
    l4, l3, l2, l1, data = (mem.gfn_to_mfn(domid, gfn) for gfn in range(5))
    for gfn, entry in ((0, pg.pte(l3, RW)), (1, pg.pte(l2, RW)), (2, pg.pte(l1, RW))):
        mem.frame(domid, gfn)[:8] = entry.to_bytes(8, "little")
    ops = MemoryOps(dom.memory, domid)
    await ops.mmuext([(pg.MMUEXT_PIN_L4_TABLE, l4), (pg.MMUEXT_NEW_BASEPTR, l4),
                      (pg.MMUEXT_TLB_FLUSH_LOCAL, 0), (pg.MMUEXT_INVLPG_LOCAL, pg.USER_BASE)])
    assert mem.pagetables.baseptr(domid) == l4
    await ops.mmu_update([(l1 << 12, pg.pte(data, RW))])
    with pytest.raises(MemoryError_) as e:
        await ops.mmu_update([(l1 << 12 | 8, pg.pte(data, RO)), (l1 << 12 | 16, pg.pte(l2, RW))])
    assert e.value.errno == errno.EBUSY and e.value.done == 1
    with pytest.raises(MemoryError_) as e:
        await ops.mmuext([(pg.MMUEXT_PIN_L2_TABLE, l1)])
    assert e.value.errno == errno.EINVAL and e.value.done == 0
    stats = mem.pagetables.stats(domid)
    assert stats["validations"] == 4 and stats["entries"] == 2 and stats["tlb_flushes"] == 1
    await still_serving(dom, domid)


async def test_mmu_update_of_a_granted_frame(hypervisor):
    d1, c1 = await hypervisor.create_domain("front")
    d2, c2 = await hypervisor.create_domain("back")
    table = await GuestGrantTable.setup(hypervisor.hv, c1)
    m = await c2.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=table.grant(d2, 9, True),
                                                       readonly=True))
    table.release()
    mm = await c2.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(d2),
                                                                  with_populated=True))
    table = mm.mfns[0]
    await c2.memory.MmuextOp(memory_pb2.MmuextRequest(ops=[memory_pb2.MmuextOp(
        cmd=MMUEXT_PIN_L1_TABLE, arg=table)]))
    res = await c2.memory.MmuUpdate(memory_pb2.MmuUpdateRequest(updates=[
        memory_pb2.MmuUpdate(ptr=table << 12, val=m.mfn << 12 | RO),
        memory_pb2.MmuUpdate(ptr=table << 12 | 8, val=m.mfn << 12 | RW)]))
    assert res.done == 1 and list(res.status) == [0, -errno.EBUSY]
    # d3 has no grant: the same frame is refused outright.
    d3, c3 = await hypervisor.create_domain("third")
    mm3 = await c3.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(d3),
                                                                   with_populated=True))
    await c3.memory.MmuextOp(memory_pb2.MmuextRequest(ops=[memory_pb2.MmuextOp(
        cmd=MMUEXT_PIN_L1_TABLE, arg=mm3.mfns[0])]))
    res = await c3.memory.MmuUpdate(memory_pb2.MmuUpdateRequest(updates=[
        memory_pb2.MmuUpdate(ptr=mm3.mfns[0] << 12, val=m.mfn << 12 | RO)]))
    assert list(res.status) == [-errno.EBUSY]


async def test_destroy_leaves_no_segment_behind(hypervisor):
    domid, _ = await hypervisor.create_domain("web")
    path = hypervisor.hv.memory.segment_path(domid)
    assert path in hypervisor.hv.memory.shm_files()
    await hypervisor.dom0.domains.Destroy(ref(domid))
    assert path not in hypervisor.hv.memory.shm_files()
    assert hypervisor.hv.memory.shm_files() == [hypervisor.hv.memory.segment_path(0)]


async def test_every_domain_reads_the_m2p(hypervisor):
    """Xen maps machine_to_phys read-only into every PV guest: any domain
    may read where any frame is, and a P2M read back through it is its inverse."""
    d1, c1 = await hypervisor.create_domain("web")
    d2, c2 = await hypervisor.create_domain("db")
    mm = await c1.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(d1),
                                                                  with_populated=True))
    got = await c2.memory.MachineToPhys(memory_pb2.MachineToPhysRequest(
        mfns=list(mm.mfns[-64:]) + [0x10]))
    assert list(got.gfns) == list(mm.populated[-64:]) + [abi.INVALID_M2P_ENTRY]
    gone = mm.populated[-1]
    await c1.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
        domid=d1, gfns=[gone]))
    got = await c2.memory.MachineToPhys(memory_pb2.MachineToPhysRequest(mfns=[mm.mfns[-1]]))
    assert list(got.gfns) == [abi.INVALID_M2P_ENTRY]


async def test_ballooning_out_gives_the_memory_back_to_the_host(hypervisor):
    """Measured on the host (the blocks tmpfs backs the segment with), not
    by xenlab's counters; xl info's free memory is the pool's."""
    domid, dom = await hypervisor.create_domain("web")
    path = hypervisor.hv.memory.segment_path(domid)
    gfns = list(range(1024, 1024 + 256))
    for gfn in gfns:
        hypervisor.hv.memory.frame(domid, gfn)[:] = b"\x5a" * PAGE
    backed = os.stat(path).st_blocks * 512 // PAGE
    free = (await hypervisor.dom0.domains.GetHostInfo(common_pb2.Empty())).free_memory_kb
    old = [hypervisor.hv.memory.gfn_to_mfn(domid, g) for g in gfns]
    await dom.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
        domid=domid, gfns=gfns))
    assert os.stat(path).st_blocks * 512 // PAGE <= backed - 256
    info = await hypervisor.dom0.domains.GetHostInfo(common_pb2.Empty())
    assert info.free_memory_kb == free + 256 * 4
    assert info.free_memory_kb == hypervisor.hv.memory.free_pages * 4
    out = await dom.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=domid, nr_pages=256))
    assert list(out.gfns) == gfns
    mm = await dom.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=ref(domid),
                                                                   with_populated=True))
    p2m = dict(zip(mm.populated, mm.mfns))
    assert not {p2m[g] for g in gfns} & set(old)
    back = await dom.memory.MachineToPhys(memory_pb2.MachineToPhysRequest(
        mfns=[p2m[g] for g in gfns]))
    assert list(back.gfns) == gfns
    assert bytes(hypervisor.hv.memory.frame(domid, gfns[0])) == bytes(PAGE)
