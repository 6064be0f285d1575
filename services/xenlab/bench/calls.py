"""Python calls per ping, by process: the count that does not move with the
host's speed.

The CPU a ping costs ("Where the time goes") moves 2x from one minute to the
next on a shared VM, which drowns a change of a few per cent; the number of
calls the same work makes does not move with the host (two runs differ by
a few per cent: the lab's timers and an ARP refresh fall in one run's window
and not the other's). This section starts its own lab of two domUs with
``XENLAB_CALL_STATS`` set (xenlab.eventloop: each service and domain runs
its loop under cProfile and writes its counts on SIGUSR1), takes a
snapshot of every process before and after ``pings`` pings d01 -> d02, and
reports each process's calls per ping (cProfile's count of every call, C
functions included, and of the Python functions alone) and its commonest
Python functions. cProfile makes the lab several times slower, so this
lab's times mean nothing: only its counts are reported.
"""
from __future__ import annotations

import asyncio
import os
import pstats
import tempfile
import time
from pathlib import Path

from xenlab import eventloop
from xenlab.bench.labs import ProcessInfo, lab_processes, lab_spec, running_lab
from xenlab.bench.throughput import DomainPair, run_latency, warm_up

# The lab's processes that run xenlab.eventloop.run (the MQTT broker does not:
# SIGUSR1 would end it).
COUNTED = ("hypervisor", "bridge", "dom0")
SNAPSHOT_TIMEOUT = 10.0
TOP = 12


class CallCountError(RuntimeError):
    """A process wrote no snapshot: its figures would be missing."""


def _counted(processes: list[ProcessInfo]) -> list[ProcessInfo]:
    return [p for p in processes if p.name in COUNTED or p.name.startswith("d")]


async def snapshot(processes: list[ProcessInfo], directory: Path, seq: int) -> dict[str, dict]:
    """Each process's counts so far: {name: {function: calls}}."""
    for p in processes:
        os.kill(p.pid, eventloop.CALL_STATS_SIGNAL)
    paths = {p.name: directory / f"{p.pid}-{seq}.prof" for p in processes}
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while not all(path.exists() for path in paths.values()):
        if time.monotonic() > deadline:
            missing = ", ".join(n for n, path in paths.items() if not path.exists())
            raise CallCountError(f"no call counts from {missing} within {SNAPSHOT_TIMEOUT:g} s")
        await asyncio.sleep(0.05)
    return {name: _calls(path) for name, path in paths.items()}


def _calls(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for (file, line, name), (_prim, calls, *_rest) in pstats.Stats(str(path)).stats.items():
        # cProfile's C functions have no file ("~") and a name in angle brackets.
        key = f"{name} ({os.path.basename(file)}:{line})" if file != "~" else name
        out[key] = out.get(key, 0) + calls
    return out


def per_ping(before: dict[str, dict], after: dict[str, dict], pings: int, top: int = TOP) -> dict:
    """Calls per ping by process (dearest first): every call, the calls of
    functions written in Python (cProfile names C functions ``<built-in
    ...>`` and ``<method ...>``), and the commonest of those."""
    processes = {}
    for name, counts in after.items():
        was = before.get(name, {})
        delta = {fn: n - was.get(fn, 0) for fn, n in counts.items() if n > was.get(fn, 0)}
        python = {fn: n for fn, n in delta.items() if not fn.startswith("<")}
        commonest = sorted(python.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        processes[name] = {"calls_per_ping": sum(delta.values()) / pings,
                           "python_calls_per_ping": sum(python.values()) / pings,
                           "top": [{"function": fn, "per_ping": n / pings} for fn, n in commonest]}
    ordered = dict(sorted(processes.items(), key=lambda kv: -kv[1]["python_calls_per_ping"]))
    return {"pings": pings, "processes": ordered,
            "sum_per_ping": sum(p["calls_per_ping"] for p in ordered.values()),
            "python_sum_per_ping": sum(p["python_calls_per_ping"] for p in ordered.values())}


async def calls_per_ping(pings: int, interval: float, log_level: str = "WARNING",
                         keep: Path | None = None, progress=lambda message: None) -> dict:
    """Count the calls each process of a lab of two domUs makes for ``pings``
    pings d01 -> d02, ``interval`` seconds apart."""
    with tempfile.TemporaryDirectory(prefix="xenlab-calls-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o1777)         # the domains run as their own uids
        saved = os.environ.get(eventloop.CALL_STATS_ENV)
        os.environ[eventloop.CALL_STATS_ENV] = tmp
        try:
            progress("calls: starting a lab of two domUs under cProfile")
            async with running_lab(lab_spec(2), log_level=log_level, keep=keep) as lab:
                pair = await DomainPair.open(lab, "d01", "d02")
                try:
                    await warm_up(pair, 2)
                    processes = _counted(await lab_processes(lab))
                    before = await snapshot(processes, directory, 0)
                    progress(f"calls: {pings} pings d01 -> d02, {interval * 1000:g} ms apart")
                    rtt = await run_latency(pair, 2, pings, interval)
                    after = await snapshot(processes, directory, 1)
                finally:
                    await pair.close()
        finally:
            if saved is None:
                os.environ.pop(eventloop.CALL_STATS_ENV, None)
            else:
                os.environ[eventloop.CALL_STATS_ENV] = saved
    out = per_ping(before, after, pings)
    out["received"] = rtt["received"]
    return out

