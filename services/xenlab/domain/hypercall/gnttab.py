"""GNTTABOP_* as a domain's kernel makes them (Linux's drivers/xen/grant-table.c
over HYPERVISOR_grant_table_op), typed.

* ``setup`` gives the table its first grant frame, a frame of our own
  memory (GNTTABOP_setup_table); the table grows a frame at a time when
  the refs run out (gnttab_expand), up to GNTTABOP_query_size's maximum.
* ``grant_access`` / ``end_access``: entries of our own grant table,
  written in our own frames, without a hypercall (xen/grant_table.py).
  Ending access to a page another domain still maps or copies fails, as
  gnttab_end_foreign_access_ref does while GTF_reading/GTF_writing is set:
  ``end_access`` returns those refs, still granted, and the caller keeps
  their pages until a later try ends them.
* ``map`` gives a ``Page``: the handle the hypervisor tracks the mapping by
  and, for a privileged mapper, the page itself mapped into this process
  (``PageMap``: no descriptor kept). An unprivileged mapper gets the handle
  only: it is never handed another domain's memory, and reaches the page
  through copies on the ref. ``map_batch`` maps many at once, one result
  per op (a Page or the GrantError that refused it); ``unmap`` and
  ``unmap_batch`` give them back.
* ``copy`` starts one GNTTABOP_copy batch and returns a future of its
  GNTST_* statuses at once, so that a driver may keep several batches in
  flight. A batch goes out as COPY datagrams of at most MAX_COPY_BATCH ops
  over the event-channel doorbell when there is one (xenlab.domain.evtchn);
  the hypervisor runs the same validated copy as for the hypercall, so the
  statuses are the same either way. Without a doorbell, or if it is lost
  before answering, the batch goes through the hypercall; a hypercall that
  fails outright fails every op in it with GNTST_general_error, as a failed
  GNTTABOP_copy would.

Every failure is a XenError (a GrantError where a GNTST_* status says why).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any, Callable, Sequence

from xenlab.domain.pagemap import PageMap, map_run
from xenlab.proto import common_pb2, grants_pb2
from xenlab.rpc import call
from xenlab.xen import abi
from xenlab.xen.doorbell import MAX_COPY_BATCH, GnttabCopy
from xenlab.xen.errors import GrantError, XenError
from xenlab.xen.grant_table import PER_FRAME, GrantFrames, GrantRefs

log = logging.getLogger(__name__)

GrantEntry = tuple[int, int, bool]      # (peer domid, our gfn, readonly)
MapOp = tuple[int, int, bool]           # (granting domid, ref, readonly)


class Page:
    """A grant we mapped. ``view`` is the page (read-only if mapped so), or
    None when the hypervisor gave us no way into it."""

    __slots__ = ("handle", "domid", "ref", "readonly", "view", "_map")

    def __init__(self, handle: int, domid: int, ref: int, readonly: bool,
                 mapping: PageMap | None = None):
        self.handle = handle
        self.domid = domid
        self.ref = ref
        self.readonly = readonly
        self._map = mapping
        self.view = mapping.view if mapping is not None else None

    @property
    def address(self) -> int | None:
        """Where the page is mapped in this process (None: not mapped)."""
        return self._map.addr if self._map is not None else None

    def close(self) -> None:
        """Let go of our mapping of the page (no hypercall: the grant stays
        mapped until ``unmap``). BufferError while a view taken of ``view``
        is alive: the page then stays mapped here."""
        if self._map is not None:
            self._map.close()
            self._map = None
            self.view = None


class GrantTable:
    def __init__(self, stub, domid: int, doorbell=None):
        """``stub``: the GrantTable service, as this domain; ``doorbell``:
        the domain's GuestEventChannels, whose doorbell carries the COPYs
        (``attach_doorbell`` once it is up)."""
        self._stub = stub
        self.domid = domid
        self._doorbell = doorbell
        self._tasks: set[asyncio.Task] = set()
        self._memory = None
        self._frames = GrantFrames()
        self._gfns: list[int] = []          # our grant frames
        self._refs = GrantRefs()
        self.max_frames = 0
        self._growing = asyncio.Lock()
        # A direct-paging kernel's GrantArea (xenlab.domain.paging): each
        # mapping's PTE in a slot of it; handle -> slot.
        self._area = None
        self._slots: dict[int, int] = {}

    def attach_doorbell(self, doorbell) -> None:
        self._doorbell = doorbell

    def attach_grant_area(self, area) -> None:
        """Map grants with GNTMAP_contains_pte from now on: the hypervisor
        writes each mapping's PTE into a slot of ``area`` and clears it at
        unmap, and a Page's view is the frame as the MMU reaches it."""
        self._area = area

    # -- our own grant table ---------------------------------------------------------
    async def setup(self, memory) -> None:
        """Set the table up in ``memory`` (our GuestMemory: alloc_frames,
        frame, free_frames, is_populated) with its first frame."""
        reply = await call(self._stub.QuerySize(common_pb2.Empty()))
        self._memory = memory
        self.max_frames = reply.max_nr_frames
        await self._grow(1)

    @property
    def nr_frames(self) -> int:
        return len(self._gfns)

    async def _grow(self, frames: int) -> None:
        """gnttab_expand: ``frames`` more frames, or GrantError(no_space)."""
        if self._memory is None:
            raise XenError(errno.ENODEV, f"d{self.domid}'s grant table is not set up")
        if len(self._gfns) + frames > self.max_frames:
            raise GrantError(abi.GNTST_no_space, f"d{self.domid}'s grant table would need "
                                                 f"{len(self._gfns) + frames} frames; "
                                                 f"at most {self.max_frames}")
        try:
            new = self._memory.alloc_frames(frames)
        except MemoryError as err:
            raise GrantError(abi.GNTST_no_space, f"grant frames: {err}") from None
        try:
            await call(self._stub.SetupTable(grants_pb2.SetupTableRequest(
                gfns=self._gfns + new)))
        except XenError:
            self._memory.free_frames(new)
            raise
        for gfn in new:
            self._frames.add_frame(self._memory.frame(gfn))
        self._gfns += new
        self._refs.grow(self._frames.nr_entries)

    async def grant_access(self, entries: Sequence[GrantEntry]) -> list[int]:
        """Grant each (domid, gfn, readonly) of our own frames; the refs,
        in order. No hypercall unless the table must grow."""
        for domid, gfn, _ in entries:
            if self._memory is not None and not self._memory.is_populated(gfn):
                raise GrantError(abi.GNTST_bad_page, f"gfn {gfn:#x} is not ours to grant")
        async with self._growing:
            short = len(entries) - self._refs.free
            if short > 0:
                await self._grow(-(-short // PER_FRAME))
            refs = self._refs.alloc(len(entries))
        try:
            for ref, (domid, gfn, readonly) in zip(refs, entries):
                self._frames.grant(ref, domid, gfn, readonly)
        except GrantError:
            for ref in refs:
                self._frames.end_access(ref)
            self._refs.release(refs)
            raise
        return refs

    def end_access(self, refs: Sequence[int]) -> list[int]:
        """End these grants of ours; the refs another domain still has
        mapped or is copying, left granted (the caller keeps their pages
        and tries again later, as Linux's deferred list does). A ref we
        have not granted is GNTST_bad_gntref, before any is ended."""
        unknown = [ref for ref in refs if ref not in self._refs.in_use]
        if unknown or len(set(refs)) != len(refs):
            raise GrantError(abi.GNTST_bad_gntref,
                             f"d{self.domid} has not granted refs {unknown or 'twice'}")
        busy = []
        for ref in refs:
            if self._frames.end_access(ref):
                self._refs.release([ref])
            else:
                busy.append(ref)
        return busy

    def entry(self, ref: int) -> tuple[int, int, int]:
        """(flags, domid, frame) of one of our entries, as it is now."""
        return self._frames.read(ref)

    # -- mapping another domain's grants ----------------------------------------------
    async def map(self, domid: int, ref: int, readonly: bool = False) -> Page:
        slots = await self._reserve(1)
        try:
            reply = await call(self._stub.Map(grants_pb2.MapGrantRequest(
                domid=domid, ref=ref, readonly=readonly, pte_addr=slots[0][1] if slots else 0)))
        except BaseException:
            self._release(slots)
            raise
        try:
            return self._reached(_page(reply, domid, ref, readonly), reply.mfn,
                                 slots[0][0] if slots else None)
        except (OSError, ValueError, XenError) as err:
            await self.unmap(reply.handle)
            raise GrantError(abi.GNTST_general_error, f"mapping ref {ref} of d{domid}: {err}") \
                from None

    async def map_batch(self, ops: Sequence[MapOp]) -> list[Page | GrantError]:
        """GNTTABOP_map_grant_ref of an array: one result per op, in order;
        an op without an answer counts as refused."""
        slots = await self._reserve(len(ops))
        try:
            reply = await call(self._stub.MapBatch(grants_pb2.MapGrantsRequest(ops=[
                grants_pb2.MapGrantRequest(domid=domid, ref=ref, readonly=readonly,
                                           pte_addr=slots[i][1] if slots else 0)
                for i, (domid, ref, readonly) in enumerate(ops)])))
        except BaseException:
            self._release(slots)
            raise
        out: list[Page | GrantError] = []
        orphans: list[int] = []         # mapped by the hypervisor, not by us
        results = list(reply.results)[:len(ops)]
        maps = _map_runs(ops, results)
        for i, ((domid, ref, readonly), result) in enumerate(zip(ops, results)):
            slot = slots[i][0] if slots else None
            if result.status != abi.GNTST_okay:
                self._release(slots[i:i + 1])
                out.append(GrantError(result.status, result.error))
                continue
            mapped = maps.get(i)
            try:
                if isinstance(mapped, Exception):
                    raise mapped
                page = Page(result.mapping.handle, domid, ref, readonly, mapped)
                out.append(self._reached(page, result.mapping.mfn, slot))
            except (OSError, ValueError, XenError) as err:
                orphans.append(result.mapping.handle)
                out.append(GrantError(abi.GNTST_general_error, f"mmap of ref {ref}: {err}"))
        self._release(slots[len(out):])
        out += [GrantError(abi.GNTST_general_error, "no answer") for _ in ops[len(out):]]
        if orphans:
            await self.unmap_batch(orphans)
        return out

    async def _reserve(self, count: int) -> list[tuple[int, int]]:
        return await self._area.reserve(count) if self._area is not None else []

    def _release(self, slots: Sequence[tuple[int, int]]) -> None:
        if slots:
            self._area.release(slot for slot, _pte in slots)

    def _reached(self, page: Page, mfn: int, slot: int | None) -> Page:
        """A mapping made: with a slot, its PTE is in force, and the page
        is reached through the MMU (when we were given a way into it)."""
        if slot is None:
            return page
        self._slots[page.handle] = slot
        if page.view is not None:
            try:
                page.view = self._area.installed(slot, mfn, page.view, not page.readonly)
            except XenError:
                page.close()
                raise
        return page

    def _unreached(self, handle: int) -> int | None:
        """Before an unmap: the MMU lets go of the page (its TLB entry,
        the frame). The slot, whose PTE goes with the unmap."""
        slot = self._slots.pop(handle, None)
        if slot is not None:
            self._area.forget(slot)
        return slot

    async def unmap(self, page: Page | int) -> None:
        """GNTTABOP_unmap_grant_ref (a Page's own mapping goes first)."""
        handle = page.handle if isinstance(page, Page) else page
        slot = self._unreached(handle)
        if isinstance(page, Page):
            try:
                page.close()
            except BufferError:
                log.warning("d%d: a view of ref %d of d%d is still alive: its page stays mapped "
                            "in this process", self.domid, page.ref, page.domid)
        try:
            await call(self._stub.Unmap(grants_pb2.UnmapGrantRequest(handle=handle)))
        finally:
            if slot is not None:
                self._area.release([slot])

    async def unmap_batch(self, handles: Sequence[int]) -> list[int]:
        """Unmap by handle; one GNTST_* per handle."""
        slots = [slot for slot in map(self._unreached, handles) if slot is not None]
        try:
            reply = await call(self._stub.UnmapBatch(grants_pb2.UnmapGrantsRequest(
                handles=list(handles))))
        finally:
            if slots:
                self._area.release(slots)
        return list(reply.status)

    # -- GNTTABOP_copy ------------------------------------------------------------------
    def copy(self, ops: Sequence[GnttabCopy]) -> asyncio.Future:
        """Start copying ``ops``; the future is one GNTST_* per op."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not ops:
            answer.set_result([])
        elif len(ops) > MAX_COPY_BATCH:
            self._spawn(self._chunked(ops), answer)
        elif self._doorbell is None or not self._doorbell.copy(
                ops, answer, lambda: self._spawn(self._hypercall_copy(ops), answer)):
            self._spawn(self._hypercall_copy(ops), answer)
        return answer

    async def copy_hypercall(self, ops: Sequence[GnttabCopy]) -> list[int]:
        """The copy as one hypercall, whatever its size (no doorbell): the
        statuses, or the XenError the whole call was refused with."""
        reply = await call(self._stub.Copy(grants_pb2.GrantCopyRequest(
            ops=[_pb_op(op) for op in ops])))
        return list(reply.status)

    async def _chunked(self, ops: Sequence[GnttabCopy]) -> list[int]:
        parts = [self.copy(ops[i:i + MAX_COPY_BATCH]) for i in range(0, len(ops), MAX_COPY_BATCH)]
        return [status for part in parts for status in await part]

    async def _hypercall_copy(self, ops: Sequence[GnttabCopy]) -> list[int]:
        try:
            return await self.copy_hypercall(ops)
        except XenError as err:
            log.warning("d%d: grant copy failed: %s", self.domid, err.message)
            return [abi.GNTST_general_error] * len(ops)

    def _spawn(self, coro, answer: asyncio.Future) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        pass_on(task, answer)

    async def close(self) -> None:
        """Stop the copies still going through the hypercall."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._frames.release()


def _page(m, domid: int, ref: int, readonly: bool) -> Page:
    """The Page of one GrantMapping."""
    if not m.shm_path:
        return Page(m.handle, domid, ref, readonly)
    fd = os.open(m.shm_path, os.O_RDWR)
    try:
        return Page(m.handle, domid, ref, readonly,
                    PageMap(fd, m.offset, writable=not readonly, length=m.length))
    finally:
        os.close(fd)


def _map_runs(ops: Sequence[MapOp], results) -> dict[int, PageMap | Exception]:
    """The PageMap of each granted page a batch's results let us reach (by
    their index), or why it could not be mapped. Consecutive pages of one
    memory file, mapped alike, are mapped with one mmap(2) (pagemap.map_run):
    a frontend's buffer pages are granted in order, so a backend holds a few
    mappings for them, not one each."""
    out: dict[int, PageMap | Exception] = {}
    fds: dict[str, int] = {}
    run: list[int] = []

    def fd_of(path: str) -> int:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDWR)
        return fds[path]

    def flush() -> None:
        if not run:
            return
        first = results[run[0]].mapping
        try:
            pages = map_run(fd_of(first.shm_path), first.offset, len(run),
                            writable=not ops[run[0]][2])
        except (OSError, ValueError) as err:
            out.update((i, err) for i in run)
        else:
            out.update(zip(run, pages))
        run.clear()

    try:
        for i, ((_domid, _ref, readonly), result) in enumerate(zip(ops, results)):
            m = result.mapping
            if result.status != abi.GNTST_okay or not m.shm_path:
                flush()
                continue
            if m.length != abi.PAGE_SIZE:
                flush()
                try:
                    out[i] = PageMap(fd_of(m.shm_path), m.offset, writable=not readonly,
                                     length=m.length)
                except (OSError, ValueError) as err:
                    out[i] = err
                continue
            if run:
                last = results[run[-1]].mapping
                if (m.shm_path != last.shm_path or m.offset != last.offset + abi.PAGE_SIZE
                        or readonly != ops[run[-1]][2]):
                    flush()
            run.append(i)
        flush()
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _pb_op(op: GnttabCopy) -> grants_pb2.GrantCopyOp:
    sptr, sdom, soff, dptr, ddom, doff, length, flags = op
    src_gref = bool(flags & abi.GNTCOPY_source_gref)
    dst_gref = bool(flags & abi.GNTCOPY_dest_gref)
    return grants_pb2.GrantCopyOp(
        source=grants_pb2.CopyPtr(domid=sdom, ref=sptr if src_gref else 0,
                                  gfn=0 if src_gref else sptr, use_gref=src_gref, offset=soff),
        dest=grants_pb2.CopyPtr(domid=ddom, ref=dptr if dst_gref else 0,
                                gfn=0 if dst_gref else dptr, use_gref=dst_gref, offset=doff),
        len=length)


def pass_on(source: asyncio.Future, answer: asyncio.Future,
            result: Callable[[Any], Any] = lambda r: r) -> None:
    """When ``source`` is done, ``answer`` is done the same way (its result
    through ``result``), unless something settled ``answer`` first."""
    def done(f: asyncio.Future) -> None:
        if answer.done():
            return
        if f.cancelled():
            answer.cancel()
        elif f.exception() is not None:
            answer.set_exception(f.exception())
        else:
            answer.set_result(result(f.result()))
    source.add_done_callback(done)
