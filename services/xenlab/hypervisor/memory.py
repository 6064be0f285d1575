"""Machine memory: a pool of machine frames, each domain's P2M into it, the
global M2P, reservations and validated page-table updates.

Machine frames. The host has ``total_pages`` machine frames, numbered from
``MFN_HYPERVISOR_LIMIT`` (frames below are Xen's own text, heap and tables).
The hypervisor owns them all; a frame is free, owned by one domain at one
gfn, or held by nobody but still referenced (a frame of a domain that is
gone, still named by a PTE or a grant mapping: Xen frees a page only when
its last reference goes). Each domain's P2M maps its populated gfns to
frames, the M2P maps every owned frame back to (domid, gfn); the two are
inverses of each other, always. ``populate_physmap`` hands out whatever
frames are free: never-used ones first, then the longest free, so a frame
the balloon gave back comes back as a different mfn.

Where a frame's bytes live. A domain's process maps one memory object of
its own, a file in a tmpfs directory: page 0 is its shared_info page (a Xen
heap page, not guest RAM), and the bytes of the frame at its ``gfn`` are
page ``1 + gfn``, whichever mfn the P2M says it is. One object per domain
rather than one pool file every domain maps: a host process cannot be kept
from the rest of a mapped file the way Xen's validated page tables keep a
guest from other domains' frames, so each domain is handed its own memory
only (and Domain-0 the granter's, for a grant map). A frame's bytes never
have to move between objects: Xen scrubs a frame before handing it out
again, and the hole punched into the old owner's object when the frame was
freed is that scrub; the new owner's page at its gfn reads as zeros. The
mfn is therefore the frame's identity (what PTEs, grant mappings and the
M2P name) and the P2M decides which gfn page stands for it.

Host memory. tmpfs allocates lazily: a frame costs host memory once it is
written, and a freed frame is punched out again (MADV_REMOVE, as
fallocate(FALLOC_FL_PUNCH_HOLE)). The domain's process maps its whole
object but makes unpopulated frames PROT_NONE; a domain that brings a freed
page back anyway (mprotect is its own) gets it punched out again at its next
reservation call or new target.

Page tables: ``hypervisor/pagetables.py`` (Xen's page types and type
counts, L1 to L4) validates every mmu_update and mmuext_op; this module
caps the calls, hands it each frame's bytes and owner, and asks it whether
a frame is still referenced before the frame may be freed.

Every call is capped (``MAX_EXTENTS``, ``MAX_MMU_UPDATES``,
``MAX_MMUEXT_OPS``) and costs O(1) per item: "may this frame be freed?" is
answered from counts kept exact on every change, never by a scan.
"""
from __future__ import annotations

import errno
import mmap
import os
from collections import deque
from itertools import repeat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from xenlab.hypervisor.pagetables import PageTables
from xenlab.xen import abi
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import MAX_MMU_UPDATES, MAX_MMUEXT_OPS, MMUEXT_NAMES, PageType

# Machine frames below this are Xen's own text, heap and tables.
MFN_HYPERVISOR_LIMIT = 0x100
# The most frames one domain may have: 16 GiB.
MAX_DOMAIN_PAGES = 1 << 22
# 52-bit physical addresses (x86_64): the number of machine frames there are.
MFN_LIMIT = 1 << (52 - abi.PAGE_SHIFT)
MAX_EXTENTS = abi.MAX_EXTENTS
# Data extents of a segment examined per reservation call when punching out
# frames the domain brought back; the walk resumes there on the next call.
REPUNCH_EXTENTS = 256

_MMUEXT_BY_NAME = {name: cmd for cmd, name in MMUEXT_NAMES.items()}

# A busy check answers why a domain's frame may not be freed now, or None.
BusyCheck = Callable[[int, int], "str | None"]
# The machine frames some other core still references (e.g. grant mappings).
HeldFrames = Callable[[], "Iterable[int]"]
# Told of every change to a domain's P2M: (domid, [(gfn, new mfn or None)]).
# Called before a populate takes effect, so that raising XenError refuses it
# (the paging pool cannot map the new frames); after a decrease, with None.
P2mHook = Callable[[int, "list[tuple[int, int | None]]"], None]


