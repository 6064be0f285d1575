"""hypervisor.paging: each domain's paging pool taken from the machine pool
and given back, its nested P2M kept in step with its P2M, the exits of the
wrong mode refused, and the read-only descriptor of its pool object."""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from xenlab.domain.memory import map_paging_pool
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.paging import MIN_POOL_PAGES, Paging
from xenlab.testing_invariants import check_machine_frames
from xenlab.xen import abi
from xenlab.xen.errors import MemoryError_, XenError
from xenlab.xen.paging import (PFEC_USER, PFEC_WRITE, PTE_PRESENT, PTE_RW, PTE_USER, PagingMode,
                               pte, pte_frame, va_index)

TOTAL = 4096


@pytest.fixture
def shm_dir():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="xl-paging-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine(shm_dir):
    mem = MachineMemory(shm_dir, "t-", total_pages=TOTAL)
    paging = Paging(mem)
    yield mem, paging
    for domid in paging.domains():
        paging.remove_domain(domid)
    for domid in mem.domains():
        with contextlib.suppress(XenError):
            mem.remove_domain(domid)
    assert mem.shm_files() == []


def add(machine, domid: int, mode: PagingMode, pages: int = 64, pool: int = MIN_POOL_PAGES,
        max_pages: int | None = None):
    mem, paging = machine
    mem.add_domain(domid, max_pages or pages, pages)
    return paging.add_domain(domid, mode, pool if mode is not PagingMode.DIRECT else 0)


def nested_p2m(dom, gfns) -> dict[int, int | None]:
    return {gfn: dom.nested.lookup(gfn) for gfn in gfns}


def test_direct_paging_takes_no_pool(machine):
    mem, paging = machine
    dom = add(machine, 1, PagingMode.DIRECT)
    assert mem.free_pages == TOTAL - 64
    assert paging.info(1) == dict(domid=1, mode="direct", pool_pages=0, pool_used=0,
                                  pool_mfns=[], eptp=0, shadow_root=0, cr3=0)
    assert dom.pool is None and dom.nested is None and dom.shadow is None
    with pytest.raises(MemoryError_) as err:
        paging.read_only_fd(1)
    assert err.value.errno == errno.ENOENT


@pytest.mark.parametrize("mode", [PagingMode.SHADOW, PagingMode.HAP])
def test_the_pool_leaves_free_memory_belongs_to_no_one_and_comes_back_at_destroy(machine, mode):
    mem, paging = machine
    dom = add(machine, 1, mode, pool=300)
    pool = paging.info(1)["pool_mfns"]
    assert len(pool) == 300 and len(set(pool)) == 300
    assert mem.free_pages == TOTAL - 64 - 300
    # As Xen's p2m and shadow pool pages: no owner, no M2P entry.
    assert all(mem.mfn_owner(mfn) is None for mfn in pool)
    assert mem.machine_to_phys(pool) == [abi.INVALID_M2P_ENTRY] * 300
    assert not set(pool) & set(mem.p2m(1).values())
    assert mem.pool().unowned == set(pool) and check_machine_frames(mem) == []
    path = dom.path
    assert path.stat().st_size == 300 * abi.PAGE_SIZE
    paging.remove_domain(1)
    mem.remove_domain(1)
    assert mem.free_pages == TOTAL and mem.pool().unowned == frozenset()
    assert not path.exists() and check_machine_frames(mem) == []


def test_a_pool_the_host_cannot_give_is_refused_and_nothing_is_taken(machine):
    mem, paging = machine
    mem.add_domain(1, 64, 64)
    with pytest.raises(MemoryError_) as err:
        paging.add_domain(1, PagingMode.SHADOW, TOTAL)
    assert err.value.errno == errno.ENOMEM
    assert mem.free_pages == TOTAL - 64 and paging.domains() == []
    assert check_machine_frames(mem) == []
    assert [p.name for p in mem.shm_dir.iterdir()] == ["t-d1"]


def test_a_pool_below_xens_floor_is_refused(machine):
    mem, paging = machine
    mem.add_domain(1, 64, 64)
    with pytest.raises(MemoryError_) as err:
        paging.add_domain(1, PagingMode.HAP, MIN_POOL_PAGES - 1)
    assert err.value.errno == errno.EINVAL and "256" in err.value.message


def test_the_nested_p2m_is_the_p2m_from_creation(machine):
    mem, _ = machine
    dom = add(machine, 1, PagingMode.HAP, pages=200)
    assert nested_p2m(dom, range(256)) == {g: mem.p2m(1).get(g) for g in range(256)}
    assert dom.pool.owns(dom.nested.root)


