"""Cpupools, as Xen's cpupool.c keeps them: disjoint sets of the host's
CPUs, each with a scheduler and its domains. Pool-0 (id 0) holds every
CPU at boot and every new domain; a CPU taken out of a pool is free until
another takes it (``xl info``'s free_cpus). A pool that has domains keeps
at least one CPU (cpupool_unassign_cpu's EBUSY); a pool with domains
cannot go, and Pool-0 never does.

The domains of a pool run on its CPUs: xenlab.hypervisor.scheduler pins
their threads there. Pure bookkeeping: no I/O.
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field

from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import XenError
from xenlab.xen.sched import SCHEDULER, SCHEDULERS

POOL0 = "Pool-0"
MAX_POOLS = 64
_POOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass
class Pool:
    poolid: int
    name: str
    sched: str
    cpus: set[int] = field(default_factory=set)
    domains: set[int] = field(default_factory=set)


class Cpupools:
    def __init__(self, host_cpus):
        self.host_cpus = frozenset(host_cpus)
        if not self.host_cpus:
            raise ValueError("a host has at least one CPU")
        self.pools: dict[int, Pool] = {0: Pool(0, POOL0, SCHEDULER, set(self.host_cpus))}
        self._pool_of: dict[int, int] = {}

    # -- lookups ---------------------------------------------------------------------
    def lookup(self, ref: str) -> Pool:
        """A pool by name, or by id (libxl_cpupool_qualifier_to_cpupoolid)."""
        for pool in self.pools.values():
            if pool.name == ref:
                return pool
        if is_decimal(ref) and len(ref) < 10 and int(ref) in self.pools:
            return self.pools[int(ref)]
        raise XenError(errno.ENOENT, f"cpupool {ref!r} does not exist")

    def pool_of(self, domid: int) -> Pool:
        return self.pools[self._pool_of.get(domid, 0)]

    def free_cpus(self) -> frozenset[int]:
        used = set().union(*(p.cpus for p in self.pools.values()))
        return self.host_cpus - used

    def _check_cpus(self, cpus) -> frozenset[int]:
        cpus = frozenset(cpus)
        if not cpus:
            raise XenError(errno.EINVAL, "no CPU given")
        missing = sorted(cpus - self.host_cpus)
        if missing:
            raise XenError(errno.EINVAL, f"CPU {missing[0]} is not one of the host's")
        return cpus

    # -- domains -----------------------------------------------------------------------
    def add_domain(self, domid: int) -> Pool:
        self.remove_domain(domid)
        self._pool_of[domid] = 0
        self.pools[0].domains.add(domid)
        return self.pools[0]

    def remove_domain(self, domid: int) -> None:
        pool = self.pools.get(self._pool_of.pop(domid, -1))
        if pool is not None:
            pool.domains.discard(domid)

    def migrate(self, domid: int, ref: str) -> Pool:
        """XEN_SYSCTL_CPUPOOL_OP_MOVEDOMAIN: into a pool that has CPUs."""
        pool = self.lookup(ref)
        if not pool.cpus:
            raise XenError(errno.EINVAL, f"cpupool {pool.name} has no CPU to run d{domid} on")
        self.remove_domain(domid)
        self._pool_of[domid] = pool.poolid
        pool.domains.add(domid)
        return pool

    # -- pools -------------------------------------------------------------------------
    def create(self, name: str, sched: str = "", cpus=()) -> Pool:
        """A pool of free CPUs; with none named, the lowest free CPU (as xl
        cpupool-create takes one free CPU when cpus= is not given)."""
        if not _POOL_NAME.fullmatch(name or "") or is_decimal(name):
            raise XenError(errno.EINVAL, f"bad cpupool name {name!r}: 1-64 of A-Z a-z 0-9 _ . : -, "
                                         f"not all digits")
        if any(p.name == name for p in self.pools.values()):
            raise XenError(errno.EEXIST, f"cpupool {name} already exists")
        sched = sched or SCHEDULER
        if sched not in SCHEDULERS:
            raise XenError(errno.EINVAL, f"scheduler {sched!r}: expected {' or '.join(SCHEDULERS)}")
        if len(self.pools) >= MAX_POOLS:
            raise XenError(errno.ENOSPC, f"{MAX_POOLS} cpupools at most")
        free = self.free_cpus()
        if cpus:
            cpus = self._check_cpus(cpus)
            taken = sorted(cpus - free)
            if taken:
                raise XenError(errno.EBUSY, f"CPU {taken[0]} is in cpupool {self._owner(taken[0])}: "
                                            f"remove it from there first (xl cpupool-cpu-remove)")
        elif free:
            cpus = {min(free)}
        else:
            raise XenError(errno.EBUSY, "no free CPU for a new cpupool: remove one from a pool first")
        poolid = next(i for i in range(1, MAX_POOLS + 1) if i not in self.pools)
        pool = Pool(poolid, name, sched, set(cpus))
        self.pools[poolid] = pool
        return pool

    def destroy(self, ref: str) -> Pool:
        pool = self.lookup(ref)
        if pool.poolid == 0:
            raise XenError(errno.EPERM, f"{POOL0} cannot be destroyed")
        if pool.domains:
            raise XenError(errno.EBUSY, f"cpupool {pool.name} has domains: migrate them first")
        del self.pools[pool.poolid]
        return pool

    def cpu_add(self, ref: str, cpus) -> Pool:
        pool = self.lookup(ref)
        cpus = self._check_cpus(cpus)
        for cpu in sorted(cpus):
            owner = self._owner(cpu)
            if owner is not None and owner != pool.name:
                raise XenError(errno.EBUSY, f"CPU {cpu} is in cpupool {owner}: remove it from there first")
        pool.cpus |= cpus
        return pool

    def cpu_remove(self, ref: str, cpus) -> Pool:
        pool = self.lookup(ref)
        cpus = self._check_cpus(cpus)
        outside = sorted(cpus - pool.cpus)
        if outside:
            raise XenError(errno.EINVAL, f"CPU {outside[0]} is not in cpupool {pool.name}")
        if pool.domains and not pool.cpus - cpus:
            raise XenError(errno.EBUSY, f"cpupool {pool.name} has domains and would have no CPU left")
        pool.cpus -= cpus
        return pool

    def _owner(self, cpu: int) -> str | None:
        return next((p.name for p in self.pools.values() if cpu in p.cpus), None)