class Pool(NamedTuple):
    first: int          # the pool's first frame
    fresh: int          # frames from here on were never handed out
    free: list[int]     # freed frames, the longest free first
    kept: set[int]      # a gone domain's frames something still references
    unowned: frozenset[int] = frozenset()   # the hypervisor's own (paging pools)


@dataclass
class _Segment:
    domid: int
    path: Path
    fd: int
    info: mmap.mmap            # segment page 0: shared_info
    ram: mmap.mmap             # segment pages 1..capacity: guest frames
    capacity: int
    max_pages: int
    target_pages: int
    p2m: dict[int, int] = field(default_factory=dict)       # gfn -> mfn
    present: bytearray = field(default_factory=bytearray)   # 1 per populated gfn
    free_hint: int = 0          # every gfn below it is populated
    repunch_at: int = 0         # where the next walk for brought-back pages starts

    @property
    def current(self) -> int:
        return len(self.p2m)


def _close(m: mmap.mmap) -> None:
    # A SharedInfo or a frame view may still export the buffer; the mapping
    # then goes away with the last export.
    try:
        m.close()
    except BufferError:
        pass


class MachineMemory:
    def __init__(self, shm_dir: Path, prefix: str, total_pages: int):
        self.shm_dir = Path(shm_dir)
        self.prefix = prefix
        if not 0 <= total_pages <= MFN_LIMIT - MFN_HYPERVISOR_LIMIT:
            raise MemoryError_(errno.EINVAL, f"{total_pages} machine frames do not fit in "
                                             "a 52-bit physical address space")
        self._total = total_pages
        self._segs: dict[int, _Segment] = {}
        # The pool: frames never handed out start at _fresh; freed ones
        # queue in _free, the longest free first.
        self._fresh = MFN_HYPERVISOR_LIMIT
        self._free: deque[int] = deque()
        self._m2p: dict[int, tuple[int, int]] = {}   # mfn -> (domid, gfn)
        self._orphans: set[int] = set()              # a gone domain's frames still referenced
        self._held_checks: list[HeldFrames] = []
        self.pagetables = PageTables(self._mfn_frame, self._mfn_domid, self._is_ram)
        self._busy_checks: list[BusyCheck] = []
        self._p2m_hooks: list[P2mHook] = []
        # Frames the hypervisor took for itself (paging pools): no owner, no
        # M2P entry, as Xen's p2m/shadow pool pages (MEMF_no_owner).
        self._unowned: set[int] = set()

    # -- accounting ------------------------------------------------------------
    @property
    def total_pages(self) -> int:
        return self._total

    @property
    def free_pages(self) -> int:
        return self._total - len(self._m2p) - len(self._orphans) - len(self._unowned)

    def add_busy_check(self, check: BusyCheck) -> None:
        """Register another core's veto on freeing a frame (e.g. a mapped grant)."""
        self._busy_checks.append(check)

    def add_held_frames(self, held: HeldFrames) -> None:
        """Register another core's references to machine frames (a grant
        mapping keeps its frame after the granter is gone), so that a gone
        domain's frame returns to the pool only once nothing names it."""
        self._held_checks.append(held)

    def add_p2m_hook(self, hook: P2mHook) -> None:
        """Register a follower of every domain's P2M (the nested P2M of a
        HAP domain, the shadows of a shadow-mode one)."""
        self._p2m_hooks.append(hook)

    # -- the pool ----------------------------------------------------------------
    def alloc_unowned(self, count: int) -> list[int]:
        """Machine frames for the hypervisor's own use (a paging pool): they
        leave free_pages, belong to no domain and have no M2P entry."""
        if count > self.free_pages:
            self._reclaim_orphans()
        if count > self.free_pages:
            raise MemoryError_(errno.ENOMEM, f"{count} machine frames wanted for a paging pool; "
                                             f"the host has {self.free_pages} free")
        mfns = self._alloc(count)
        self._unowned.update(mfns)
        return mfns

    def free_unowned(self, mfns: Iterable[int]) -> None:
        """Give frames of alloc_unowned back to the pool."""
        mfns = list(mfns)
        if not self._unowned.issuperset(mfns):
            raise MemoryError_(errno.EINVAL, "a frame given back is not the hypervisor's own")
        self._unowned.difference_update(mfns)
        self._free.extend(mfns)

    def _alloc(self, count: int) -> list[int]:
        if count > self._fresh_left() + len(self._free):
            self._reclaim_orphans()
        if count > self._fresh_left() + len(self._free):
            raise MemoryError_(errno.ENOMEM, f"{count} machine frames wanted; "
                                             f"{self._fresh_left() + len(self._free)} are free")
        fresh = min(count, self._fresh_left())
        out = list(range(self._fresh, self._fresh + fresh))
        self._fresh += fresh
        out.extend(self._free.popleft() for _ in range(count - fresh))
        return out

    def _fresh_left(self) -> int:
        return MFN_HYPERVISOR_LIMIT + self._total - self._fresh

    def _reclaim_orphans(self) -> None:
        # Only when the pool runs short and a gone domain left frames behind:
        # the references are counted by the cores that hold them.
        if not self._orphans:
            return
        held = self._held()
        back = [mfn for mfn in self._orphans
                if not self.pagetables.busy(mfn) and mfn not in held]
        self._orphans.difference_update(back)
        self._free.extend(sorted(back))

    def _held(self) -> set[int]:
        held: set[int] = set()
        for check in self._held_checks:
            held.update(check())
        return held

    # -- domains ---------------------------------------------------------------
    def add_domain(self, domid: int, max_pages: int, initial_pages: int) -> None:
        if domid in self._segs:
            raise MemoryError_(errno.EEXIST, f"d{domid} already has memory")
        if initial_pages > max_pages:
            raise MemoryError_(errno.EINVAL, f"d{domid}: initial reservation {initial_pages} "
                                             f"pages exceeds the maximum {max_pages}")
        self._check_max_limit(domid, max_pages)
        if initial_pages > self.free_pages:
            self._reclaim_orphans()
        if initial_pages > self.free_pages:
            raise MemoryError_(errno.ENOMEM, f"d{domid} needs {initial_pages} pages; "
                                             f"the host has {self.free_pages} free")
        seg = self._create_segment(domid, max(max_pages, 1), max_pages, initial_pages)
        self._segs[domid] = seg
        self._populate(seg, list(range(initial_pages)))

    def _create_segment(self, domid: int, capacity: int, max_pages: int,
                        target: int) -> _Segment:
        path = self.shm_dir / f"{self.prefix}d{domid}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise MemoryError_(errno.EEXIST, f"segment {path} already exists") from None
        try:
            os.ftruncate(fd, (1 + capacity) * abi.PAGE_SIZE)
            info = mmap.mmap(fd, abi.PAGE_SIZE, offset=0)
            ram = mmap.mmap(fd, capacity * abi.PAGE_SIZE, offset=abi.PAGE_SIZE)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return _Segment(domid, path, fd, info, ram, capacity, max_pages, target,
                        present=bytearray(capacity))

    def remove_domain(self, domid: int) -> None:
        seg = self._seg(domid)
        self.pagetables.forget_domain(domid)
        del self._segs[domid]
        # Its frames go back to the pool, but one another domain's PTE or
        # grant mapping still names stays out of it until nothing does.
        held = self._held()
        for mfn in seg.p2m.values():
            del self._m2p[mfn]
            if self.pagetables.busy(mfn) or mfn in held:
                self._orphans.add(mfn)
            else:
                self._free.append(mfn)
        _close(seg.info)
        _close(seg.ram)
        os.close(seg.fd)
        seg.path.unlink(missing_ok=True)

    def _seg(self, domid: int) -> _Segment:
        try:
            return self._segs[domid]
        except KeyError:
            raise MemoryError_(errno.ESRCH, f"no domain d{domid}") from None

    # -- the segment -------------------------------------------------------------
    def shared_info_buffer(self, domid: int) -> tuple[mmap.mmap, int]:
        return self._seg(domid).info, 0

    def segment_path(self, domid: int) -> str:
        return str(self._seg(domid).path)

    def segment_fd(self, domid: int) -> int:
        """The open segment, for a launcher to hand to the domain itself."""
        return self._seg(domid).fd

    def shm_files(self) -> list[str]:
        return sorted(str(p) for p in self.shm_dir.glob(f"{self.prefix}d*"))

    def _populated_gfn(self, seg: _Segment, gfn: int) -> None:
        if not 0 <= gfn < seg.capacity:
            raise MemoryError_(errno.EINVAL, f"gfn {gfn:#x} is outside d{seg.domid}'s "
                                             f"{seg.capacity} frames")
        if gfn not in seg.p2m:
            raise MemoryError_(errno.EINVAL, f"gfn {gfn:#x} of d{seg.domid} is not populated")

    def frame(self, domid: int, gfn: int) -> memoryview:
        seg = self._seg(domid)
        self._populated_gfn(seg, gfn)
        start = gfn * abi.PAGE_SIZE
        return memoryview(seg.ram)[start:start + abi.PAGE_SIZE]

    def frame_offset(self, domid: int, gfn: int) -> int:
        seg = self._seg(domid)
        self._populated_gfn(seg, gfn)
        return (1 + gfn) * abi.PAGE_SIZE

    def is_populated(self, domid: int, gfn: int) -> bool:
        seg = self._segs.get(domid)
        return seg is not None and gfn in seg.p2m

    # -- reservations (memory.h XENMEM_*) ------------------------------------------
    def increase_reservation(self, domid: int, nr_pages: int = 0,
                             gfns: Iterable[int] = ()) -> list[int]:
        seg = self._seg(domid)
        gfns = list(gfns)
        count = len(gfns) or nr_pages
        if gfns:
            _check_extents(len(gfns))
            self._check_new_gfns(seg, nr_pages, gfns)
        if seg.current + count > seg.max_pages:
            raise MemoryError_(errno.ENOMEM, f"d{domid}: {seg.current} + {count} pages "
                                             f"would exceed the maximum of {seg.max_pages}")
        _check_extents(count)
        if count > self.free_pages:
            self._reclaim_orphans()
        if count > self.free_pages:
            raise MemoryError_(errno.ENOMEM, f"d{domid} asks for {count} pages; the "
                                             f"host has {self.free_pages} free")
        wanted = gfns or self._lowest_free(seg, count)
        # A new frame reads as zeros (Xen scrubs it), whatever the domain
        # wrote there through its mapping since it gave it back.
        for first, run in _runs(wanted):
            self._release_frames(seg, first, run)
        self._populate(seg, wanted)
        if not gfns and wanted:
            seg.free_hint = wanted[-1] + 1
        self._repunch(seg)
        return wanted

    @staticmethod
    def _check_new_gfns(seg: _Segment, nr_pages: int, gfns: list[int]) -> None:
        if nr_pages not in (0, len(gfns)):
            raise MemoryError_(errno.EINVAL, f"nr_pages {nr_pages} does not match "
                                             f"{len(gfns)} gfns")
        if len(set(gfns)) != len(gfns):
            raise MemoryError_(errno.EINVAL, "a gfn appears twice")
        for gfn in gfns:
            if not 0 <= gfn < seg.capacity:
                raise MemoryError_(errno.EINVAL, f"gfn {gfn:#x} is outside d{seg.domid}'s "
                                                 f"{seg.capacity} frames")
            if gfn in seg.p2m:
                raise MemoryError_(errno.EINVAL, f"gfn {gfn:#x} of d{seg.domid} is "
                                                 "already populated")

    @staticmethod
    def _lowest_free(seg: _Segment, count: int) -> list[int]:
        # capacity >= max_pages, so count free gfns exist below capacity.
        free: list[int] = []
        gfn = seg.free_hint
        while len(free) < count:
            gfn = seg.present.find(0, gfn)
            if gfn < 0:
                raise MemoryError_(errno.ENOMEM, f"d{seg.domid} has no free gfn left")
            free.append(gfn)
            gfn += 1
        return free

    def _populate(self, seg: _Segment, gfns: list[int]) -> None:
        # Bookkeeping only: tmpfs backs a page when it is first touched, and
        # a never-touched or punched-out page reads as zeros.
        mfns = self._alloc(len(gfns))
        try:
            for hook in self._p2m_hooks:
                hook(seg.domid, list(zip(gfns, mfns)))
        except BaseException:
            self._free.extendleft(reversed(mfns))
            raise
        # A domain's whole reservation at create: dict.update and slice
        # stores, not a Python statement per page.
        seg.p2m.update(zip(gfns, mfns))
        self._m2p.update(zip(mfns, zip(repeat(seg.domid), gfns)))
        first = gfns[0] if gfns else 0
        if gfns == list(range(first, first + len(gfns))):
            seg.present[first:first + len(gfns)] = b"\1" * len(gfns)
        else:
            for gfn in gfns:
                seg.present[gfn] = 1

    def decrease_reservation(self, domid: int, gfns: Iterable[int]) -> list[int]:
        """XENMEM_decrease_reservation. Xen's works extent by extent and
        returns how many it removed, stopping at the first it cannot remove;
        xenlab checks every gfn first (O(1) each) and removes all of them or,
        if any is refused, none, so that a refused call leaves nothing half
        done and says which gfn was refused."""
        seg = self._seg(domid)
        gfns = list(gfns)
        _check_extents(len(gfns))
        if len(set(gfns)) != len(gfns):
            raise MemoryError_(errno.EINVAL, "a gfn appears twice")
        for gfn in gfns:
            self._populated_gfn(seg, gfn)
            self._check_freeable(seg, gfn)
        for gfn in gfns:
            mfn = seg.p2m.pop(gfn)
            del self._m2p[mfn]
            self._free.append(mfn)
            seg.present[gfn] = 0
        for first, count in _runs(gfns):
            self._release_frames(seg, first, count)
        if gfns:
            seg.free_hint = min(seg.free_hint, min(gfns))
            for hook in self._p2m_hooks:
                hook(domid, [(gfn, None) for gfn in gfns])
        self._repunch(seg)
        return gfns

    def _check_freeable(self, seg: _Segment, gfn: int) -> None:
        # Xen frees a page only when its last reference goes; a shared segment
        # cannot keep the old page alive, so a frame still in use is refused.
        mfn = seg.p2m[gfn]
        for check in self._busy_checks:
            reason = check(seg.domid, gfn)
            if reason:
                raise MemoryError_(errno.EBUSY, f"gfn {gfn:#x} of d{seg.domid} {reason}")
        reason = self.pagetables.busy(mfn)
        if reason:
            raise MemoryError_(errno.EBUSY, f"gfn {gfn:#x} of d{seg.domid} {reason}")

    @staticmethod
    def _release_frames(seg: _Segment, gfn: int, count: int) -> None:
        """Give the frames' host memory back: punch them out of tmpfs, as
        fallocate(FALLOC_FL_PUNCH_HOLE) does; they read as zeros after."""
        start, length = gfn * abi.PAGE_SIZE, count * abi.PAGE_SIZE
        try:
            seg.ram.madvise(mmap.MADV_REMOVE, start, length)
        except (AttributeError, OSError):
            seg.ram[start:start + length] = bytes(length)

    def _repunch(self, seg: _Segment) -> None:
        """Punch out again the frames the domain gave back but touched since
        (its process still maps the whole segment): walk the segment's data
        extents (SEEK_DATA/SEEK_HOLE), at most REPUNCH_EXTENTS of them per
        call, resuming where the last walk stopped."""
        pos = max(seg.repunch_at, abi.PAGE_SIZE)          # page 0 is shared_info
        end = (1 + seg.capacity) * abi.PAGE_SIZE
        for _ in range(REPUNCH_EXTENTS):
            try:
                start = os.lseek(seg.fd, pos, os.SEEK_DATA)
                stop = min(os.lseek(seg.fd, start, os.SEEK_HOLE), end)
            except OSError:           # ENXIO: no data past pos
                pos = end
                break
            if start >= end:
                pos = end
                break
            self._punch_unpopulated(seg, start // abi.PAGE_SIZE - 1,
                                    -(-stop // abi.PAGE_SIZE) - 1)
            pos = stop
        seg.repunch_at = 0 if pos >= end else pos

    def _punch_unpopulated(self, seg: _Segment, first: int, stop: int) -> None:
        gfn = seg.present.find(0, first, stop)
        while gfn != -1:
            run_end = seg.present.find(1, gfn, stop)
            run_end = stop if run_end == -1 else run_end
            self._release_frames(seg, gfn, run_end - gfn)
            gfn = seg.present.find(0, run_end, stop) if run_end < stop else -1

    def set_max(self, domid: int, max_pages: int) -> None:
        seg = self._seg(domid)
        if max_pages < seg.current:
            raise MemoryError_(errno.EINVAL, f"d{domid} has {seg.current} pages; a maximum "
                                             f"of {max_pages} is below the current reservation")
        self._check_max_limit(domid, max_pages)
        if max_pages > seg.capacity:
            self._grow(seg, max_pages)
        seg.max_pages = max_pages

    def _check_max_limit(self, domid: int, max_pages: int) -> None:
        if max_pages > MAX_DOMAIN_PAGES:
            raise MemoryError_(errno.EINVAL, f"d{domid}: {max_pages} pages is above xenlab's "
                                             f"per-domain limit of {MAX_DOMAIN_PAGES}")

    def _grow(self, seg: _Segment, capacity: int) -> None:
        os.ftruncate(seg.fd, (1 + capacity) * abi.PAGE_SIZE)
        ram = mmap.mmap(seg.fd, capacity * abi.PAGE_SIZE, offset=abi.PAGE_SIZE)
        old, seg.ram, seg.capacity = seg.ram, ram, capacity
        seg.present.extend(bytes(capacity - len(seg.present)))
        _close(old)

    def set_target(self, domid: int, target_pages: int) -> None:
        seg = self._seg(domid)
        if target_pages > seg.max_pages:
            raise MemoryError_(errno.EINVAL, f"d{domid}: target {target_pages} pages is above "
                                             f"the maximum of {seg.max_pages}")
        seg.target_pages = target_pages
        self._repunch(seg)

    def reservation(self, domid: int) -> tuple[int, int, int]:
        seg = self._seg(domid)
        return seg.current, seg.max_pages, seg.target_pages

    def memory_map(self, domid: int, with_populated: bool = False) -> dict:
        seg = self._seg(domid)
        gfns = sorted(seg.p2m) if with_populated else []
        return {
            "domid": domid,
            "shm_path": str(seg.path),
            "segment_pages": 1 + seg.capacity,
            "shared_info_offset": 0,
            "first_frame_offset": abi.PAGE_SIZE,
            "populated": gfns,
            "mfns": [seg.p2m[gfn] for gfn in gfns],
        }

    # -- the P2M --------------------------------------------------------------------
    def gfn_to_mfn(self, domid: int, gfn: int) -> int:
        seg = self._seg(domid)
        self._populated_gfn(seg, gfn)
        return seg.p2m[gfn]

    def mfn_owner(self, mfn: int) -> tuple[int, int] | None:
        """The M2P: (domid, gfn) of the frame, or None if no domain owns it."""
        return self._m2p.get(mfn)

    def machine_to_phys(self, mfns: Iterable[int]) -> list[int]:
        """Xen's machine_to_phys_mapping, which every PV guest may read: the
        gfn each frame is at in its owner's P2M, INVALID_M2P_ENTRY for a
        frame no domain owns. Like Xen's table it names no owner."""
        mfns = list(mfns)
        _check_extents(len(mfns))
        return [self._m2p.get(mfn, (0, abi.INVALID_M2P_ENTRY))[1] for mfn in mfns]

    def p2m(self, domid: int) -> dict[int, int]:
        """gfn -> mfn of every populated frame of ``domid``."""
        return dict(self._seg(domid).p2m)

    def m2p(self) -> dict[int, tuple[int, int]]:
        """mfn -> (domid, gfn) of every owned frame."""
        return dict(self._m2p)

    def p2m_view(self, domid: int) -> Mapping[int, int]:
        """The live P2M of ``domid``, read-only (the invariant checks read
        every frame after every fuzzer step: no copy)."""
        return MappingProxyType(self._seg(domid).p2m)

    def m2p_view(self) -> Mapping[int, tuple[int, int]]:
        """The live M2P, read-only."""
        return MappingProxyType(self._m2p)

    def pool(self) -> Pool:
        """The pool's state, for the invariant checks."""
        return Pool(MFN_HYPERVISOR_LIMIT, self._fresh, list(self._free), set(self._orphans),
                    frozenset(self._unowned))

    # -- page tables (xen.h mmu_update, mmuext_op): hypervisor/pagetables.py ----------
    def _mfn_frame(self, mfn: int) -> memoryview:
        """The bytes of an owned machine frame (the FrameView of the page-table core)."""
        try:
            domid, gfn = self._m2p[mfn]
        except KeyError:
            raise LookupError(f"mfn {mfn:#x} is owned by no domain") from None
        start = gfn * abi.PAGE_SIZE
        return memoryview(self._segs[domid].ram)[start:start + abi.PAGE_SIZE]

    def _mfn_domid(self, mfn: int) -> int | None:
        owner = self._m2p.get(mfn)
        return owner[0] if owner is not None else None

    def _is_ram(self, mfn: int) -> bool:
        return MFN_HYPERVISOR_LIMIT <= mfn < MFN_HYPERVISOR_LIMIT + self._total

    def mmu_update(self, domid: int, updates: list[tuple[int, int]],
                   foreign: Mapping[int, bool]) -> tuple[int, list[int]]:
        """HYPERVISOR_mmu_update: stop at the first failure, as Xen does."""
        self._seg(domid)
        _check_batch(len(updates), MAX_MMU_UPDATES, "mmu_update entries")
        return self.pagetables.mmu_update(domid, updates, foreign)

    def mmuext(self, domid: int, ops: list[tuple[int | str, int]],
               foreign: Mapping[int, bool] | None = None) -> tuple[int, list[int]]:
        """HYPERVISOR_mmuext_op over (cmd, arg): cmd a MMUEXT_* number (or
        its name, e.g. "pin_l1"), arg an mfn or a linear address."""
        self._seg(domid)
        _check_batch(len(ops), MAX_MMUEXT_OPS, "mmuext ops")
        ops = [(_MMUEXT_BY_NAME.get(cmd, -1) if isinstance(cmd, str) else cmd, arg)
               for cmd, arg in ops]
        return self.pagetables.mmuext(domid, ops, foreign)

    def revoke_foreign(self, domid: int, mfn: int, keep_readonly: bool = False) -> int:
        """See PageTables.revoke_foreign: the L1 entries of `domid` naming
        foreign frame `mfn` go with its last grant mapping of it."""
        return self.pagetables.revoke_foreign(domid, mfn, keep_readonly)

    # -- invariant checks -----------------------------------------------------------------
    def domains(self) -> list[int]:
        """The domains that have memory."""
        return sorted(self._segs)

    def populated(self, domid: int) -> list[int]:
        return sorted(self._seg(domid).p2m)

    def pinned_tables(self) -> dict[int, int]:
        """mfn -> owner of every pinned page table (any level)."""
        return self.pagetables.pinned()

    def pinned_ptes(self, mfn: int) -> dict[int, int]:
        """index -> value of the present entries of validated table `mfn`."""
        entries = self.pagetables.info(mfn).entries
        return dict(entries) if entries is not None else {}

    def writable_count(self, mfn: int) -> int:
        """The frame's WRITABLE type count: the writable mappings of it."""
        info = self.pagetables.info(mfn)
        return info.count if info.type == PageType.WRITABLE else 0


def _check_batch(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise MemoryError_(errno.E2BIG, f"{n} {what} in one call; at most {limit}")


def _check_extents(n: int) -> None:
    _check_batch(n, MAX_EXTENTS, "extents")


def _runs(gfns: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive gfns, in ascending order."""
    first = count = 0
    for gfn in sorted(gfns):
        if count and gfn == first + count:
            count += 1
            continue
        if count:
            yield first, count
        first, count = gfn, 1
    if count:
        yield first, count