def test_the_nested_p2m_follows_a_balloon_out_and_in(machine):
    """A frame ballooned out leaves the nested P2M; repopulated, it is a
    different mfn, and the nested P2M names the new one."""
    mem, paging = machine
    dom = add(machine, 1, PagingMode.HAP, pages=64, max_pages=128)
    before = mem.p2m(1)
    gone = list(range(16, 32))
    mem.decrease_reservation(1, gone)
    assert nested_p2m(dom, gone) == dict.fromkeys(gone)
    assert mem.increase_reservation(1, nr_pages=16) == gone
    after = mem.p2m(1)
    assert not {after[g] for g in gone} & set(before.values())
    assert nested_p2m(dom, range(128)) == {g: after.get(g) for g in range(128)}
    # Growing past the first reservation maps the new gfns too.
    assert mem.increase_reservation(1, gfns=[100, 127]) == [100, 127]
    assert nested_p2m(dom, [100, 127]) == {100: mem.gfn_to_mfn(1, 100),
                                           127: mem.gfn_to_mfn(1, 127)}
    assert paging.stats(1)["counters"]["updates"] >= 64 + 16 + 16 + 2
    assert check_machine_frames(mem) == []


def test_a_populate_the_pool_cannot_map_is_refused_and_leaves_nothing_half_done(machine):
    """A full pool refuses the populate (ENOMEM), as Xen's p2m_set_entry
    failing fails populate_physmap: no gfn is populated, no frame taken."""
    mem, paging = machine
    # Every table page the pool has goes to gfns far apart (one L1 each).
    dom = add(machine, 1, PagingMode.HAP, pages=1, max_pages=1 << 20)
    spread = [gfn * 512 for gfn in range(1, 2048)]
    with pytest.raises(MemoryError_) as err:
        for i in range(0, len(spread), 64):
            mem.increase_reservation(1, gfns=spread[i:i + 64])
    assert err.value.errno == errno.ENOMEM and "shadow_memory" in err.value.message
    populated = mem.populated(1)
    assert len(populated) > 1 and (len(populated) - 1) % 64 == 0      # whole batches only
    assert nested_p2m(dom, spread) == {g: mem.p2m(1).get(g) for g in spread}
    assert mem.free_pages == TOTAL - len(populated) - MIN_POOL_PAGES
    assert check_machine_frames(mem) == []


def test_exits_of_the_other_mode_are_refused(machine):
    _, paging = machine
    add(machine, 1, PagingMode.HAP)
    add(machine, 2, PagingMode.SHADOW)
    add(machine, 3, PagingMode.DIRECT)
    for domid in (1, 3):
        for exit_ in (lambda d: paging.page_fault(d, 0x1000, PFEC_WRITE),
                      lambda d: paging.set_cr3(d, 5),
                      lambda d: paging.pagetable_dying(d, 5 * abi.PAGE_SIZE)):
            with pytest.raises(MemoryError_) as err:
                exit_(domid)
            assert err.value.errno == errno.EINVAL and "shadow-mode exit" in err.value.message
    for domid in (2, 3):
        with pytest.raises(MemoryError_) as err:
            paging.nested_fault(domid, 0x1000, False)
        assert err.value.errno == errno.EINVAL and "hap-mode exit" in err.value.message
    assert all(paging.stats(d)["traps"] == 0 for d in (1, 2, 3))


def test_a_nested_fault_on_a_populated_frame_is_fixed_and_on_a_hole_is_efault(machine):
    mem, paging = machine
    dom = add(machine, 1, PagingMode.HAP, pages=8, max_pages=16)
    assert paging.nested_fault(1, 3 * abi.PAGE_SIZE + 12, True) == mem.gfn_to_mfn(1, 3)
    dom.nested.clear(4)                    # an entry gone behind the P2M's back
    assert paging.nested_fault(1, 4 * abi.PAGE_SIZE, False) == mem.gfn_to_mfn(1, 4)
    assert dom.nested.lookup(4) == mem.gfn_to_mfn(1, 4)
    with pytest.raises(MemoryError_) as err:
        paging.nested_fault(1, 12 * abi.PAGE_SIZE, False)
    assert err.value.errno == errno.EFAULT and "not populated" in err.value.message
    assert paging.stats(1)["traps"] == 3
    assert paging.stats(1)["hypercalls"] == {"nested_fault": 3}


def test_a_shadow_domains_cr3_load_is_shadowed_in_its_pool(machine):
    _, paging = machine
    dom = add(machine, 1, PagingMode.SHADOW)
    root = paging.set_cr3(1, 2)
    assert dom.pool.owns(root)
    info = paging.info(1)
    assert (info["cr3"], info["shadow_root"], info["pool_used"]) == (2, root, dom.pool.used)
    assert info["pool_used"] >= 1
    with pytest.raises(MemoryError_) as err:
        paging.page_fault(1, 0x1000, PFEC_WRITE, b"\0" * 9)
    assert err.value.errno == errno.EINVAL
    # The guest's L4 is empty: a read fault is the guest's own.
    assert paging.page_fault(1, 0x1000, 0) == "inject"
    paging.pagetable_dying(1, 2 * abi.PAGE_SIZE)
    assert paging.stats(1)["hypercalls"] == {"set_cr3": 1, "page_fault": 1,
                                             "pagetable_dying": 1}
    assert paging.stats(1)["traps"] == 3
    assert paging.stats(1)["counters"]["pagetable_dying"] == 1


