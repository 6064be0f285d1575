"""Scheduling values, each stated once: xl's CPU lists (the hard and soft
affinity of `xl vcpu-pin`, a cpupool's `cpus=`), the credit scheduler's
weight and cap, and how they map onto the host's CFS through cgroups.

Xen's credit scheduler gives each domain a *weight* (1..65535, default
256: a domain with twice the weight gets twice the CPU when CPUs are
contended) and a *cap* (the most CPU it may use even when CPUs are idle,
in percent of one physical CPU: 50 is half a CPU, 200 two CPUs; 0 is no
cap). Linux's CFS has the same two knobs per cgroup:

* weight is relative in both, so it maps by ratio, Xen's default onto the
  cgroup's default: v1 ``cpu.shares`` = weight * 1024 / 256 (clamped to
  the kernel's 2..262144), v2 ``cpu.weight`` = weight * 100 / 256
  (clamped to 1..10000, rounded, never 0). Two weights Xen tells apart may
  clamp to one value at the extremes (v2 below weight 3, above 25600);
* cap is bandwidth: quota = cap% of the period, per period of 100 ms
  (CFS's default), v1 ``cpu.cfs_quota_us`` (-1: none) and v2 ``cpu.max``
  ("max 100000": none). CFS takes no quota under 1 ms, so cap 1 (1 ms of
  100 ms) is the smallest, which is Xen's smallest too.

Pure: no I/O (the cgroup files are written by xenlab.launchers.cgroup).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import XenError

SCHEDULER = "credit"            # xl info's xen_scheduler, sysctl's XEN_SCHEDULER_CREDIT
SCHEDULERS = ("credit", "credit2")
DEFAULT_WEIGHT = 256            # sched_credit.c CSCHED_DEFAULT_WEIGHT
MAX_WEIGHT = 65535              # weight is a uint16 in xen_domctl_sched_credit
MAX_CAP = 65535                 # so is cap (credit2 also refuses cap > 100 * vcpus)
TSLICE_MS = 30                  # CSCHED_DEFAULT_TSLICE_MS
RATELIMIT_US = 1000             # XEN_SYSCTL_SCHED_RATELIMIT_DEFAULT
MIGRATION_DELAY_US = 0

CFS_PERIOD_US = 100_000         # kernel/sched: default cfs_period_us
CFS_MIN_QUOTA_US = 1000         # kernel/sched/core.c min_cfs_quota_period
V1_DEFAULT_SHARES = 1024        # ROOT_TASK_GROUP_LOAD / scale_load_down
V1_MIN_SHARES, V1_MAX_SHARES = 2, 1 << 18
V2_DEFAULT_WEIGHT = 100         # CGROUP_WEIGHT_DFL
V2_MIN_WEIGHT, V2_MAX_WEIGHT = 1, 10000

MAX_CPUS = 4096                 # a CPU number past this is a typo, not a host


def check_weight(weight: int) -> int:
    if not 1 <= weight <= MAX_WEIGHT:
        raise XenError(errno.EINVAL, f"weight {weight}: expected 1..{MAX_WEIGHT} (default {DEFAULT_WEIGHT})")
    return weight


def check_cap(cap: int, vcpus: int = 0) -> int:
    """0..65535; with ``vcpus``, at most 100 per vCPU (credit2's rule: a
    cap past what the domain's vCPUs could ever use means nothing)."""
    limit = min(MAX_CAP, 100 * vcpus) if vcpus else MAX_CAP
    if not 0 <= cap <= limit:
        raise XenError(errno.EINVAL, f"cap {cap}: expected 0 (none) up to {limit}"
                                     f"{f' (100 per vCPU, {vcpus} vCPUs)' if vcpus else ''}")
    return cap


@dataclass(frozen=True)
class CfsValues:
    """What a weight and a cap are in a cgroup's files."""
    v1_shares: int
    v1_quota_us: int           # -1: no quota
    v1_period_us: int
    v2_weight: int
    v2_max: str                # "QUOTA PERIOD" or "max PERIOD"


def cfs_values(weight: int, cap: int) -> CfsValues:
    check_weight(weight)
    check_cap(cap)
    shares = min(max(weight * V1_DEFAULT_SHARES // DEFAULT_WEIGHT, V1_MIN_SHARES), V1_MAX_SHARES)
    v2 = min(max(round(weight * V2_DEFAULT_WEIGHT / DEFAULT_WEIGHT), V2_MIN_WEIGHT), V2_MAX_WEIGHT)
    quota = max(cap * CFS_PERIOD_US // 100, CFS_MIN_QUOTA_US) if cap else -1
    v2_max = f"{quota} {CFS_PERIOD_US}" if cap else f"max {CFS_PERIOD_US}"
    return CfsValues(shares, quota, CFS_PERIOD_US, v2, v2_max)


# --------------------------------------------------------------------------
# CPU lists, as xl_parse.c's parse_cpurange and xl_utils.c's print_bitmap.

def parse_cpulist(text: str, nr_cpus: int) -> frozenset[int]:
    """xl's CPU list: comma-separated CPUs and ranges, ``all``, and
    ``^N`` / ``^N-M`` removing from what came before (``0-3,^2`` is 0, 1,
    3). Every CPU named must exist on a host of ``nr_cpus`` CPUs
    (0..nr_cpus-1). NUMA-node forms (``node:``) are refused: the lab
    reports one node."""
    if not text or not text.strip():
        raise XenError(errno.EINVAL, "an empty CPU list")
    cpus: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        negate = item.startswith("^")
        if negate:
            item = item[1:]
        if item.startswith(("node:", "nodes:")):
            raise XenError(errno.EINVAL, f"{item!r}: NUMA-node lists are not supported (one node)")
        if item == "all":
            if negate:
                raise XenError(errno.EINVAL, "can't combine \"^\" and \"all\"")
            cpus.update(range(nr_cpus))
            continue
        first, sep, last = item.partition("-")
        if not is_decimal(first) or (sep and not is_decimal(last)) or len(first) > 5 or len(last) > 5:
            raise XenError(errno.EINVAL, f"invalid pcpu range: {item!r}")
        lo, hi = int(first), int(last) if sep else int(first)
        if lo > hi:
            raise XenError(errno.EINVAL, f"invalid pcpu range: {item!r} (backwards)")
        if hi >= nr_cpus:
            raise XenError(errno.EINVAL, f"CPU {hi} does not exist: the host has CPUs 0-{nr_cpus - 1}")
        span = range(lo, hi + 1)
        if negate:
            cpus.difference_update(span)
        else:
            cpus.update(span)
    return frozenset(cpus)


def format_cpulist(cpus, nr_cpus: int) -> str:
    """print_bitmap: ``all`` when every CPU of 0..nr_cpus-1 is set, ``none``
    when none is, else ranges joined by commas (``0-1,3``)."""
    cpus = sorted(c for c in set(cpus) if 0 <= c < nr_cpus)
    if not cpus:
        return "none"
    if len(cpus) == nr_cpus:
        return "all"
    runs: list[str] = []
    start = prev = cpus[0]
    for cpu in cpus[1:] + [None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        runs.append(f"{start}-{prev}" if prev > start else str(start))
        if cpu is not None:
            start = prev = cpu
    return ",".join(runs)
