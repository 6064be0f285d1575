"""The grant_entry_v1 array (xen/grant_table.py) on plain buffers: the bytes
each side's operation leaves in the entry, field by field; the GNTST_ status
and words of every refusal; each bound on both sides; the compare-and-swap
loops when the other side changes the entry under them; the granter's free
list. The same code over a domain's real frames, shared between processes,
is tested by tests/unit/hypervisor/test_grant_frames.py."""
from __future__ import annotations

import struct

import pytest

from xenlab.xen import abi
from xenlab.xen.errors import GrantError
from xenlab.xen.grant_table import GrantFrames, GrantRefs

PAGE = abi.PAGE_SIZE
PER_FRAME = abi.GRANT_ENTRIES_PER_FRAME
PERMIT, RO = abi.GTF_permit_access, abi.GTF_readonly
READING, WRITING = abi.GTF_reading, abi.GTF_writing


def _frames(n: int = 1) -> tuple[GrantFrames, list[bytearray]]:
    bufs = [bytearray(PAGE) for _ in range(n)]
    return GrantFrames(bufs), bufs


def _raw(bufs: list[bytearray], ref: int) -> tuple[int, int, int]:
    """The entry as a C reader of the page sees it: u16 flags, u16 domid, u32 frame."""
    frame, index = divmod(ref, PER_FRAME)
    return struct.unpack_from("<HHI", bufs[frame], index * 8)


def _put(bufs: list[bytearray], ref: int, flags: int, domid: int, frame: int) -> None:
    frame_no, index = divmod(ref, PER_FRAME)
    struct.pack_into("<HHI", bufs[frame_no], index * 8, flags, domid, frame)


def _refused(call) -> GrantError:
    with pytest.raises(GrantError) as err:
        call()
    return err.value


# -- the frames ------------------------------------------------------------------------------
@pytest.mark.parametrize("buf", [bytearray(PAGE - 1), bytearray(PAGE + 1), bytes(PAGE),
                                 memoryview(bytearray(PAGE)).toreadonly()],
                         ids=["short", "long", "read-only", "read-only view"])
def test_a_frame_must_be_one_writable_page(buf):
    frames = GrantFrames()
    with pytest.raises(ValueError, match="^a grant frame is one writable page$"):
        frames.add_frame(buf)
    assert frames.nr_frames == 0 and frames.nr_entries == 0


def test_entries_are_512_a_frame_and_numbered_across_frames():
    frames, bufs = _frames()
    assert (frames.nr_frames, frames.nr_entries) == (1, 512)
    bufs.append(bytearray(PAGE))
    frames.add_frame(bufs[1])
    assert (frames.nr_frames, frames.nr_entries) == (2, 1024)
    # ref 512 is the second frame's first entry, ref 513 its second
    frames.grant(512, 3, 0x1234, readonly=False)
    frames.grant(513, 5, 0x5678, readonly=True)
    assert bufs[0] == bytes(PAGE)
    assert _raw(bufs, 512) == (PERMIT, 3, 0x1234) and bufs[1][:8] == bytes([1, 0, 3, 0,
                                                                              0x34, 0x12, 0, 0])
    assert _raw(bufs, 513) == (PERMIT | RO, 5, 0x5678)
    assert frames.read(512) == (PERMIT, 3, 0x1234) and frames.read(513) == (PERMIT | RO, 5, 0x5678)
    assert frames.frame(512) == 0x1234 and frames.frame(513) == 0x5678


@pytest.mark.parametrize("ref", [-1, 1024, 1025])
def test_a_ref_outside_the_table_is_bad_gntref_for_every_operation(ref):
    frames, bufs = _frames(2)
    for call in (lambda: frames.read(ref), lambda: frames.grant(ref, 1, 1, False),
                 lambda: frames.end_access(ref), lambda: frames.pin(ref, 1, True, True),
                 lambda: frames.unpin(ref, True, True)):
        err = _refused(call)
        assert err.status == abi.GNTST_bad_gntref
        assert err.message == f"grant ref {ref} is past a table of 1024 entries"
    assert bufs == [bytes(PAGE), bytes(PAGE)]


def test_the_first_and_last_refs_of_the_table_are_in_it():
    frames, bufs = _frames(2)
    for ref in (0, 1023):
        frames.grant(ref, 7, ref + 1, readonly=False)
        frames.pin(ref, 7, readonly=False, first=True)
        assert frames.read(ref) == (PERMIT | READING | WRITING, 7, ref + 1)
        frames.unpin(ref, writing=True, reading=True)
        assert frames.end_access(ref)
    assert bufs[1][-8:] == bytes([0, 0, 7, 0]) + (1024).to_bytes(4, "little")


