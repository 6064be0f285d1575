"""xenlab.domain.pagemap: one page of a shared-memory file, mapped without
keeping a file descriptor, and already faulted in."""
from __future__ import annotations

import os
import resource

import pytest

from xenlab.domain.pagemap import PageMap, map_run
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


def _mappings_of(path: str) -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(path))


def test_a_run_of_pages_is_one_mapping_and_each_page_goes_on_its_own(shm_path, shm_fd):
    before = _mappings_of(shm_path)
    pages = map_run(shm_fd, abi.PAGE_SIZE, 3, writable=True)
    assert _mappings_of(shm_path) - before == 1
    assert [p.addr - pages[0].addr for p in pages] == [0, abi.PAGE_SIZE, 2 * abi.PAGE_SIZE]
    for i, page in enumerate(pages):
        page.view[:1] = bytes([i + 1])
    with open(shm_path, "rb") as f:
        data = f.read()
    assert [data[(i + 1) * abi.PAGE_SIZE] for i in range(3)] == [1, 2, 3]
    pages[1].close()                          # the middle page: the mapping splits in two
    assert _mappings_of(shm_path) - before == 2
    assert pages[2].view[0] == 3 and pages[0].view[0] == 1
    pages[0].close()
    pages[2].close()
    assert _mappings_of(shm_path) == before


def test_an_empty_run_or_a_bad_offset_is_refused(shm_fd):
    with pytest.raises(ValueError):
        map_run(shm_fd, 0, 0, writable=True)
    with pytest.raises(ValueError):
        map_run(shm_fd, 100, 2, writable=True)
