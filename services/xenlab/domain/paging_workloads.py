"""The paging workloads: what a guest's processes do to its MMU, the same in
every paging mode, so that the modes can be held against each other.

Four workloads, run in order over one guest kernel's paging
(``domain.pagetable.GuestPaging``), each in a user address space of its own:

* ``build``: a process maps N fresh pages and touches them (writes a pattern
  derived from the page's index into each, then reads every page back);
* ``fork``: a fork-like copy-on-write duplicate (``AddressSpace.fork_cow``),
  the child writes half the pages (each write a COW fault the guest's
  handler resolves by copying the page, as Linux's do_wp_page), then child
  and parent read every page back: the child sees its writes, the parent
  the pages as they were;
* ``remap``: M pages are moved to another place in the address space
  (unmap, map the same frame elsewhere, as mremap does), read there, and the
  old place is touched once: a not-present fault the workload sees (SIGSEGV);
* ``teardown``: both address spaces are torn down and their frames freed.

What each returns is split in two. What the guest can see: a digest of the
bytes it read back (and of the address of the fault the remap workload
takes), the page faults its kernel's handler took (address and error code:
the COW faults, the remap's), and the COW copies: identical in every mode. What it cost: counters
of the MMU (TLB misses, walk memory references), the kernel (page-table
writes) and, through ``hypervisor_counters``, the hypervisor (hypercalls,
VM exits, shadow or nested P2M pages): these differ by mode, and are the
comparison ``xenlab bench --only paging`` prints.

No I/O: the clock is injected, the caller supplies frames.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from xenlab.domain.mmu import PageFault
from xenlab.domain.pagetable import AddressSpace, GuestPaging
from xenlab.xen.abi import PAGE_SIZE
from xenlab.xen.paging import USER_BASE

WORKLOADS = ("build", "fork", "remap", "teardown")
# Where remap moves pages: far enough from USER_BASE that the moved pages
# need page tables of their own (another L2), as an mremap to a new region does.
REMAP_BASE = USER_BASE + (1 << 30)
# Counters of the guest kernel that its own handler sees (the same in every mode).
GUEST_VISIBLE = ("page_faults", "cow_copies")
MAX_PAGES = 1 << 16          # 256 MiB of user pages: a bound on one run's work
DEFAULT_PAGES = 512
DEFAULT_REMAP = 64


class WorkloadError(ValueError):
    """Parameters a run cannot have (no pages, more remapped than mapped)."""


class WorkloadBroken(RuntimeError):
    """The guest's paging did not do what a process relies on."""


@dataclass(frozen=True)
class WorkloadResult:
    name: str
    ops: int        # pages handled (build N, fork N, remap M, teardown 2N): time per operation's divisor
    digest: str                           # of every byte the workload read back, in order
    faults: tuple[tuple[int, int], ...]   # (va, PFEC code) of each #PF its kernel's handler took
    guest: dict[str, int]                 # GUEST_VISIBLE counters taken during it
    counters: dict[str, int]              # everything else that moved during it
    seconds: float
    gauges: dict[str, int] = field(default_factory=dict)   # levels at its end (pool pages in use)

    def visible(self) -> tuple:
        """What the guest can observe: equal across modes."""
        return self.name, self.digest, self.faults, tuple(sorted(self.guest.items()))

    def per_op_us(self) -> float:
        return self.seconds / self.ops * 1e6 if self.ops else 0.0


