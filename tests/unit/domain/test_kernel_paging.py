"""A domain's kernel runs on its MMU from boot: its frames are reached
through its direct map, the balloon takes a frame out of the direct map
before giving it back and maps the new frame it gets, and the paging
workloads run in the domain with the results the in-process harness gives."""
from __future__ import annotations

import asyncio

import pytest

from xenlab.bench.paging import check_same_visible, run_mode, summarize
from xenlab.domain.evtchn import greet
from xenlab.domain.kernel import DomainKernel
from xenlab.domain.memory import map_paging_pool
from xenlab.domain.mmu import PageFault
from xenlab.domain.paging import DomainFrames, KernelPaging, direct_map_va
from xenlab.domain.paging_workloads import WorkloadError
from xenlab.rundir import DOORBELL
from xenlab.testing.paging_machine import PagingMachine
from xenlab.xen import doorbell as wire
from xenlab.xen.paging import WALK_REFS_1D, PagingMode
from xenlab.xen.start_info import StartInfo


async def test_the_kernel_reaches_its_frames_through_its_mmu(hypervisor):
    kernel = await hypervisor.boot_domain("web")
    paging = kernel.paging.paging
    assert kernel.paging.mode is PagingMode.DIRECT
    gfn = kernel.memory.alloc_frames(1)[0]
    view = kernel.memory.frame(gfn)
    view[:5] = b"hello"
    assert bytes(kernel.memory.raw_frame(gfn)[:5]) == b"hello"
    # the translation is the P2M's mfn, cached in the TLB
    mfn = paging.frames.mfn(gfn)
    assert paging.mmu.translate(direct_map_va(gfn)) == mfn
    hits = paging.mmu.counters["tlb_hits"]
    kernel.memory.frame(gfn)
    assert paging.mmu.counters["tlb_hits"] == hits + 1
    # the hypervisor validated the kernel's tables: its L4 is the base pointer
    assert hypervisor.hv.memory.pagetables.baseptr(kernel.domid) == paging.mmu.cr3


async def test_a_ballooned_frame_leaves_the_direct_map_and_a_new_one_enters_it(hypervisor):
    kernel = await hypervisor.boot_domain("web")
    gfn = kernel.memory.balloon_candidates(1)[0]
    await kernel._give_back([gfn])
    with pytest.raises(IndexError):
        kernel.memory.frame(gfn)
    got = await kernel.hypercall.memory.increase_reservation(1)
    kernel.memory.add_frames(got)
    await kernel.paging.populate(got)
    new = kernel.memory.frame(got[0])
    new[:3] = b"new"
    assert bytes(kernel.memory.raw_frame(got[0])[:3]) == b"new"


async def test_the_balloon_unmaps_its_frames_in_one_batch(hypervisor):
    kernel = await hypervisor.boot_domain("web")
    gfns = kernel.memory.balloon_candidates(40)
    counters = kernel.paging.paging.paging.counters
    before = counters["hypercalls"], counters["mmu_update_entries"]
    await kernel._give_back(gfns)
    # one mmu_update of 40 entries and one TLB flush (past Linux's 32-page
    # ceiling), not one of each per frame
    assert (counters["hypercalls"] - before[0], counters["mmu_update_entries"] - before[1]) \
        == (2, 40)
    for gfn in gfns:
        with pytest.raises(IndexError):
            kernel.memory.frame(gfn)


async def test_the_workloads_in_a_domain_see_what_they_see_in_process(hypervisor):
    kernel = await hypervisor.boot_domain("web")
    results = await kernel.paging.run_workloads(12, 3, seed=5)
    expected = run_mode(PagingMode.DIRECT, 12, 3, seed=5)
    assert [r.visible() for r in results] == [r.visible() for r in expected]
    assert sum(r.counters.get("guest.hypercalls", 0) for r in results) > 0
    with pytest.raises(WorkloadError):
        await kernel.paging.run_workloads(4, 5)
    # the kernel is back on its own address space, and its frames still reachable
    assert kernel.paging.paging.mmu.cr3 == hypervisor.hv.memory.pagetables.baseptr(kernel.domid)
    kernel.memory.frame(kernel.memory.alloc_frames(1)[0])


