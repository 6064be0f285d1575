"""PagingPool: zeroed frames, exhaustion as ENOMEM, no double free."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.paging_pool import PagingPool, PoolExhausted
from xenlab.xen.errors import MemoryError_

from paging_frames import Frames, pool_of


def test_alloc_hands_out_each_frame_once_then_enomem():
    pool = pool_of(Frames(), 0x500, 3)
    got = {pool.alloc() for _ in range(3)}
    assert got == {0x500, 0x501, 0x502}
    assert (pool.used, pool.available, pool.size) == (3, 0, 3)
    with pytest.raises(PoolExhausted) as exc:
        pool.alloc()
    assert exc.value.errno == errno.ENOMEM


def test_a_frame_comes_back_zeroed():
    frames = Frames()
    pool = pool_of(frames, 0x500, 1)
    mfn = pool.alloc()
    frames[mfn][:4] = b"\xff\xff\xff\xff"
    frames[mfn][4095] = 7
    pool.free(mfn)
    assert pool.alloc() == mfn
    assert bytes(frames[mfn]) == bytes(4096)


def test_free_refuses_a_foreign_or_free_frame():
    pool = pool_of(Frames(), 0x500, 2)
    mfn = pool.alloc()
    with pytest.raises(MemoryError_) as exc:
        pool.free(0x999)
    assert exc.value.errno == errno.EINVAL
    pool.free(mfn)
    with pytest.raises(MemoryError_, match="already free"):
        pool.free(mfn)
    assert (pool.used, pool.available) == (0, 2)


def test_duplicate_frames_are_refused():
    frames = Frames()
    frames.add([1])
    with pytest.raises(MemoryError_):
        PagingPool([1, 1], frames.view)