def test_the_domains_pool_descriptor_is_read_only(machine):
    """What HELLO_PAGING hands the domain: it reads the hypervisor's tables
    and can write them neither through the descriptor nor a mapping."""
    mem, paging = machine
    dom = add(machine, 1, PagingMode.HAP)
    fd = paging.read_only_fd(1)
    dom.frame(dom.nested.root)[:8] = b"EPT-ROOT"
    page = dom.index[dom.nested.root]
    assert os.pread(fd, 8, page * abi.PAGE_SIZE) == b"EPT-ROOT"
    with pytest.raises(OSError) as err:
        os.pwrite(fd, b"x", 0)
    assert err.value.errno == errno.EBADF
    with pytest.raises(OSError) as err:
        os.ftruncate(fd, 0)
    assert err.value.errno in (errno.EBADF, errno.EINVAL)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, abi.PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    # The guest's own mapping (domain.memory.map_paging_pool) is read-only.
    view = map_paging_pool(os.dup(fd))
    try:
        assert bytes(view.view[page * abi.PAGE_SIZE:page * abi.PAGE_SIZE + 8]) == b"EPT-ROOT"
        assert view.view.readonly
        with pytest.raises(TypeError):
            view.view[0] = 1
    finally:
        view.close()
    assert os.fstat(fd).st_size == MIN_POOL_PAGES * abi.PAGE_SIZE


def test_the_frame_invariants_count_pool_frames_and_catch_one_also_free(machine):
    mem, paging = machine
    dom = add(machine, 1, PagingMode.HAP)
    assert check_machine_frames(mem) == []
    mem._free.append(dom.mfns[0])          # a pool frame handed out again: a double owner
    problems = check_machine_frames(mem)
    assert any("in a paging pool and free" in p for p in problems), problems
    mem._free.pop()
    mem._unowned.discard(dom.mfns[1])      # a pool frame the machine pool lost count of
    assert any("accounted for" in p for p in check_machine_frames(mem))
    mem._unowned.add(dom.mfns[1])


def test_stats_take_direct_modes_counters_from_the_page_table_core(shm_dir):
    mem = MachineMemory(shm_dir, "t-", total_pages=TOTAL)
    tables = {1: {"mmu_update_calls": 3, "mmuext_calls": 2, "validations": 7, "entries": 40}}
    paging = Paging(mem, table_stats=lambda domid: tables.get(domid, {}))
    mem.add_domain(1, 16, 16)
    paging.add_domain(1, PagingMode.DIRECT, 0)
    paging.count(1, "mmu_update")          # counted by the adapter too: the core's count wins
    stats = paging.stats(1)
    assert stats["hypercalls"] == {"mmu_update": 3, "mmuext_op": 2}
    assert stats["validations"] == 7 and stats["counters"] == {"entries": 40}
    assert stats["traps"] == 0 and stats["pool_pages"] == 0
    paging.remove_domain(1)
    mem.remove_domain(1)


def shadow_l1_entry(dom, va: int) -> int:
    """The shadow L1 entry the MMU would use for ``va``, walked by hand (0: none)."""
    table = dom.shadow.root
    for level in (4, 3, 2, 1):
        entry = struct.unpack_from("<Q", dom.frame(table), va_index(va, level) * 8)[0]
        if level == 1 or not entry & PTE_PRESENT:
            return entry
        table = pte_frame(entry)
    return 0


def test_the_shadows_follow_a_balloon_out(machine):
    """A frame the balloon takes back is mapped by no shadow any more (the
    P2M hook reaches ShadowPaging.p2m_changed), and the guest is told to
    flush its TLB."""
    mem, paging = machine
    dom = add(machine, 1, PagingMode.SHADOW, pages=32)
    va, data_gfn = 0x7F0000001000, 20
    # The guest's own tables, in guest-physical terms: L4 2 -> L3 3 -> L2 4 -> L1 5.
    flags = PTE_PRESENT | PTE_RW | PTE_USER
    for level, (table, child) in zip((4, 3, 2, 1), ((2, 3), (3, 4), (4, 5), (5, data_gfn))):
        struct.pack_into("<Q", mem.frame(1, table), va_index(va, level) * 8, pte(child, flags))
    paging.set_cr3(1, 2)
    assert paging.page_fault(1, va, PFEC_USER) == "fixed"
    assert pte_frame(shadow_l1_entry(dom, va)) == mem.gfn_to_mfn(1, data_gfn)
    paging.take_tlb_flush(1)
    mem.decrease_reservation(1, [data_gfn])
    assert not shadow_l1_entry(dom, va) & PTE_PRESENT
    assert paging.take_tlb_flush(1) and not paging.take_tlb_flush(1)
    assert paging.stats(1)["counters"]["p2m_changes"] == 1
    assert check_machine_frames(mem) == []
