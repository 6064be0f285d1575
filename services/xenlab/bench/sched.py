"""`python -m xenlab.bench.sched`: does `xl sched-credit -c CAP` cap a busy
domain? A domU with two vCPUs spins vCPU 1 (the guest agent's Spin), and
its process's CPU use is read from /proc/PID/stat over a window, with no
cap and then with the cap, alternating, RUNS times. Prints each window and
the min/median/max of each setting; the load average is printed too (a
busy host gives an uncapped domain less than a whole CPU).

Needs the local launcher's CPU cgroup (root, and a cgroup hierarchy with
the cpu controller: xenlab.launchers.cgroup).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from xenlab.agent_client import NoAgentError, agent_for
from xenlab.bench.labs import lab_spec, running_lab
from xenlab.launchers.tasks import parse_stat
from xenlab.proto import agent_pb2, common_pb2, domains_pb2, sched_pb2


def process_cpu(pid: int) -> float:
    """Seconds of CPU the whole process (every thread) has used."""
    return parse_stat(open(f"/proc/{pid}/stat").read())[3]


async def window(pid: int, seconds: float) -> float:
    """CPU use of process ``pid`` over ``seconds``, in percent of one CPU."""
    t0, c0 = time.monotonic(), process_cpu(pid)
    await asyncio.sleep(seconds)
    t1, c1 = time.monotonic(), process_cpu(pid)
    return (c1 - c0) / (t1 - t0) * 100


async def booted(hv, domid: int, timeout: float = 30.0) -> None:
    """Until the domain's guest agent is up (it publishes itself once
    booted); ``hv``: a HypervisorClient acting as Domain-0."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with await agent_for(hv, domid):
                return
        except NoAgentError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def measure(runs: int, cap: int, seconds: float, weight: int = 256,
                  out=sys.stdout) -> dict[str, list[float]]:
    async with running_lab(lab_spec(0, "sched")) as lab:
        hv = lab.hv
        reply = await hv.domains.Create(domains_pb2.CreateDomainRequest(spec=domains_pb2.DomainSpec(
            name="busy", memory_mb=16, vcpus=2, launcher="local")))
        domid, pid = reply.info.domid, reply.info.pid
        await booted(hv, domid)
        figures: dict[str, list[float]] = {"none": [], f"{cap}": []}
        async with await agent_for(hv, domid) as agent:
            await agent.Spin(agent_pb2.SpinRequest(vcpus=[1], seconds=runs * 2 * (seconds + 1) + 5))
            await asyncio.sleep(0.5)
            for run in range(runs):
                for setting in (0, cap):
                    await hv.sched.SchedSet(sched_pb2.SchedSetRequest(
                        domain=common_pb2.DomainRef(domid=domid), set_cap=True, cap=setting,
                        set_weight=True, weight=weight))
                    await asyncio.sleep(0.5)       # one CFS period and more, to settle
                    pct = await window(pid, seconds)
                    key = "none" if setting == 0 else f"{cap}"
                    figures[key].append(pct)
                    print(f"run {run + 1} cap {key:>4}: {pct:6.1f}% of one CPU", file=out, flush=True)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xenlab.bench.sched", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="windows per setting (default 5)")
    parser.add_argument("--cap", type=int, default=25, help="the cap to try, percent of one CPU (default 25)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per window (default 3)")
    parser.add_argument("--weight", type=int, default=256,
                        help="the domain's credit weight in both settings (default 256; a loaded "
                             "host gives a higher weight more of a CPU when uncapped)")
    args = parser.parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; weight {args.weight}")
    figures = asyncio.run(measure(args.runs, args.cap, args.seconds, args.weight))
    for key, values in figures.items():
        print(f"cap {key:>4}: min {min(values):6.1f}  median {statistics.median(values):6.1f}  "
              f"max {max(values):6.1f}  (% of one CPU, {len(values)} windows of {args.seconds:g} s)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
