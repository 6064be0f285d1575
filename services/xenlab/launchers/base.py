"""The launcher interface: how a created domain gets a process to run in.

A `Launcher` starts a domain from its StartInfo (xenlab.xen.start_info)
and, if it can hand descriptors over (``takes_handles``), its
DomainHandles; it returns the `DomainProcess` the hypervisor pauses,
unpauses, kills and waits for. `NoLauncher` gives a domain no process (the
toolstack or a test then acts for it with the secret that Create returns).
"""
from __future__ import annotations

import abc
import errno
from dataclasses import dataclass

from xenlab.launchers.tasks import Task
from xenlab.xen.errors import XenError
from xenlab.xen.sched import CfsValues
from xenlab.xen.start_info import StartInfo


@dataclass(frozen=True)
class DomainHandles:
    """Descriptors the hypervisor opened for a new domain, for a launcher
    that can hand them over (Launcher.takes_handles)."""
    memory_fd: int
    doorbell_fd: int


class DomainProcess(abc.ABC):
    """A running domain as its launcher sees it."""

    pid: int = 0
    agent: str = ""          # where its guest agent listens, as the launcher decided

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the domain to stop; its exit status (negative: killed by that signal)."""

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def unpause(self) -> None: ...

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop it now (xl destroy) and reap it."""

    def proc_state(self) -> str:
        return ""

    def cpu_time(self) -> float:
        return 0.0

    # -- the host scheduler's view (xl vcpu-list, vcpu-pin, sched-credit) ----------
    def vcpu_tasks(self) -> tuple[dict[int, Task], list[Task]]:
        """(vCPU -> its thread, the process's other threads): xenlab.launchers.tasks."""
        raise XenError(errno.EOPNOTSUPP, "this launcher's domains have no threads the "
                                         "hypervisor can see")

    def set_affinity(self, tids, cpus) -> None:
        """Hard affinity of these threads (OSError from sched_setaffinity)."""
        raise XenError(errno.EOPNOTSUPP, "this launcher cannot pin a domain's threads")

    def set_credit(self, cfs: CfsValues) -> dict[str, str]:
        """The credit weight and cap as the host's CFS values; what was
        written where (file or setting -> value)."""
        raise XenError(errno.EOPNOTSUPP, "this launcher cannot set a domain's CPU weight or cap")


class Launcher(abc.ABC):
    name: str = ""
    takes_handles = False    # start() hands DomainHandles over to the domain

    @abc.abstractmethod
    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DomainProcess | None:
        """Start the domain; None when this launcher gives it no process."""

    def warm_up(self) -> None:
        """A service hypervisor is up: make ready now, in the background,
        what the first start() would otherwise wait for."""

    async def close(self) -> None:
        pass


class NoLauncher(Launcher):
    name = "none"

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> None:
        return None