def test_release_lets_the_buffers_go():
    """A bytearray cannot be resized while anything holds a view of it: after
    release nothing does (so an mmap under the frames may be closed)."""
    frames, bufs = _frames(2)
    with pytest.raises(BufferError):
        bufs[0].append(0)
    frames.release()
    assert (frames.nr_frames, frames.nr_entries) == (0, 0)
    for buf in bufs:
        buf.append(0)                 # no export left
    assert _refused(lambda: frames.read(0)).status == abi.GNTST_bad_gntref


def test_in_use_lists_granted_or_pinned_entries_only():
    frames, bufs = _frames(2)
    _put(bufs, 0, PERMIT, 1, 10)
    _put(bufs, 1, RO, 1, 11)                        # no type, not pinned: free
    _put(bufs, 2, abi.GTF_accept_transfer, 2, 12)
    _put(bufs, 3, READING, 2, 13)                   # ended under a mapping: still pinned
    _put(bufs, 4, WRITING, 2, 14)
    _put(bufs, 5, 0, 9, 15)                         # ended: free, whatever domid and frame
    _put(bufs, 600, PERMIT | RO, 4, 16)
    _put(bufs, 1023, abi.GTF_type_mask, 5, 17)
    assert list(frames.in_use()) == [(0, PERMIT, 1, 10), (2, abi.GTF_accept_transfer, 2, 12),
                                     (3, READING, 2, 13), (4, WRITING, 2, 14),
                                     (600, PERMIT | RO, 4, 16),
                                     (1023, abi.GTF_type_mask, 5, 17)]
    frames.clear()
    assert list(frames.in_use()) == [] and bufs == [bytes(PAGE), bytes(PAGE)]


def test_read_gives_the_fields_as_they_are():
    frames, bufs = _frames()
    _put(bufs, 9, 0xFFFF, 0xFFFF, 0xFFFFFFFF)
    assert frames.read(9) == (0xFFFF, 0xFFFF, 0xFFFFFFFF)
    assert frames.read(8) == (0, 0, 0) and frames.read(10) == (0, 0, 0)


# -- the granter -----------------------------------------------------------------------------
def test_grant_writes_frame_domid_and_flags_and_nothing_else():
    frames, bufs = _frames()
    frames.grant(8, 1, 0xABCDEF, readonly=False)
    frames.grant(9, 0xFFFF, 0xFFFFFFFF, readonly=True)
    assert _raw(bufs, 8) == (PERMIT, 1, 0xABCDEF)
    assert _raw(bufs, 9) == (PERMIT | RO, 0xFFFF, 0xFFFFFFFF)
    assert bufs[0][:64] == bytes(64) and bufs[0][80:] == bytes(PAGE - 80)
    # a regrant replaces every field, flags included
    frames.grant(9, 0, 0, readonly=False)
    assert _raw(bufs, 9) == (PERMIT, 0, 0)


@pytest.mark.parametrize("domid, frame", [(-1, 0), (0x10000, 0), (0, -1), (0, 1 << 32)])
def test_grant_refuses_a_domid_or_frame_that_does_not_fit(domid, frame):
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT, 2, 5)
    err = _refused(lambda: frames.grant(8, domid, frame, readonly=False))
    assert err.status == abi.GNTST_general_error
    assert err.message == f"d{domid} / frame {frame:#x} does not fit grant_entry_v1"
    assert _raw(bufs, 8) == (PERMIT, 2, 5)


def test_end_access_clears_the_flags_of_an_entry_nobody_has_pinned():
    frames, bufs = _frames()
    for flags in (PERMIT, PERMIT | RO, 0):
        _put(bufs, 8, flags, 2, 5)
        assert frames.end_access(8) is True
        # Linux leaves domid and frame: only flags say whether it is granted
        assert _raw(bufs, 8) == (0, 2, 5)


@pytest.mark.parametrize("busy", [READING, WRITING, READING | WRITING])
def test_end_access_fails_while_the_entry_is_pinned_and_leaves_it(busy):
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT | busy, 2, 5)
    assert frames.end_access(8) is False
    assert _raw(bufs, 8) == (PERMIT | busy, 2, 5)


def _race(frames: GrantFrames, bufs, bits: int, changes: list):
    """Make the hypervisor's side change the entry of ref 8 just before each
    of the next compare-and-swaps of ``bits`` width (one change each)."""
    cells = frames._cells[0]
    real = getattr(cells, f"cmpxchg{bits}")
    seen = []

    def racing(offset, expected, desired):
        seen.append(expected)
        if changes:
            flags, domid, frame = changes.pop(0)
            _put(bufs, 8, flags, domid, frame)
        return real(offset, expected, desired)

    setattr(cells, f"cmpxchg{bits}", racing)
    return seen


