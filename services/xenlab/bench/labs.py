"""The labs the bench runs (real processes, through xenlab.lab.runner.Lab),
and what the bench reads about their processes: CPU time and memory."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xenlab import eventloop
from xenlab.bench.stats import cpu_percent, per_unit, time_used
from xenlab.lab.runner import Lab
from xenlab.lab.spec import LabSpec, parse_lab
from xenlab.proto import common_pb2

DOMU_MEMORY_MB = 16          # netfront's rings and buffers take 2 MiB of it
DOM0_MEMORY_MB = 256         # HypervisorConfig.dom0_memory_mb
DOWN_TIMEOUT = 120.0         # seconds for a lab to go down before its services are killed
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def mac(i: int) -> str:
    """The MAC of the bench's domU number i (1-based), in Xen's 00:16:3e range."""
    return f"00:16:3e:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"


def ip(i: int) -> str:
    return f"10.0.{i >> 8 & 0xFF}.{i & 0xFF}"


def domu_name(i: int) -> str:
    return f"d{i:02d}"


def lab_spec(n: int, name: str = "bench") -> LabSpec:
    """n domUs d01..dNN on xenbr0, with fixed MACs and addresses in 10.0.0.0/16;
    n = 0 is the lab's services alone."""
    lines = [f'[lab]\nname = "{name}"\n', "[hypervisor]",
             f"memory = {DOM0_MEMORY_MB + 64 + n * DOMU_MEMORY_MB}\n",
             '[[bridge]]\nname = "xenbr0"\n']
    for i in range(1, n + 1):
        lines.append(f'[[domain]]\nname = "{domu_name(i)}"\nmemory = {DOMU_MEMORY_MB}\n'
                     f'vif = ["mac={mac(i)},ip={ip(i)}/16"]\n')
    return parse_lab("\n".join(lines), f"<bench lab of {n}>")


def hypervisor_memory(n: int) -> int:
    return DOM0_MEMORY_MB + 64 + n * DOMU_MEMORY_MB


@contextlib.asynccontextmanager
async def running_lab(spec: LabSpec, log_level: str = "WARNING", progress=None, timeout: float = 120.0,
                      keep: Path | None = None):
    """A lab up for the body, always taken down; its rundir removed unless
    ``keep`` names where to copy the logs."""
    rundir = Path(tempfile.mkdtemp(prefix="xl-bench-", dir="/tmp"))
    lab = Lab(spec, rundir, log_level=log_level, progress=progress or (lambda s: None))
    try:
        await lab.up(timeout=timeout)
        yield lab
    finally:
        await _down(lab)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(rundir / "logs", keep / rundir.name, dirs_exist_ok=True)
        shutil.rmtree(rundir, ignore_errors=True)


async def _down(lab: Lab) -> None:
    """``Lab.down``, bounded: a hypervisor that no longer answers must not
    keep the bench waiting; its services (our children) are killed then."""
    try:
        await eventloop.wait_for(lab.down(), DOWN_TIMEOUT)
    except asyncio.TimeoutError:
        for service in lab.services:
            if service.proc.returncode is None:
                service.proc.kill()
                await service.proc.wait()
        lab.services.clear()


# -- processes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessInfo:
    name: str
    pid: int


async def lab_processes(lab: Lab) -> list[ProcessInfo]:
    """The lab's services (hypervisor, bridge, dom0) and every domain process."""
    out = [ProcessInfo(s.name, s.proc.pid) for s in lab.services]
    for dom in (await lab.hv.domains.List(common_pb2.Empty())).domains:
        if dom.domid != 0 and dom.pid:
            out.append(ProcessInfo(dom.name, dom.pid))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (anonymous, file, shared memory) from
    /proc/PID/status, and PSS from smaps_rollup: RSS counts the shared
    libraries and the domain's shared-memory pages in full in every process
    that maps them; PSS divides them among those processes."""
    out: dict[str, int] = {}
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                out[keys[key]] = int(value.split()[0])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def schedstat(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread's nanoseconds on a CPU and runnable waiting for one
    (/proc/PID/task/TID/schedstat), by thread id; {} for a process gone."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            run, wait, _slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            out[int(tid)] = (int(run), int(wait))
        except (OSError, ValueError):
            continue
    return out


class SchedMeter:
    """Each process's CPU time, and its time waiting for a CPU, between
    start() and stop() (/proc schedstat: nanoseconds, where /proc/PID/stat
    counts clock ticks)."""

    def __init__(self, processes: list[ProcessInfo]):
        self.processes = processes
        self._start: dict[str, dict[int, tuple[int, int]]] = {}
        self.used: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        self._start = {p.name: schedstat(p.pid) for p in self.processes}

    def stop(self, units: int) -> dict[str, dict[str, float]]:
        """Per unit of work (stats.per_unit); ``percent`` then gives
        the same time as a share of one core."""
        self.used = time_used(self._start, {p.name: schedstat(p.pid) for p in self.processes})
        return per_unit(self.used, units)

    def percent(self, seconds: float) -> dict[str, float]:
        """What stop() measured, as % of one core over ``seconds`` (the
        busy part of the interval, when an idle tail is known)."""
        return cpu_percent(self.used, seconds)
