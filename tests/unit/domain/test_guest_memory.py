"""GuestMemory: a frame the domain does not hold (given back by the balloon,
or never populated) is unusable in its process, as a page gone from a PV
guest's P2M is; it is usable again once the hypervisor populates it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from xenlab.domain.memory import GuestMemory
from xenlab.xen import abi

PAGE = abi.PAGE_SIZE
PAGES = 64


@pytest.fixture
def segment():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="xl-guest-", dir=base)
    os.ftruncate(fd, (1 + PAGES) * PAGE)
    os.close(fd)
    yield path
    Path(path).unlink(missing_ok=True)


def run_guest(path: str, body: str) -> subprocess.CompletedProcess:
    """``body`` in a process of its own, with ``mem``, a GuestMemory of the segment."""
    code = textwrap.dedent(f"""
        from xenlab.domain.memory import GuestMemory
        mem = GuestMemory({path!r}, {1 + PAGES}, {PAGE})
        mem.set_populated(range({PAGES}))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_ballooned_out_frame_faults_when_the_guest_touches_it(segment):
    done = run_guest(segment, """
        mem.forget_frames([40])
        print("given back", flush=True)
        mem.mm[(1 + 40) * 4096] = 1
        print("still usable", flush=True)
    """)
    assert "given back" in done.stdout and "still usable" not in done.stdout
    assert done.returncode == -signal.SIGSEGV, done.stderr


def test_a_frame_given_back_again_is_usable(segment):
    done = run_guest(segment, """
        mem.forget_frames([40, 41, 7])
        mem.add_frames([40, 41])
        mem.mm[(1 + 41) * 4096] = 1
        print("usable", flush=True)
        mem.mm[(1 + 7) * 4096] = 1
    """)
    assert "usable" in done.stdout and done.returncode == -signal.SIGSEGV


def test_frames_never_populated_fault_too(segment):
    done = run_guest(segment, """
        mem.set_populated(range(32))
        mem.mm[(1 + 31) * 4096] = 1
        print("populated ok", flush=True)
        mem.mm[(1 + 32) * 4096] = 1
    """)
    assert "populated ok" in done.stdout and done.returncode == -signal.SIGSEGV


def test_the_kernel_never_hands_out_a_frame_it_gave_back(segment):
    mem = GuestMemory(segment, 1 + PAGES, PAGE)
    try:
        mem.set_populated(range(PAGES))
        give = mem.balloon_candidates(8)
        assert give == list(range(PAGES - 1, PAGES - 9, -1))
        mem.forget_frames(give)
        with pytest.raises(IndexError, match="not populated"):
            mem.frame(give[0])
        assert not set(mem.alloc_frames(PAGES - 16 - 8)) & set(give)
        with pytest.raises(MemoryError):
            mem.alloc_frames(1)
        mem.add_frames(give[:2])
        mem.frame(give[0])[:4] = b"back"
        assert mem.alloc_frames(2) == sorted(give[:2])
    finally:
        mem.close()