@dataclass
class _Run:
    paging: GuestPaging
    alloc: Callable[[], int]
    free: Callable[[int], None]
    hypervisor_counters: Callable[[], Mapping[str, int]]
    gauges: Callable[[], Mapping[str, int]]
    home: Callable[[], None]
    clock: Callable[[], float]
    seed: int
    spaces: list[AddressSpace] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def pattern(seed: int, generation: int, index: int) -> bytes:
    """The 4 KiB a workload writes into page ``index``: different per page
    and per generation (the fork's child writes generation 1), so a page
    read through a wrong mapping or an uncopied COW page shows in the digest."""
    block = hashlib.blake2b(f"{seed}:{generation}:{index}".encode(), digest_size=64).digest()
    return block * (PAGE_SIZE // len(block))


def page_va(base: int, index: int) -> int:
    return base + index * PAGE_SIZE


def run_workloads(paging: GuestPaging, alloc: Callable[[], int], free: Callable[[int], None],
                  pages: int, remap: int, seed: int = 0,
                  hypervisor_counters: Callable[[], Mapping[str, int]] = dict,
                  gauges: Callable[[], Mapping[str, int]] = dict,
                  home: Callable[[], None] | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> list[WorkloadResult]:
    """The four workloads, in order, over ``paging`` (which must be booted:
    its kernel address space active). ``alloc``/``free``: the guest's frame
    allocator for the workloads' data pages (gfns). ``hypervisor_counters``:
    the hypervisor's counters of this domain (diffed around each workload);
    ``gauges``: levels read at each workload's end (shadow or nested P2M
    pages in use: the hypervisor's bookkeeping memory). ``home``: loads the
    kernel's own address space back before the workloads' are torn down (a
    table in CR3 is not freed: Linux switches to init_mm first); by default
    ``paging.kernel_space``'s activate."""
    if not 1 <= pages <= MAX_PAGES:
        raise WorkloadError(f"pages must be 1..{MAX_PAGES}, not {pages}")
    if not 0 <= remap <= pages:
        raise WorkloadError(f"remap must be 0..{pages} (the pages mapped), not {remap}")
    if home is None:
        home = _kernel_space_of(paging)
    run = _Run(paging, alloc, free, hypervisor_counters, gauges, home, clock, seed)
    try:
        return [_measured(run, "build", pages, lambda: _build(run, pages)),
                _measured(run, "fork", pages, lambda: _fork(run, pages)),
                _measured(run, "remap", remap, lambda: _remap(run, pages, remap)),
                _measured(run, "teardown", 2 * pages, lambda: _teardown(run))]
    finally:
        _teardown(run)


def _kernel_space_of(paging: GuestPaging) -> Callable[[], None]:
    def home() -> None:
        if paging.kernel_space is not None:
            paging.kernel_space.activate()
    return home


def _snapshot(run: _Run) -> Counter:
    counters = Counter()
    mmu = run.paging.mmu
    counters.update({f"mmu.{k}": v for k, v in mmu.counters.items()})
    counters.update({f"guest.{k}": v for k, v in run.paging.counters.items()})
    counters.update({f"hv.{k}": v for k, v in run.hypervisor_counters().items()})
    return counters


def _measured(run: _Run, name: str, ops: int, body) -> WorkloadResult:
    before = _snapshot(run)
    taken = len(run.paging.faults)
    started = run.clock()
    digest = body()
    seconds = run.clock() - started
    faults = run.paging.faults[taken:]
    after = _snapshot(run)
    moved = {k: after[k] - before[k] for k in after.keys() | before.keys() if after[k] != before[k]}
    guest = {k: moved.pop(f"guest.{k}", 0) for k in GUEST_VISIBLE}
    return WorkloadResult(name, ops, digest.hexdigest(), tuple(faults), guest, moved, seconds,
                          dict(run.gauges()))


def _touch(run: _Run, digest, base: int, indexes, generation: int | None) -> None:
    """Write generation ``generation`` of each page (None: only read), then
    read each page back into ``digest``."""
    if generation is not None:
        for i in indexes:
            run.paging.access(page_va(base, i), PAGE_SIZE, write=True)[:] = pattern(run.seed, generation, i)
    for i in indexes:
        digest.update(run.paging.access(page_va(base, i), PAGE_SIZE, write=False))


def _build(run: _Run, pages: int):
    space = AddressSpace(run.paging, user=True)
    run.spaces.append(space)
    for _ in range(pages):
        run.frames.append(run.alloc())
    space.map_many([(page_va(USER_BASE, i), gfn, True) for i, gfn in enumerate(run.frames)])
    space.activate()
    digest = hashlib.sha256()
    _touch(run, digest, USER_BASE, range(pages), generation=0)
    return digest


def _fork(run: _Run, pages: int):
    parent = run.spaces[0]
    child = parent.fork_cow()
    run.spaces.append(child)
    digest = hashlib.sha256()
    child.activate()
    _touch(run, digest, USER_BASE, range(0, pages, 2), generation=1)
    _touch(run, digest, USER_BASE, range(pages), generation=None)
    parent.activate()
    _touch(run, digest, USER_BASE, range(pages), generation=None)
    return digest


def _remap(run: _Run, pages: int, count: int):
    parent = run.spaces[0]
    digest = hashlib.sha256()
    for i in range(count):
        parent.unmap(page_va(USER_BASE, i))
    parent.map_many([(page_va(REMAP_BASE, i), run.frames[i], True) for i in range(count)])
    _touch(run, digest, REMAP_BASE, range(count), generation=None)
    if count:
        try:
            run.paging.access(page_va(USER_BASE, 0), 1, write=False)
        except PageFault as fault:
            # SIGSEGV: what the process sees is the fault's address
            digest.update(fault.va.to_bytes(8, "little"))
        else:
            raise WorkloadBroken("a page that was moved away is still mapped at its old place")
    return digest


def _teardown(run: _Run):
    """Tear every address space down (the child first: its COW copies are
    its own frames), then give the data frames back. Idempotent: the run's
    ``finally`` calls it again after a failure part-way."""
    if run.spaces:
        run.home()
    while run.spaces:
        run.spaces.pop().teardown()
    while run.frames:
        run.free(run.frames.pop())
    return hashlib.sha256()
