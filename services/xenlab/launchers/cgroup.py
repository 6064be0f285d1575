"""The host's CPU cgroups: each domain process in a cgroup of its own, so
that the credit scheduler's weight and cap (`xl sched-credit`) become
CFS's (xenlab.xen.sched has the mapping).

Whichever hierarchy the host gives the ``cpu`` controller is used:

* cgroup v2, where the unified hierarchy lists ``cpu`` in
  ``cgroup.controllers``: ``cpu.weight`` and ``cpu.max``, in
  ``<root>/xenlab-<owner>/d<domid>`` (the root delegates ``+cpu`` down;
  it is exempt from the no-internal-processes rule);
* cgroup v1, where a v1 hierarchy is mounted with ``cpu``:
  ``cpu.shares``, ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` in
  ``<mount>/xenlab-<owner>/d<domid>``.

Where neither is there or writable (no root, a read-only /sys/fs/cgroup
in a container), ``CpuCgroups.detect`` says why, and the domains run
without a group: sched-credit then refuses with that reason.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path

from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import XenError
from xenlab.xen.sched import CfsValues

log = logging.getLogger(__name__)


class CgroupUnavailable(XenError):
    def __init__(self, reason: str):
        super().__init__(errno.EOPNOTSUPP, reason)


def _cpu_hierarchies(mounts: str) -> tuple[list[Path], list[Path]]:
    """(cgroup2 mount points, v1 mount points with the cpu controller)
    from /proc/self/mounts."""
    v2, v1 = [], []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        where, kind, options = parts[1], parts[2], parts[3].split(",")
        if kind == "cgroup2":
            v2.append(Path(where))
        elif kind == "cgroup" and "cpu" in options:
            v1.append(Path(where))
    return v2, v1


@dataclass
class DomainCgroup:
    """One domain's group."""
    path: Path
    version: int

    def add(self, pid: int) -> None:
        """The whole process (every thread, and those it starts later)."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def apply(self, cfs: CfsValues) -> dict[str, str]:
        """Write the weight and the cap; the files written, with their values."""
        if self.version == 2:
            files = {"cpu.weight": str(cfs.v2_weight), "cpu.max": cfs.v2_max}
        else:
            # The period first: a quota is checked against the period in place.
            files = {"cpu.shares": str(cfs.v1_shares),
                     "cpu.cfs_period_us": str(cfs.v1_period_us),
                     "cpu.cfs_quota_us": str(cfs.v1_quota_us)}
        for name, value in files.items():
            (self.path / name).write_text(value + "\n")
        return {str(self.path / name): value for name, value in files.items()}

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def remove(self) -> None:
        """rmdir, once its processes are gone (a group with tasks is EBUSY)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove cgroup %s: %s", self.path, err.strerror)


class CpuCgroups:
    """The host's cpu controller, as found once at start."""

    def __init__(self, base: Path | None, version: int, reason: str = ""):
        self.base = base            # xenlab-<owner>: every domain's group is below it
        self.version = version      # 1, 2, or 0: none
        self.reason = reason        # why none

    @classmethod
    def detect(cls, owner: str, mounts: str | None = None) -> "CpuCgroups":
        """The v2 hierarchy if it has the cpu controller, else a v1 cpu
        hierarchy; our group is ``xenlab-<owner>``."""
        if mounts is None:
            try:
                mounts = Path("/proc/self/mounts").read_text()
            except OSError as err:
                return cls(None, 0, f"cannot read the mounts: {err.strerror}")
        name = f"xenlab-{owner}"
        v2, v1 = _cpu_hierarchies(mounts)
        for root in v2 + v1:
            _reap_stale(root)
        tried = []
        for root in v2:
            try:
                controllers = (root / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "cpu" not in controllers:
                tried.append(f"cgroup v2 at {root} has no cpu controller")
                continue
            try:
                _enable_cpu(root)
                base = root / name
                base.mkdir(exist_ok=True)
                _enable_cpu(base)
                return cls(base, 2)
            except OSError as err:
                tried.append(f"cgroup v2 at {root}: {err.strerror}")
        for root in v1:
            try:
                base = root / name
                base.mkdir(exist_ok=True)
                return cls(base, 1)
            except OSError as err:
                tried.append(f"cgroup v1 cpu at {root}: {err.strerror}")
        if not v2 and not v1:
            tried.append("no cgroup hierarchy with the cpu controller is mounted")
        return cls(None, 0, "; ".join(tried))

    @property
    def available(self) -> bool:
        return self.base is not None

    def create(self, domid: int) -> DomainCgroup:
        if self.base is None:
            raise CgroupUnavailable(f"no CPU cgroup for domains: {self.reason}")
        path = self.base / f"d{domid}"
        try:
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise CgroupUnavailable(f"cannot create {path}: {err.strerror}") from None
        return DomainCgroup(path, self.version)

    def close(self) -> None:
        if self.base is not None:
            DomainCgroup(self.base, self.version).remove()


def _reap_stale(root: Path) -> None:
    """Groups left by hypervisors that died without closing (SIGKILL):
    their names carry the owner's pid. A group whose domains still run (an
    orphan process) is busy and stays."""
    for base in root.glob("xenlab-*"):
        pid = base.name.split("-")[1]
        if not is_decimal(pid) or Path(f"/proc/{pid}").exists():
            continue
        for group in base.glob("d*"):
            if group.is_dir():
                DomainCgroup(group, 0).remove()
        DomainCgroup(base, 0).remove()


def _enable_cpu(group: Path) -> None:
    control = group / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu\n")
