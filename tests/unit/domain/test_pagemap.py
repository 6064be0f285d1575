"""xenlab.domain.pagemap: one page of a shared-memory file, mapped without
keeping a file descriptor, and already faulted in."""
from __future__ import annotations

import os
import resource

import pytest

from xenlab.domain.pagemap import PageMap
from xenlab.xen import abi


@pytest.fixture
def shm_path():
    """A file in /dev/shm, as the hypervisor keeps domain memory."""
    path = f"/dev/shm/xenlab-test-pagemap-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(bytes(4 * abi.PAGE_SIZE))
    yield path
    os.unlink(path)


@pytest.fixture
def shm_fd(shm_path):
    fd = os.open(shm_path, os.O_RDWR)
    yield fd
    os.close(fd)


def test_the_mapping_is_the_files_page_and_outlives_the_descriptor(shm_path, shm_fd):
    page = PageMap(shm_fd, 2 * abi.PAGE_SIZE, writable=True)
    os.close(os.dup(shm_fd))
    page.view[:5] = b"hello"
    with open(shm_path, "rb") as f:
        f.seek(2 * abi.PAGE_SIZE)
        assert f.read(5) == b"hello"
    page.close()
    page.close()                                       # twice is harmless


def test_a_read_only_mapping_refuses_writes(shm_fd):
    page = PageMap(shm_fd, 0, writable=False)
    assert page.view.readonly
    with pytest.raises(TypeError):
        page.view[0] = 1
    page.close()


def test_the_page_is_faulted_in_at_map_time(shm_fd):
    """MAP_POPULATE: the first frame through a mapped page does not pay a page fault."""
    pages = [PageMap(shm_fd, i * abi.PAGE_SIZE, writable=True) for i in range(4)]
    views = [p.view for p in pages]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for view in views:
        view[100] = 7
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for page in pages:
        page.close()
    assert after - before < len(views)


def test_a_bad_offset_is_refused(shm_fd):
    with pytest.raises(ValueError):
        PageMap(shm_fd, 100, writable=True)
