"""Cpupools as Xen's cpupool.c keeps them: disjoint CPUs, Pool-0 first."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.cpupools import Cpupools
from xenlab.xen.errors import XenError


def errno_of(call, *args):
    with pytest.raises(XenError) as err:
        call(*args)
    return err.value.errno


@pytest.fixture
def pools():
    p = Cpupools(range(4))
    p.add_domain(0)
    p.add_domain(1)
    return p


def test_pool0_holds_every_cpu_and_every_new_domain(pools):
    pool0 = pools.lookup("Pool-0")
    assert pool0.cpus == {0, 1, 2, 3} and pool0.domains == {0, 1}
    assert pools.lookup("0") is pool0 and pools.pool_of(1) is pool0
    assert pools.free_cpus() == set()


def test_a_cpu_taken_from_a_pool_is_free_until_a_new_pool_takes_it(pools):
    pools.cpu_remove("Pool-0", {2, 3})
    assert pools.free_cpus() == {2, 3}
    pool = pools.create("fast", "credit2", {3})
    assert (pool.poolid, pool.sched, pool.cpus) == (1, "credit2", {3})
    assert pools.free_cpus() == {2}


def test_a_new_pool_without_cpus_takes_the_lowest_free_one(pools):
    pools.cpu_remove("Pool-0", {1, 3})
    assert pools.create("p").cpus == {1}


def test_a_cpu_in_another_pool_cannot_be_taken(pools):
    assert errno_of(pools.create, "p", "", {1}) == errno.EBUSY
    assert errno_of(pools.create, "p") == errno.EBUSY        # no free CPU at all
    pools.cpu_remove("Pool-0", {3})
    pools.create("p", "", {3})
    assert errno_of(pools.cpu_add, "Pool-0", {3}) == errno.EBUSY


def test_migrate_moves_a_domain_and_a_pool_with_domains_keeps_a_cpu(pools):
    pools.cpu_remove("Pool-0", {3})
    pools.create("p", "", {3})
    pool = pools.migrate(1, "p")
    assert pools.pool_of(1) is pool and 1 not in pools.lookup("Pool-0").domains
    assert errno_of(pools.cpu_remove, "p", {3}) == errno.EBUSY
    assert errno_of(pools.destroy, "p") == errno.EBUSY
    pools.migrate(1, "Pool-0")
    pools.cpu_remove("p", {3})
    assert errno_of(pools.migrate, 1, "p") == errno.EINVAL     # no CPU to run on
    pools.destroy("p")
    assert pools.free_cpus() == {3}
    assert errno_of(pools.lookup, "p") == errno.ENOENT


def test_pool0_cannot_go_and_names_are_checked(pools):
    assert errno_of(pools.destroy, "Pool-0") == errno.EPERM
    pools.cpu_remove("Pool-0", {3})
    for bad in ("", "12", "a b", "x" * 65):
        assert errno_of(pools.create, bad, "", {3}) == errno.EINVAL
    assert errno_of(pools.create, "Pool-0", "", {3}) == errno.EEXIST
    assert errno_of(pools.create, "p", "rtds", {3}) == errno.EINVAL


def test_cpus_must_be_the_hosts(pools):
    assert errno_of(pools.cpu_add, "Pool-0", {4}) == errno.EINVAL
    assert errno_of(pools.cpu_remove, "Pool-0", set()) == errno.EINVAL
    pools.cpu_remove("Pool-0", {2})
    assert errno_of(pools.cpu_remove, "Pool-0", {2}) == errno.EINVAL   # not in it any more


def test_a_removed_domain_leaves_its_pool(pools):
    pools.remove_domain(1)
    assert pools.lookup("Pool-0").domains == {0}
    pools.remove_domain(1)          # twice is harmless