# -- the kernel's paging over the harness's hypervisor side, in every mode ----------------------
def kernel_on(machine: PagingMachine) -> KernelPaging:
    """A kernel's paging (domain/paging.py) over the harness's frames and
    hypervisor cores; its spare frames are the harness's free ones."""
    class Frames(DomainFrames):
        def __call__(self, mfn):         # the paging pool: the hypervisor's frames, mapped
            try:
                return super().__call__(mfn)
            except LookupError:
                return machine.frames[mfn]
    # The harness booted a kernel of its own: its table frames are not this one's.
    theirs = set(machine.kernel_space.table_frames())
    frames = Frames(lambda gfn: machine.frames[machine.p2m[gfn]],
                    {g: m for g, m in machine.p2m.items() if g not in theirs})
    kp = KernelPaging(machine.mode, frames, machine.backend,
                      lambda n: [machine.alloc_frame() for _ in range(n)],
                      lambda gfns: [machine.free_frame(g) for g in gfns],
                      eptp=machine.nested.root if machine.nested is not None else None)
    kp.boot()
    return kp


# (Direct mode is the in-process lab's above: two kernels cannot share one
# guest's memory there, the validator refuses a table its other kernel maps.)
@pytest.mark.parametrize("mode", [PagingMode.SHADOW, PagingMode.HAP])
def test_frame_reaches_the_frame_its_direct_map_names(mode):
    machine = PagingMachine(mode, pages=64)
    kp = kernel_on(machine)
    gfn = machine.alloc_frame()
    machine.frames[machine.p2m[gfn]][:4] = b"gfn!"
    assert bytes(kp.frame(gfn)[:4]) == b"gfn!"
    kp.release([gfn])
    with pytest.raises(IndexError):
        kp.frame(gfn)


def test_a_miss_that_would_exit_is_served_from_the_kernels_own_tables():
    # shadow: the shadows are gone (as after shadow_blow_tables) and the TLB
    # flushed: the MMU faults, and no exit can be taken from the event loop
    machine = PagingMachine(PagingMode.SHADOW, pages=64)
    kp = kernel_on(machine)
    gfn = machine.alloc_frame()
    kp.mmu.frame(kp.mmu.cr3)[:] = bytes(4096)
    kp.mmu.flush()
    machine.frames[machine.p2m[gfn]][:2] = b"ok"
    assert bytes(kp.frame(gfn)[:2]) == b"ok"
    # hap: the nested P2M lost the frame's entry: an EPT violation
    machine = PagingMachine(PagingMode.HAP, pages=64)
    kp = kernel_on(machine)
    gfn = machine.alloc_frame()
    kp.mmu.flush()
    machine.nested.clear(gfn)
    machine.frames[machine.p2m[gfn]][:2] = b"ok"
    assert bytes(kp.frame(gfn)[:2]) == b"ok"


# -- the three modes in domains of an in-process lab ------------------------------------------
async def boot_in_mode(hypervisor, name: str, **spec):
    """Create a domain of that type and boot its kernel here with its
    paging pool, as boot.domu does: the doorbell's OK brings it read-only."""
    reply = await hypervisor._create(name, 16, "none", **spec)
    start = StartInfo(domid=reply.info.domid, name=name, secret=reply.secret,
                      hypervisor=hypervisor.address, doorbell=str(hypervisor.rundir / DOORBELL),
                      vcpus=1, console_log="", paging_mode=reply.info.paging_mode)
    flags = wire.HELLO_PAGING if start.paging_mode != "direct" else 0
    # blocking, as before a domain's event loop runs: here the hypervisor's
    # loop is this one, so off it
    sock, handed = await asyncio.to_thread(greet, start.doorbell, start.domid, start.secret,
                                           flags)
    pool = map_paging_pool(handed.paging) if handed.paging >= 0 else None
    kernel = DomainKernel(start, doorbell=sock, paging_pool=pool)
    await kernel.boot()
    hypervisor.kernels[start.domid] = kernel
    return kernel


async def test_the_same_workloads_in_domains_of_each_mode_and_the_balloon_in_each(hypervisor):
    kernels = {PagingMode.DIRECT: await boot_in_mode(hypervisor, "pv"),
               PagingMode.SHADOW: await boot_in_mode(hypervisor, "shadow", type="hvm", hap=False),
               PagingMode.HAP: await boot_in_mode(hypervisor, "hap", type="hvm", hap=True)}
    runs = {}
    for mode, kernel in kernels.items():
        assert kernel.paging.mode is mode
        runs[mode.value] = await kernel.paging.run_workloads(12, 3, seed=9)
    check_same_visible(runs)
    direct, shadow, hap = (summarize(m, runs[m]) for m in ("direct", "shadow", "hap"))
    assert direct.hypercalls > 0 and direct.traps == 0
    assert shadow.hypercalls == 0 and shadow.traps > 0
    assert hap.hypercalls == 0 and hap.refs_per_miss > WALK_REFS_1D
    # shadow: each torn-down process's shadows went with HVMOP_pagetable_dying
    assert kernels[PagingMode.SHADOW].paging.paging.backend.counters["pagetable_dying"] == 2
    # the balloon in each mode: frames out of the direct map, back as new ones
    for kernel in kernels.values():
        gfns = kernel.memory.balloon_candidates(8)
        await kernel._give_back(gfns)
        for gfn in gfns:
            with pytest.raises(IndexError):
                kernel.memory.frame(gfn)
        got = await kernel.hypercall.memory.increase_reservation(8)
        kernel.memory.add_frames(got)
        await kernel.paging.populate(got)
        for gfn in got:
            kernel.memory.frame(gfn)[:2] = b"in"
            assert bytes(kernel.memory.raw_frame(gfn)[:2]) == b"in"
        again = await kernel.paging.run_workloads(12, 3, seed=9)
        assert [r.visible() for r in again] == [r.visible() for r in runs[kernel.paging.mode.value]]


