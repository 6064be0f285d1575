"""Grant entries in the granter's own frames, shared between processes:
the compare-and-swap is atomic across processes, a map races a granter
rewriting the entry and gets what Xen gives, a hostile granter cannot make
the hypervisor spin."""
from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.grants import GrantTables
from xenlab.hypervisor.memory import MachineMemory
from xenlab.xen import abi
from xenlab.xen.atomic import AtomicCells
from xenlab.xen.errors import GrantError, XenError
from xenlab.xen.grant_table import GrantFrames

from guest_grants import GuestGrants

D2, D3 = Caller(2), Caller(3)
CTX = multiprocessing.get_context("fork")


@pytest.fixture
def gt():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    shm = Path(tempfile.mkdtemp(prefix="xl-gf-", dir=base))
    mem = MachineMemory(shm, "g-", total_pages=1000)
    grants = GrantTables(mem)
    for domid in range(1, 4):
        mem.add_domain(domid, 16, 8)
        grants.add_domain(domid)
    yield grants
    for domid in range(1, 4):
        for remove in (grants.remove_domain, mem.remove_domain):
            with contextlib.suppress(XenError):
                remove(domid)
    shutil.rmtree(shm, ignore_errors=True)


def _frame_map(gt, domid: int, gfn: int) -> tuple[str, int]:
    return gt.memory.segment_path(domid), gt.memory.frame_offset(domid, gfn)


def _open_frame(path: str, offset: int) -> tuple[mmap.mmap, memoryview]:
    fd = os.open(path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, offset + abi.PAGE_SIZE)
    finally:
        os.close(fd)
    return m, memoryview(m)[offset:offset + abi.PAGE_SIZE]


# -- the primitive ------------------------------------------------------------------------
def _count_up(path: str, offset: int, times: int, start) -> None:
    m, view = _open_frame(path, offset)
    cells = AtomicCells(view)
    start.wait()
    for _ in range(times):
        value = cells.load32(0)
        while (found := cells.cmpxchg32(0, value, value + 1)) != value:
            value = found
    cells.release()


