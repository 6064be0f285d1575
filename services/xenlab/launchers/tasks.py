"""A domain process's threads, as the host's scheduler sees them: which
are its vCPUs, what each is doing, on which CPU, for how long, and where
it may run.

A domain's vCPU 0 is its process's main thread (its kernel's event loop
runs there, as a uniprocessor guest's kernel runs on its only vCPU);
vCPU N > 0 is the thread the domain kernel names ``vcpuN``
(xenlab.domain.vcpus). Every other thread (gRPC's, the executor's) is
the domain's too and counts in its CPU time, but is no vCPU: affinity
given to the vCPUs is given to those as their union, so that a pinned
domain stays on its CPUs as a whole.

The names are the guest's own claim, and may only cost it: a thread it
calls ``vcpu3`` is its own thread.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_VCPU_NAME = re.compile(r"vcpu([0-9]{1,2})")


@dataclass(frozen=True)
class Task:
    """One thread of a process, from /proc/PID/task/TID/stat."""
    tid: int
    name: str
    state: str            # R running/runnable, S/D blocked, T stopped, ...
    cpu: int              # the CPU it last ran on (stat field 39, "processor")
    time: float           # utime + stime, seconds
    affinity: frozenset[int]


def parse_stat(text: str) -> tuple[str, str, int, float]:
    """(comm, state, processor, seconds) from a /proc/.../stat line. The
    name (field 2) may hold spaces and parentheses: it ends at the last ')'."""
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime, stime are 14, 15; processor is 39.
    return comm, fields[0], int(fields[36]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def read_tasks(pid: int, proc: Path = Path("/proc")) -> list[Task]:
    """Every thread of ``pid``; [] once it is gone."""
    out = []
    try:
        tids = sorted(int(t) for t in os.listdir(proc / str(pid) / "task"))
    except OSError:
        return []
    for tid in tids:
        try:
            comm, state, cpu, seconds = parse_stat((proc / str(pid) / "task" / str(tid) / "stat").read_text())
            affinity = frozenset(os.sched_getaffinity(tid))
        except (OSError, ValueError, IndexError):
            continue        # it exited between the listing and the read
        out.append(Task(tid, comm, state, cpu, seconds, affinity))
    return out


def vcpu_of(task: Task, pid: int) -> int | None:
    """The vCPU a thread is, or None: the main thread is vCPU 0."""
    if task.tid == pid:
        return 0
    m = _VCPU_NAME.fullmatch(task.name)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def vcpu_tasks(pid: int, proc: Path = Path("/proc")) -> tuple[dict[int, Task], list[Task]]:
    """(vCPU number -> its thread, the other threads) of process ``pid``."""
    vcpus: dict[int, Task] = {}
    others: list[Task] = []
    for task in read_tasks(pid, proc):
        n = vcpu_of(task, pid)
        if n is None or n in vcpus:
            others.append(task)
        else:
            vcpus[n] = task
    return vcpus, others


def set_affinity(tid: int, cpus) -> None:
    """sched_setaffinity on one thread. A thread that has exited since it
    was listed is no error; OSError otherwise (EPERM without CAP_SYS_NICE
    over another uid's thread, EINVAL for no CPU it may use)."""
    try:
        os.sched_setaffinity(tid, set(cpus))
    except ProcessLookupError:
        pass