def test_end_access_that_loses_the_race_to_a_map_fails():
    """The hypervisor pins the entry between the granter's read of flags
    and its compare-and-swap: the swap fails, the granter sees the pin in
    what it found, and gives up with the entry unchanged."""
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT, 2, 5)
    seen = _race(frames, bufs, 16, [(PERMIT | READING, 2, 5)])
    assert frames.end_access(8) is False
    assert seen == [PERMIT]
    assert _raw(bufs, 8) == (PERMIT | READING, 2, 5)


def test_end_access_retries_with_the_flags_it_found():
    """The flags changed under the swap, but not to a pin (the last unmap
    went): the granter retries with what it found and ends the access."""
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT | READING, 2, 5)
    assert frames.end_access(8) is False
    _put(bufs, 8, PERMIT, 2, 5)
    seen = _race(frames, bufs, 16, [(PERMIT | RO, 2, 5)])
    assert frames.end_access(8) is True
    assert seen == [PERMIT, PERMIT | RO]
    assert _raw(bufs, 8) == (0, 2, 5)


# -- the hypervisor --------------------------------------------------------------------------
def test_pin_sets_reading_and_writing_and_keeps_the_rest():
    frames, bufs = _frames()
    frames.grant(8, 3, 0x77, readonly=False)
    frames.pin(8, 3, readonly=True, first=True)
    assert _raw(bufs, 8) == (PERMIT | READING, 3, 0x77)
    frames.pin(8, 3, readonly=False, first=False)
    assert _raw(bufs, 8) == (PERMIT | READING | WRITING, 3, 0x77)
    frames.grant(9, 0xFFFF, 0x88, readonly=True)
    frames.pin(9, 0xFFFF, readonly=True, first=True)
    assert _raw(bufs, 9) == (PERMIT | RO | READING, 0xFFFF, 0x88)
    frames.grant(10, 1, 0x99, readonly=False)
    frames.pin(10, 1, readonly=False, first=True)
    assert _raw(bufs, 10) == (PERMIT | READING | WRITING, 1, 0x99)


@pytest.mark.parametrize("flags, domid", [
    (0, 3),                                   # GTF_invalid
    (abi.GTF_accept_transfer, 3),
    (abi.GTF_type_mask, 3),
    (PERMIT, 2), (PERMIT, 1), (PERMIT, 0x8003),   # another grantee (low or high bits differ)
    (0, 2),
])
def test_a_first_pin_checks_type_and_grantee(flags, domid):
    frames, bufs = _frames()
    _put(bufs, 8, flags, domid, 5)
    for readonly in (True, False):
        err = _refused(lambda: frames.pin(8, 3, readonly, first=True))
        assert err.status == abi.GNTST_general_error
        assert err.message == "grant ref 8 is not granted to d3"
        assert _raw(bufs, 8) == (flags, domid, 5)


def test_a_later_pin_does_not_check_type_or_grantee_again():
    """Once pinned, the entry cannot be regranted (the granter's end fails),
    so Xen checks it only on the first pin; a later one keeps the grantee
    the entry names."""
    frames, bufs = _frames()
    _put(bufs, 8, READING, 5, 9)                  # ended under the first mapping
    frames.pin(8, 3, readonly=False, first=False)
    assert _raw(bufs, 8) == (READING | WRITING, 5, 9)


def test_a_writable_pin_of_a_read_only_grant_is_refused():
    frames, bufs = _frames()
    frames.grant(8, 3, 5, readonly=True)
    for first in (True, False):
        err = _refused(lambda: frames.pin(8, 3, readonly=False, first=first))
        assert err.status == abi.GNTST_general_error
        assert err.message == "grant ref 8 is read-only"
        assert _raw(bufs, 8) == (PERMIT | RO, 3, 5)


def test_a_pin_checks_the_entry_it_found_after_a_failed_swap():
    """The granter regranted the entry between the hypervisor's read and its
    compare-and-swap: the swap fails and hands back the new entry, which is
    checked as the first one was."""
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT, 3, 5)
    seen = _race(frames, bufs, 32, [(PERMIT, 4, 5)])
    err = _refused(lambda: frames.pin(8, 3, readonly=True, first=True))
    assert err.message == "grant ref 8 is not granted to d3"
    assert seen == [PERMIT | 3 << 16]
    assert _raw(bufs, 8) == (PERMIT, 4, 5)


def test_a_pin_retried_after_a_harmless_change_succeeds_on_what_it_found():
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT, 3, 5)
    seen = _race(frames, bufs, 32, [(PERMIT | RO, 3, 6)])   # regranted read-only, a new frame
    frames.pin(8, 3, readonly=True, first=True)
    assert seen == [PERMIT | 3 << 16, PERMIT | RO | 3 << 16]
    assert _raw(bufs, 8) == (PERMIT | RO | READING, 3, 6)
    assert frames.frame(8) == 6