async def test_a_mapped_grant_is_a_pte_the_hypervisor_wrote_and_unmap_takes_it_away(hypervisor):
    """GNTMAP_host_map | GNTMAP_contains_pte from a direct-paging kernel:
    the page is reached through the MMU at an address of its vmalloc area,
    whose L1 entry the hypervisor wrote; unmap clears it, and a read of the
    address faults from then on."""
    dom0 = await hypervisor.boot_dom0()
    guest = await hypervisor.boot_domain("web")
    gfn = guest.memory.alloc_frames(1)[0]
    guest.memory.frame(gfn)[:6] = b"guest!"
    ref, readonly_ref = await guest.gnttab.grant_access([(0, gfn, False), (0, gfn, True)])
    mfn = hypervisor.hv.memory.gfn_to_mfn(guest.domid, gfn)
    mmu = dom0.paging.paging.mmu
    pagetables = hypervisor.hv.memory.pagetables
    refs = pagetables.info(mfn).refs            # the guest's own direct map's entry
    page = await dom0.gnttab.map(guest.domid, ref)
    again = await dom0.gnttab.map(guest.domid, readonly_ref, readonly=True)
    slot = dom0.gnttab._slots[page.handle]
    area = dom0.gnttab._area
    assert mmu.translate(area.va(slot), write=True) == mfn
    assert pagetables.info(mfn).refs == refs + 2
    assert bytes(page.view[:6]) == b"guest!"
    page.view[:6] = b"dom0!!"
    assert bytes(guest.memory.frame(gfn)[:6]) == b"dom0!!" == bytes(again.view[:6])
    ro_slot = dom0.gnttab._slots[again.handle]
    with pytest.raises(PageFault):              # the read-only grant's PTE has no RW
        mmu.translate(area.va(ro_slot), write=True)
    await dom0.gnttab.unmap(page)
    with pytest.raises(PageFault):
        mmu.translate(area.va(slot))
    assert bytes(again.view[:6]) == b"dom0!!"   # the other mapping of the frame stays
    await dom0.gnttab.unmap_batch([again.handle])
    with pytest.raises(PageFault):
        mmu.translate(area.va(ro_slot))
    assert pagetables.info(mfn).refs == refs
    assert guest.gnttab.end_access([ref, readonly_ref]) == []     # no longer in use


async def test_grant_slots_are_reused_and_their_l1_made_once(hypervisor):
    dom0 = await hypervisor.boot_dom0()
    guest = await hypervisor.boot_domain("web")
    gfns = guest.memory.alloc_frames(3)
    refs = await guest.gnttab.grant_access([(0, gfn, False) for gfn in gfns])
    counters = dom0.paging.paging.paging.counters
    tables = counters["tables"]
    pages = await dom0.gnttab.map_batch([(guest.domid, ref, False) for ref in refs])
    slots = [dom0.gnttab._slots[page.handle] for page in pages]
    # the area's first tables: its L3, L2 and the L1 under its first 512 pages
    assert slots == [0, 1, 2] and counters["tables"] == tables + 3
    await dom0.gnttab.unmap(pages[1])
    again = await dom0.gnttab.map(guest.domid, refs[1])
    assert dom0.gnttab._slots[again.handle] == 1 and counters["tables"] == tables + 3
    for gfn, page in zip(gfns, (pages[0], again, pages[2])):
        page.view[:2] = b"ok"
        assert bytes(guest.memory.frame(gfn)[:2]) == b"ok"


def test_a_frame_mapped_twice_is_reached_until_its_last_view_goes():
    frames = DomainFrames(lambda gfn: memoryview(bytearray(4096)), {0: 100})
    first, second = memoryview(bytearray(4096)), memoryview(bytearray(4096))
    frames.map_machine(7, first)
    frames.map_machine(7, second)
    frames.unmap_machine(7, first)              # the older mapping goes first
    assert frames(7) is second
    frames.unmap_machine(7, second)
    with pytest.raises(LookupError):
        frames(7)
