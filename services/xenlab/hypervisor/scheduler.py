"""The scheduler: a domain's vCPUs as the host runs them, their affinity,
the credit scheduler's weight and cap, and the cpupools, carried out on
the domains' processes (xenlab.launchers: threads in /proc, affinity with
sched_setaffinity, weight and cap in the domain's cgroup).

Each vCPU keeps the hard affinity the toolstack asked for (all CPUs
until ``xl vcpu-pin``); its thread runs on that set within its pool's
CPUs. When the two do not meet, it runs on the pool's CPUs, as Xen breaks
a vCPU's affinity when its pool loses the CPUs it was pinned to. The
process's other threads run on the union of its vCPUs' CPUs.

Soft affinity (a preference) has no counterpart in Linux's scheduler:
it is always "all", and setting it is refused.
"""
from __future__ import annotations

import errno
import logging
import os

from xenlab.hypervisor.cpupools import Cpupools, Pool
from xenlab.hypervisor.domains import Domain
from xenlab.launchers.base import DomainProcess
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.sched import DEFAULT_WEIGHT, cfs_values, check_cap, check_weight, parse_cpulist

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, process, host_cpus=None, nr_cpus: int | None = None):
        """``process(domid)``: the domain's DomainProcess or None."""
        self._process = process
        cpus = frozenset(host_cpus if host_cpus is not None else os.sched_getaffinity(0))
        self.nr_cpus = nr_cpus or max(max(cpus) + 1, os.cpu_count() or 1)
        self.pools = Cpupools(cpus)
        self._hard: dict[tuple[int, int], frozenset[int]] = {}
        self.params: dict[int, tuple[int, int]] = {}

    # -- a domain's life ---------------------------------------------------------------
    def started(self, dom: Domain) -> None:
        """A new domain joins Pool-0 with the default weight and no cap;
        its process is pinned to Pool-0's CPUs if those are not all."""
        self.pools.add_domain(dom.domid)
        self.params[dom.domid] = (DEFAULT_WEIGHT, 0)
        if self.pools.pools[0].cpus != self.pools.host_cpus and self._process(dom.domid):
            try:
                self._apply_affinity(dom)
            except XenError as err:
                log.warning("d%d: not pinned to %s's CPUs: %s", dom.domid, self.pools.pools[0].name,
                            err.message)

    def forget(self, domid: int) -> None:
        self.pools.remove_domain(domid)
        self.params.pop(domid, None)
        for key in [k for k in self._hard if k[0] == domid]:
            del self._hard[key]

    def _proc(self, dom: Domain, what: str) -> DomainProcess:
        proc = self._process(dom.domid)
        if proc is None:
            raise DomainError(errno.EOPNOTSUPP, f"d{dom.domid} ({dom.name}) has no process the "
                                                f"hypervisor runs: no vCPU threads to {what}")
        return proc

    # -- vCPUs ---------------------------------------------------------------------------
    def vcpus(self, dom: Domain) -> list[dict]:
        """xl vcpu-list's rows for one domain: each of its maxvcpus vCPUs."""
        proc = self._process(dom.domid)
        threads = {}
        if proc is not None:
            try:
                threads, _ = proc.vcpu_tasks()
            except XenError as err:       # a container out of sight: listed without threads
                log.debug("d%d: no threads to list: %s", dom.domid, err.message)
        rows = []
        for n in range(dom.vcpus):
            online = n < (dom.online_vcpus or dom.vcpus)
            task = threads.get(n)
            row = dict(domid=dom.domid, name=dom.name, vcpu=n, online=online, cpu=-1,
                       running=False, blocked=False, time=0.0, hard=[], soft=list(range(self.nr_cpus)),
                       tid=0)
            if task is not None:
                row.update(time=task.time, hard=sorted(task.affinity), tid=task.tid)
                if online:
                    row.update(cpu=task.cpu, running=task.state == "R",
                               blocked=task.state in ("S", "D", "I"))
            else:
                row["hard"] = sorted(self._effective(dom.domid, n))
            rows.append(row)
        return rows

    def pin(self, dom: Domain, vcpu: int, hard: str, soft: str = "") -> None:
        """xl vcpu-pin: ``vcpu`` -1 is all; ``hard`` "-" leaves it."""
        if soft not in ("", "-", "all"):
            raise XenError(errno.EOPNOTSUPP, "soft affinity is not emulated: Linux's scheduler has "
                                             "no preferred-CPU affinity (give '-' or 'all')")
        if not -1 <= vcpu < dom.vcpus:
            raise XenError(errno.EINVAL, f"d{dom.domid} has vCPUs 0-{dom.vcpus - 1}; asked {vcpu}")
        if hard in ("", "-"):
            return
        cpus = parse_cpulist(hard, self.nr_cpus)
        pool = self.pools.pool_of(dom.domid)
        if not cpus & pool.cpus:
            raise XenError(errno.EINVAL, f"no CPU of {hard!r} is in d{dom.domid}'s cpupool "
                                         f"{pool.name} (CPUs {sorted(pool.cpus)})")
        self._proc(dom, "pin")
        targets = range(dom.vcpus) if vcpu == -1 else [vcpu]
        before = {n: self._hard.get((dom.domid, n)) for n in targets}
        for n in targets:
            self._hard[(dom.domid, n)] = cpus
        try:
            self._apply_affinity(dom)
        except XenError:
            for n, old in before.items():
                if old is None:
                    self._hard.pop((dom.domid, n), None)
                else:
                    self._hard[(dom.domid, n)] = old
            raise
        log.info("d%d: vCPU %s pinned to %s", dom.domid, "all" if vcpu == -1 else vcpu, hard)

    def _effective(self, domid: int, vcpu: int) -> frozenset[int]:
        pool = self.pools.pool_of(domid).cpus
        want = self._hard.get((domid, vcpu), self.pools.host_cpus)
        return frozenset(want & pool) or frozenset(pool)

    def _apply_affinity(self, dom: Domain) -> None:
        """Every vCPU thread to its effective CPUs, the others to their union."""
        proc = self._proc(dom, "pin")
        threads, others = proc.vcpu_tasks()
        union: set[int] = set()
        try:
            for n in range(dom.vcpus):
                cpus = self._effective(dom.domid, n)
                union |= cpus
                if n in threads:
                    proc.set_affinity([threads[n].tid], cpus)
            proc.set_affinity([t.tid for t in others], union)
        except OSError as err:
            raise XenError(err.errno or errno.EIO, f"sched_setaffinity on d{dom.domid}'s "
                                                   f"threads: {err.strerror}") from None

    # -- credit --------------------------------------------------------------------------
    def get(self, dom: Domain) -> dict:
        weight, cap = self.params.get(dom.domid, (DEFAULT_WEIGHT, 0))
        return dict(domid=dom.domid, name=dom.name, weight=weight, cap=cap,
                    poolid=self.pools.pool_of(dom.domid).poolid)

    def set(self, dom: Domain, weight: int | None, cap: int | None) -> dict[str, str]:
        """sched_credit's putinfo: what was written where."""
        old_weight, old_cap = self.params.get(dom.domid, (DEFAULT_WEIGHT, 0))
        weight = check_weight(old_weight if weight is None else weight)
        cap = check_cap(old_cap if cap is None else cap, dom.vcpus)
        written = self._proc(dom, "schedule").set_credit(cfs_values(weight, cap))
        self.params[dom.domid] = (weight, cap)
        log.info("d%d (%s): credit weight %d cap %d", dom.domid, dom.name, weight, cap)
        return written

    # -- cpupools ------------------------------------------------------------------------
    def _repin(self, pool: Pool, domains) -> None:
        for dom in domains:
            if dom.domid in pool.domains and self._process(dom.domid) is not None:
                self._apply_affinity(dom)

    def migrate(self, dom: Domain, ref: str) -> Pool:
        self._proc(dom, "move")
        old = self.pools.pool_of(dom.domid).name
        pool = self.pools.migrate(dom.domid, ref)
        try:
            self._apply_affinity(dom)
        except XenError:
            self.pools.migrate(dom.domid, old)
            raise
        log.info("d%d (%s) moved to cpupool %s", dom.domid, dom.name, pool.name)
        return pool

    def cpu_remove(self, ref: str, cpus: str, domains) -> Pool:
        pool = self.pools.cpu_remove(ref, parse_cpulist(cpus, self.nr_cpus))
        self._repin(pool, domains)
        log.info("cpupool %s: CPUs %s removed", pool.name, cpus)
        return pool

    def cpu_add(self, ref: str, cpus: str, domains) -> Pool:
        pool = self.pools.cpu_add(ref, parse_cpulist(cpus, self.nr_cpus))
        self._repin(pool, domains)
        log.info("cpupool %s: CPUs %s added", pool.name, cpus)
        return pool