def test_compare_and_swap_is_atomic_across_processes(gt):
    """Two processes add 1 to the same word of a domain's frame, each
    through its own mapping, with load + compare-and-swap: no increment is
    lost. (A plain read-modify-write loses thousands here.)"""
    path, offset = _frame_map(gt, 1, 5)
    times = 20_000
    start = CTX.Barrier(2)
    procs = [CTX.Process(target=_count_up, args=(path, offset, times, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert int.from_bytes(gt.memory.frame(1, 5)[:4], "little") == 2 * times


# -- a map racing the granter ---------------------------------------------------------------
def _granter(path: str, offset: int, ref: int, rounds: int, out) -> None:
    """d1's kernel in a process of its own: grant ``ref`` to d2 (gfn 5),
    end it, grant it to d3 (gfn 6), end it, over and over; an end that
    fails (the entry is pinned) is retried, never skipped."""
    m, view = _open_frame(path, offset)
    frames = GrantFrames([view])
    refused = 0
    for i in range(rounds):
        frames.grant(ref, 2 if i % 2 == 0 else 3, 5 if i % 2 == 0 else 6, readonly=False)
        while not frames.end_access(ref):
            refused += 1
    frames.release()
    out.put(refused)


def test_a_map_racing_a_granter_that_rewrites_the_entry(gt):
    """While d1's kernel, in another process, regrants the same ref back
    and forth between d2 and d3, d2 maps it again and again. Each map
    either fails with GNTST_general_error or gets exactly the frame granted
    to d2, and then holds it: the granter's end fails until the unmap, so
    the entry still names d2 and that frame while mapped."""
    guest = GuestGrants(gt, 1, [15])
    ref = guest.grant(3, 0)                       # a ref of the table
    assert guest.end(ref)
    path, offset = _frame_map(gt, 1, 15)
    out = CTX.Queue()
    granter = CTX.Process(target=_granter, args=(path, offset, ref, 20_000, out))
    granter.start()
    mapped = refused = 0
    mfn5 = gt.memory.gfn_to_mfn(1, 5)
    try:
        while granter.is_alive() and mapped + refused < 20_000:
            try:
                m = gt.map(D2, 1, ref, readonly=False)
            except GrantError as err:
                assert err.status == abi.GNTST_general_error
                refused += 1
                continue
            mapped += 1
            try:
                entry = gt.entry(1, ref)
                assert m.mfn == mfn5 and (entry.domid, entry.frame) == (2, 5)
                assert entry.flags & (abi.GTF_reading | abi.GTF_writing) == \
                    abi.GTF_reading | abi.GTF_writing
            finally:
                gt.unmap(D2, m.handle)
    finally:
        granter.join(120)
        if granter.is_alive():
            granter.kill()
    assert granter.exitcode == 0
    assert out.get(timeout=10) >= 0
    assert mapped > 0 and refused > 0             # both outcomes happened
    assert gt.pinned(1) == {} and gt.entry(1, ref).flags & abi.GTF_reading == 0
    guest.close()


def test_a_granter_that_keeps_rewriting_the_entry_fails_the_pin_after_a_few_tries(gt):
    """Xen's _set_status_v1 retries its compare-and-swap 4 times, then
    gives GNTST_general_error ("Shared grant entry is unstable"): a
    granter that rewrites the entry before every attempt cannot keep the
    hypervisor spinning, and gets no pin."""
    guest = GuestGrants(gt, 1, [15])
    ref = guest.grant(2, 5)
    cells = gt._tables[1].shared._cells[0]
    attempts = []
    real = cells.cmpxchg32

    def hostile(offset, expected, desired):
        attempts.append(expected)
        guest.frames.grant(ref, 2, 5, readonly=len(attempts) % 2 == 1)   # flip GTF_readonly
        return real(offset, expected, desired)

    cells.cmpxchg32 = hostile
    with pytest.raises(GrantError) as err:
        gt.map(D2, 1, ref, readonly=True)
    assert err.value.status == abi.GNTST_general_error
    assert "keeps changing" in err.value.message
    assert len(attempts) == abi.GNTTABOP_SETUP_RETRIES + 1
    assert gt.pinned(1) == {} and gt.maptrack_count(2) == 0
    assert not gt.entry(1, ref).flags & (abi.GTF_reading | abi.GTF_writing)
    del cells.cmpxchg32
    assert gt.map(D2, 1, ref, readonly=True).ref == ref
    guest.close()


def test_a_granter_that_changes_the_entry_once_is_retried_and_checked_again(gt):
    """The compare-and-swap that fails hands back the entry as it now is,
    and the hypervisor checks that one: regranted to d3, the map of d2 is
    refused; made read-only, a writable map is refused."""
    guest = GuestGrants(gt, 1, [15])
    ref = guest.grant(2, 5)
    cells = gt._tables[1].shared._cells[0]
    real = cells.cmpxchg32
    for change, readonly in ((lambda: guest.frames.grant(ref, 3, 5, False), True),
                             (lambda: guest.frames.grant(ref, 2, 5, True), False)):
        guest.frames.grant(ref, 2, 5, False)
        once = [change]

        def racing(offset, expected, desired):
            if once:
                once.pop()()
            return real(offset, expected, desired)

        cells.cmpxchg32 = racing
        with pytest.raises(GrantError) as err:
            gt.map(D2, 1, ref, readonly=readonly)
        assert err.value.status == abi.GNTST_general_error
        assert gt.pinned(1) == {}
    del cells.cmpxchg32
    guest.close()


# -- Xen's result codes -----------------------------------------------------------------------
def test_xen_result_codes(gt):
    guest = GuestGrants(gt, 1, [15])
    to_d3 = guest.grant(3, 4)
    ro = guest.grant(2, 5, readonly=True)
    # another domain's ref, and a read-only ref mapped writable: general_error
    assert _status(lambda: gt.map(D2, 1, to_d3, True)) == abi.GNTST_general_error
    assert _status(lambda: gt.map(D2, 1, ro, False)) == abi.GNTST_general_error
    # a ref outside the table: bad_gntref
    assert _status(lambda: gt.map(D2, 1, 512, True)) == abi.GNTST_bad_gntref
    # a writable mapping sets GTF_reading | GTF_writing
    rw = guest.grant(2, 6)
    gt.map(D2, 1, rw, readonly=False)
    assert gt.entry(1, rw).flags == abi.GTF_permit_access | abi.GTF_reading | abi.GTF_writing
    assert abi.GTF_transfer_committed == 4 and abi.GNTST_no_space == -13
    assert abi.GNTST_NAMES[abi.GNTST_no_space] == "out of space"
    guest.close()


def _status(call) -> int:
    with pytest.raises(GrantError) as err:
        call()
    return err.value.status