def _flip(n: int) -> list:
    """n changes of the entry, each a different one (GTF_readonly toggled)."""
    return [(PERMIT | (0 if i % 2 == 0 else RO), 3, 5) for i in range(n)]


def test_a_pin_succeeds_when_the_entry_changes_as_many_times_as_it_retries():
    """Xen's _set_status_v1 tries the swap GNTTABOP_SETUP_RETRIES + 1 times:
    an entry that changes before each of the first 4 is pinned on the 5th."""
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT | RO, 3, 5)
    changes = _flip(abi.GNTTABOP_SETUP_RETRIES)
    seen = _race(frames, bufs, 32, changes)
    frames.pin(8, 3, readonly=True, first=True)
    assert len(seen) == abi.GNTTABOP_SETUP_RETRIES + 1 == 5
    assert _raw(bufs, 8)[0] & READING


def test_a_pin_fails_when_the_entry_changes_before_every_try():
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT | RO, 3, 5)
    changes = _flip(abi.GNTTABOP_SETUP_RETRIES + 1)
    seen = _race(frames, bufs, 32, changes)
    err = _refused(lambda: frames.pin(8, 3, readonly=True, first=True))
    assert err.status == abi.GNTST_general_error
    assert err.message == "grant ref 8 keeps changing under the hypervisor"
    assert len(seen) == 5 and not changes
    assert not _raw(bufs, 8)[0] & (READING | WRITING)


@pytest.mark.parametrize("writing, reading, left", [
    (True, True, PERMIT | RO),
    (True, False, PERMIT | RO | READING),
    (False, True, PERMIT | RO | WRITING),
    (False, False, PERMIT | RO | READING | WRITING),
])
def test_unpin_clears_only_the_bits_asked_for(writing, reading, left):
    frames, bufs = _frames()
    _put(bufs, 8, PERMIT | RO | READING | WRITING, 0xFFFF, 0xFFFFFFFF)
    _put(bufs, 9, PERMIT | RO | READING | WRITING, 0xFFFF, 0xFFFFFFFF)
    frames.unpin(8, writing=writing, reading=reading)
    assert _raw(bufs, 8) == (left, 0xFFFF, 0xFFFFFFFF)
    assert _raw(bufs, 9) == (PERMIT | RO | READING | WRITING, 0xFFFF, 0xFFFFFFFF)


# -- the granter's free refs ---------------------------------------------------------------
def test_refs_below_the_reserved_ones_are_never_handed_out():
    refs = GrantRefs(PER_FRAME)
    assert refs.limit == PER_FRAME and refs.free == PER_FRAME - abi.GNTTAB_NR_RESERVED_ENTRIES
    assert refs.alloc(3) == [8, 9, 10] and refs.in_use == {8, 9, 10}
    assert refs.free == PER_FRAME - 11


def test_an_empty_free_list_and_a_table_smaller_than_the_reserved_refs():
    for n in (0, 5, 8):
        refs = GrantRefs(n)
        assert (refs.free, refs.limit) == (0, 8)
        assert refs.alloc(0) == []
        err = _refused(lambda: refs.alloc(1))
        assert err.status == abi.GNTST_no_space
        assert err.message == "1 grant refs wanted, 0 free"
    assert GrantRefs().limit == 8 and GrantRefs(9).alloc(1) == [8]


def test_alloc_takes_every_free_ref_but_not_one_more():
    refs = GrantRefs(12)
    err = _refused(lambda: refs.alloc(5))
    assert (err.status, err.message) == (abi.GNTST_no_space, "5 grant refs wanted, 4 free")
    assert refs.free == 4 and refs.in_use == set()
    assert refs.alloc(4) == [8, 9, 10, 11] and refs.free == 0


def test_released_refs_come_back_lowest_first():
    refs = GrantRefs(16)
    taken = refs.alloc(6)
    refs.release([12, 9])
    assert refs.in_use == set(taken) - {9, 12} and refs.free == 4
    assert refs.alloc(3) == [9, 12, 14]


def test_grow_adds_only_the_new_refs():
    refs = GrantRefs(PER_FRAME)
    refs.alloc(2)
    refs.grow(PER_FRAME)                          # no change
    refs.grow(100)                                # smaller: no change, limit kept
    assert refs.limit == PER_FRAME and refs.free == PER_FRAME - 10
    refs.grow(2 * PER_FRAME)
    assert refs.limit == 2 * PER_FRAME and refs.free == 2 * PER_FRAME - 10
    assert refs.alloc(PER_FRAME - 10)[-1] == PER_FRAME - 1
    assert refs.alloc(1) == [PER_FRAME]
