"""The local launcher: each domain runs the domain kernel
(`python -m xenlab.boot.domu`) as a child process.

With a DomainsDir that is isolated (xenlab.launchers.domains_dir), each domU
runs under its own uid: its memory object and its doorbell are handed to it
as open descriptors (it is told no path it could change to reach another
domain's), and the only files it can reach are in its own directory. The
process starts as the launcher's user, maps its memory, then drops to its
uid for good before it reads any untrusted input (xenlab.boot.domu).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from xenlab.launchers import tasks
from xenlab.launchers.base import DomainHandles, DomainProcess, Launcher
from xenlab.launchers.cgroup import CgroupUnavailable, CpuCgroups, DomainCgroup
from xenlab.launchers.domains_dir import DomainsDir
from xenlab.xen.sched import CfsValues
from xenlab.xen.start_info import StartInfo

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class HostThreads:
    """A domain process in the hypervisor's own PID namespace: its threads
    are seen and pinned through /proc and sched_setaffinity."""

    pid: int

    def vcpu_tasks(self):
        return tasks.vcpu_tasks(self.pid)

    def set_affinity(self, tids, cpus) -> None:
        for tid in tids:
            tasks.set_affinity(tid, cpus)


class HostProcess(HostThreads, DomainProcess):
    """A domain process the hypervisor started on this host: signalled,
    seen through /proc, in a CPU cgroup of its own where it has one."""

    def __init__(self, pid: int, agent: str = "", cleanup=lambda: None,
                 cgroup: DomainCgroup | None = None, no_cgroup: str = ""):
        self.pid = pid
        self.agent = agent
        self.cgroup = cgroup
        self._no_cgroup = no_cgroup         # why it has no cgroup
        self._cleanup_dir = cleanup

    def _cleanup(self) -> None:
        self._cleanup_dir()
        if self.cgroup is not None:
            self.cgroup.remove()

    def _signal(self, sig: int) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def unpause(self) -> None:
        self._signal(signal.SIGCONT)

    def _stat(self) -> list[str]:
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return []
        # The command name (field 2) may hold spaces; fields after it are plain.
        return text[text.rindex(")") + 2:].split()

    def proc_state(self) -> str:
        fields = self._stat()
        return fields[0] if fields else ""

    def cpu_time(self) -> float:
        fields = self._stat()
        if len(fields) < 13:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK   # utime + stime

    def set_credit(self, cfs: CfsValues) -> dict[str, str]:
        if self.cgroup is None:
            raise CgroupUnavailable(f"its process has no CPU cgroup: {self._no_cgroup}")
        return self.cgroup.apply(cfs)


class LocalProcess(HostProcess):
    def __init__(self, proc: asyncio.subprocess.Process, agent: str = "",
                 cleanup=lambda: None, cgroup: DomainCgroup | None = None,
                 no_cgroup: str = ""):
        super().__init__(proc.pid, agent, cleanup, cgroup, no_cgroup)
        self.proc = proc

    async def wait(self) -> int:
        status = await self.proc.wait()
        self._cleanup()
        return status

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)
        await self.proc.wait()
        self._cleanup()


class ForeignProcess(HostThreads, DomainProcess):
    """A domain kernel the hypervisor did not start (Domain-0's `xenlab
    dom0`, found through its doorbell connection): its threads can be seen
    and pinned; it has no cgroup of ours, and its life is not ours to end."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu_time(self) -> float:
        try:
            return tasks.parse_stat(Path(f"/proc/{self.pid}/stat").read_text())[3]
        except (OSError, ValueError, IndexError):
            return 0.0

    async def wait(self) -> int:
        raise NotImplementedError("not our child")

    def pause(self) -> None:
        raise NotImplementedError("not ours to pause")

    def unpause(self) -> None:
        raise NotImplementedError("not ours to unpause")

    async def kill(self) -> None:
        raise NotImplementedError("not ours to kill")

    def set_credit(self, cfs: CfsValues) -> dict[str, str]:
        raise CgroupUnavailable(f"process {self.pid} was not started by the hypervisor: it has no "
                                f"CPU cgroup of the lab's (set its weight and cap on the host)")


class LocalLauncher(Launcher):
    """Runs each domain as a local asyncio process of the domain kernel;
    with a DomainsDir that is isolated, each under its own uid."""

    name = "local"
    takes_handles = True

    def __init__(self, python: str = sys.executable, log_level: str = "INFO",
                 domains_dir: DomainsDir | None = None, cgroups: CpuCgroups | None = None):
        self.python = python
        self.log_level = log_level
        self.domains_dir = domains_dir
        # Each domain's process in a CPU cgroup of its own (xl sched-credit).
        self.cgroups = cgroups or CpuCgroups.detect(f"{os.getpid()}-{id(self) & 0xffff:04x}")
        if not self.cgroups.available:
            log.info("domains get no CPU cgroup (xl sched-credit will refuse): %s",
                     self.cgroups.reason)

    def _cgroup(self, domid: int) -> tuple[DomainCgroup | None, str]:
        try:
            return self.cgroups.create(domid), ""
        except CgroupUnavailable as err:
            return None, err.message

    async def close(self) -> None:
        self.cgroups.close()

    def _prepare(self, info: StartInfo, handles: DomainHandles | None):
        """The start_info the domain gets (its descriptors, agent address
        and ids), the descriptors to hand over, and what removes its
        directory."""
        pass_fds: list[int] = []
        if handles is not None:
            info = dataclasses.replace(info, memory_fd=handles.memory_fd,
                                       doorbell_fd=handles.doorbell_fd)
            pass_fds = [handles.memory_fd, handles.doorbell_fd]
        cleanup = lambda: None
        dirs = self.domains_dir
        if dirs is not None and not info.agent:
            dirs.domain_dir(info.domid)
            info = dataclasses.replace(info, agent=dirs.agent_address(info.domid))
            cleanup = lambda: dirs.remove_domain_dir(info.domid)
        if dirs is not None and dirs.isolated:
            uid = dirs.uids.uid(info.domid)
            info = dataclasses.replace(info, uid=uid, gid=uid, groups=[dirs.uids.group])
        return info, pass_fds, cleanup

    def _join_cgroup(self, domid: int, pid: int) -> tuple[DomainCgroup | None, str]:
        group, why = self._cgroup(domid)
        if group is not None:
            try:
                group.add(pid)
            except OSError as err:
                why = f"cannot join {group.path}: {err.strerror}"
                group.remove()
                group = None
        return group, why

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DomainProcess:
        info, pass_fds, cleanup = self._prepare(info, handles)
        console = open(info.console_log, "ab", buffering=0)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "xenlab.boot.domu", "--log-level", self.log_level,
                stdin=asyncio.subprocess.PIPE, stdout=console, stderr=console,
                start_new_session=True, pass_fds=pass_fds)
        except BaseException:
            cleanup()
            raise
        finally:
            console.close()
        proc.stdin.write(info.to_json().encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        group, why = self._join_cgroup(info.domid, proc.pid)
        log.info("d%d (%s): started process %d%s", info.domid, info.name, proc.pid,
                 f" as uid {info.uid}" if info.uid >= 0 else "")
        return LocalProcess(proc, info.agent, cleanup, group, why)
