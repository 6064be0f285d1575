"""GrantCache: netback's persistent grants, without sockets or mmaps."""
from __future__ import annotations

import pytest

from xenlab.drivers.netback.grant_cache import GrantCache
from xenlab.drivers.netback.scratch import GrantCopy
from xenlab.xen import abi

PAGE = abi.PAGE_SIZE


def pages(n: int) -> dict[int, memoryview]:
    return {gfn: memoryview(bytearray(PAGE)) for gfn in range(100, 100 + n)}


def test_unmapped_copies_go_to_the_hypervisor_and_their_pages_are_wanted():
    cache = GrantCache()
    ours = pages(1)
    copies = [GrantCopy(9, 0, 100, 0, 64, False), GrantCopy(10, 0, 100, 64, 64, True)]
    statuses, remote = cache.copy_local(copies, ours.__getitem__)
    assert statuses == [None, None] and remote == [0, 1]
    assert cache.wanted
    assert cache.take_wanted() == [(9, False), (10, True)]
    assert not cache.wanted
    # asked for already: not wanted twice while the map is in flight
    cache.copy_local(copies, ours.__getitem__)
    assert not cache.wanted


def test_mapped_pages_are_copied_here_both_ways():
    cache = GrantCache()
    ours = pages(2)
    tx_page = memoryview(bytes(range(256)) * 16)                 # read-only, as mapped
    rx_page = memoryview(bytearray(PAGE))
    cache.take_wanted()
    cache.mapped((9, False), 1, tx_page)
    cache.mapped((10, True), 2, rx_page)
    ours[101][10:20] = b"0123456789"
    statuses, remote = cache.copy_local([
        GrantCopy(9, 100, 100, 0, 50, False),       # frontend -> our frame
        GrantCopy(10, 4000, 101, 10, 10, True),     # our frame -> frontend
        GrantCopy(11, 0, 100, 0, 8, False),         # not mapped
    ], ours.__getitem__)
    assert statuses == [abi.GNTST_okay, abi.GNTST_okay, None] and remote == [2]
    assert bytes(ours[100][:50]) == bytes(tx_page[100:150])
    assert bytes(rx_page[4000:4010]) == b"0123456789"
    assert GrantCache.merge(statuses, remote, [abi.GNTST_bad_gntref]) == [
        abi.GNTST_okay, abi.GNTST_okay, abi.GNTST_bad_gntref]
    assert cache.stats["local"] == 2 and cache.stats["remote"] == 1


def test_a_copy_past_the_page_is_refused_as_the_hypervisor_refuses_it():
    cache = GrantCache()
    cache.mapped((9, False), 1, memoryview(bytes(PAGE)))
    ours = pages(1)
    statuses, remote = cache.copy_local([GrantCopy(9, 4090, 100, 0, 10, False),
                                         GrantCopy(9, 0, 100, 4090, 10, False)], ours.__getitem__)
    assert statuses == [abi.GNTST_bad_copy_arg] * 2 and remote == []


def test_the_cache_is_bounded():
    cache = GrantCache(limit=3)
    for ref in range(10):
        cache.want((ref, False))
    assert cache.take_wanted() == [(0, False), (1, False), (2, False)]
    cache.refused((0, False), abi.GNTST_bad_gntref)
    cache.want((0, False))                        # refused once: never asked again
    cache.want((5, False))
    assert cache.take_wanted() == [(5, False)]


def test_a_full_maptrack_stops_all_mapping():
    cache = GrantCache()
    for ref in range(4):
        cache.want((ref, True))
    keys = cache.take_wanted(2)
    cache.refused(keys[0], abi.GNTST_no_device_space)
    assert cache.full and not cache.wanted
    cache.want((50, True))
    assert not cache.wanted


def test_a_mapping_must_be_one_page_and_writable_for_rx():
    cache = GrantCache()
    with pytest.raises(ValueError):
        cache.mapped((1, True), 1, memoryview(bytes(PAGE)))      # read-only view for rx
    with pytest.raises(ValueError):
        cache.mapped((1, False), 1, memoryview(bytes(100)))


def test_drain_gives_back_every_handle_and_releases_the_views():
    cache = GrantCache()
    view = memoryview(bytearray(PAGE))
    cache.mapped((1, True), 7, view)
    cache.mapped((2, False), 8, memoryview(bytes(PAGE)))
    assert sorted(cache.drain()) == [7, 8]
    assert len(cache) == 0
    with pytest.raises(ValueError):
        view[0]                                     # released
