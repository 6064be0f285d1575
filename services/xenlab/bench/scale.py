"""Scale: N domUs booted to all vifs Connected, their memory, the CPU the
idle lab uses, and a ping mesh sample.

The lab's services (MQTT broker, hypervisor, bridge, dom0) start first and
are not timed; the clock runs from the first ``Domains.Create`` to the
moment every vif is Connected on both ends and hotplugged (what
``xenlab up`` waits for), so the figure is the domUs' own boot: process
start, Python imports, hypercalls, the xenbus handshake with netback.

Idle CPU is utime+stime (/proc/PID/stat) of every process of the lab (the
services, the broker, every domU) over ``idle`` seconds with no traffic,
after ``IDLE_SETTLE`` seconds for the last handshakes' echoes to end and
the guest agents called during the boot to go dormant.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import grpc

from xenlab.agent_client import agent_for
from xenlab.bench.labs import cpu_seconds, ip, lab_processes, lab_spec, memory_kib, running_lab
from xenlab.bench.stats import percentiles
from xenlab.lab.runner import LabError, vif_ready
from xenlab.client import to_domain_spec
from xenlab.events.config import DEFAULT_INTERVAL
from xenlab.hypervisor.page_sharing import BOOST_SCANS, BOOSTING, SETTLED_INTERVAL, STARTED, ksm_counter
from xenlab.proto import agent_pb2, common_pb2, domains_pb2

POLL = 0.25                 # seconds between looks at the vifs while they connect: each look
                            # asks about the domains still booting (work for the hypervisor
                            # being measured)
MESH_CONCURRENCY = 8        # sources pinging at once
MESH_TIMEOUT = 5.0          # per ping (the first one of a pair resolves ARP)
CREATE_TIMEOUT = 60.0       # seconds for one Domains.Create (it starts the process)
# Seconds after the boot before idle CPU is measured: the handshakes'
# echoes end, and a guest agent called during the boot goes dormant
# (xenlab.domain.agent_activation: 5 s after its last call, then a drain).
IDLE_SETTLE = 8.0
SHARING_TIMEOUT = 600.0     # seconds to wait for ksmd to merge the domUs' pages
MESH_PER_SOURCE = 4         # destinations each domU pings in a mesh of more than FULL_MESH_UP_TO
FULL_MESH_UP_TO = 64        # domUs up to which every domU pings every other (issue 15's mesh of 64)
# Between the mesh's two passes: Domain-0 publishes the counters of every vif
# that moved (the first pass's ARP broadcasts reach them all) at the end of
# an interval and once more when they stopped, so the warm pass waits for
# both, and times a lab with no traffic but its own.
MESH_SETTLE = 2 * DEFAULT_INTERVAL + 1.0


def mesh_per_source_for(n: int, per_source: int | None) -> int:
    """The destinations each of ``n`` domUs pings: ``per_source`` when
    given (0: every other domU), else every other domU up to
    FULL_MESH_UP_TO domUs and a sample of MESH_PER_SOURCE above (a full
    mesh of 256 would be 65,280 pings)."""
    if per_source is not None:
        return per_source
    return 0 if n <= FULL_MESH_UP_TO else MESH_PER_SOURCE


def _mib(kib: float) -> float:
    return round(kib / 1024.0, 1)


async def boot(n: int, timeout: float, progress, mesh: bool = False, log_level: str = "WARNING",
               keep=None, idle: float = 0.0, mesh_per_source: int | None = None,
               mesh_settle: float = MESH_SETTLE, page_sharing: str = "auto",
               sharing_timeout: float = SHARING_TIMEOUT, remerge: bool = True) -> dict:
    """``idle``: seconds over which to measure the idle lab's CPU (0: not
    measured); ``mesh_per_source``: destinations per domU in the mesh
    (``mesh_per_source_for``); ``mesh_settle``: seconds between the
    mesh's two passes; ``page_sharing``: the hypervisor's --page-sharing
    (with ksmd running, memory is measured again once it has merged, at
    most ``sharing_timeout`` seconds after the boot; after the mesh, and with
    ``remerge`` once merged again: up to a minute for the hypervisor to see
    the copies)."""
    spec = dataclasses.replace(lab_spec(n), page_sharing=page_sharing)
    services_only = dataclasses.replace(spec, domains=())
    async with running_lab(services_only, log_level=log_level, timeout=timeout, keep=keep) as lab:
        started = time.monotonic()
        for cfg in spec.domains:
            try:
                reply = await lab.hv.domains.Create(
                    domains_pb2.CreateDomainRequest(spec=to_domain_spec(cfg)), timeout=CREATE_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                raise LabError(f"creating {cfg.name} ({len(lab.domids)} created): "
                               f"{err.code().name}: {err.details()}") from None
            lab.domids[cfg.name] = reply.info.domid
        created = time.monotonic() - started
        half = await _wait_connected(lab, n, started, timeout, progress)
        seconds = time.monotonic() - started
        result = {"n": n, "seconds": seconds, "create_seconds": created, "half_connected_seconds": half,
                  "memory": await _memory(lab)}
        progress(f"  {n} domUs: all vifs Connected in {seconds:.1f}s "
                 f"(RSS per domU {result['memory']['domu']['rss_mib_mean']} MiB mean, "
                 f"PSS {result['memory']['domu'].get('pss_mib_mean')})")
        if page_sharing != "off":
            result["shared"] = await shared_memory(lab, progress, sharing_timeout)
        if idle > 0:
            result["idle"] = await idle_cpu(lab, idle, progress)
        if mesh:
            result["mesh"] = await ping_mesh(lab, progress, mesh_per_source_for(n, mesh_per_source),
                                             mesh_settle)
            shared = result.get("shared") or {}
            if shared.get("memory"):
                # Traffic writes merged pages again (each write copies one):
                # what sharing still saves after the mesh's pings.
                shared["after_mesh"] = await _memory(lab)
                progress(f"  after the mesh: PSS per domU "
                         f"{shared['after_mesh']['domu'].get('pss_mib_mean')} MiB mean")
                if remerge:
                    # The hypervisor sees the merged pages go (a look a
                    # minute) and scans fast again.
                    shared["remerged"] = await shared_memory(
                        lab, progress, sharing_timeout, boost_within=SETTLED_INTERVAL + 10.0)
        return result


def ksmd_pid() -> int | None:
    """The kernel's samepage-merging thread, whose CPU the lab's sharing costs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "ksmd":
                    return int(entry.name)
            except OSError:
                continue
    return None


async def shared_memory(lab, progress, timeout: float, boost_within: float = 0.0) -> dict:
    """Memory again once ksmd has merged the domUs' pages: when the
    hypervisor runs ksmd (--page-sharing on), once it stops scanning fast
    (BOOST_SCANS full scans after the last domain started); when ksmd is
    the host's, after BOOST_SCANS full scans from now; at most ``timeout``.
    ``boost_within``: first wait that long for the hypervisor to scan fast
    again (it looks once a minute whether merged pages were written)."""
    if ksm_counter("run") != 1:
        why = "no KSM in this kernel" if ksm_counter("run") is None else \
            "ksmd is not running (--page-sharing on starts it as root)"
        progress(f"  page sharing not measured: {why}")
        return {"skipped": why}
    start, t0 = ksm_counter("full_scans") or 0, time.monotonic()

    async def state() -> str:
        return (await lab.hv.domains.GetHostInfo(common_pb2.Empty())).page_sharing

    async def merged() -> bool:
        now = await state()
        if STARTED in now:
            return BOOSTING not in now
        return (ksm_counter("full_scans") or 0) >= start + BOOST_SCANS
    if boost_within > 0 and STARTED in await state():
        while BOOSTING not in await state() and time.monotonic() - t0 < boost_within:
            await asyncio.sleep(1.0)
    progress(f"  waiting for ksmd to merge the domUs' pages (at most {timeout:g}s)")
    while not await merged() and time.monotonic() - t0 < timeout:
        await asyncio.sleep(1.0)
    out = {"seconds": round(time.monotonic() - t0, 1), "full_scans": (ksm_counter("full_scans") or 0) - start,
           "pages_sharing": ksm_counter("pages_sharing"), "pages_shared": ksm_counter("pages_shared"),
           "timed_out": not await merged(), "memory": await _memory(lab)}
    progress(f"  merged after {out['seconds']:.0f}s ({out['full_scans']} full scans"
             f"{', timed out' if out['timed_out'] else ''}): PSS per domU "
             f"{out['memory']['domu'].get('pss_mib_mean')} MiB mean; the host shares "
             f"{(out['pages_sharing'] or 0) * 4 // 1024} MiB in {(out['pages_shared'] or 0) * 4 // 1024} MiB")
    return out


async def idle_cpu(lab, seconds: float, progress) -> dict:
    """The CPU the whole lab uses with no traffic, as a share of one core;
    ksmd's apart (a kernel thread, working for the lab when its pages are
    offered, but for any other process that offers its own too)."""
    await asyncio.sleep(IDLE_SETTLE)
    processes = await lab_processes(lab)
    load = os.getloadavg()[0]
    ksmd = ksmd_pid() if ksm_counter("run") == 1 else None
    t0 = time.monotonic()
    before = {p.pid: cpu_seconds(p.pid) for p in processes}
    ksmd_before = cpu_seconds(ksmd) if ksmd else 0.0
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    # CPU seconds, not rounded percentages: an idle domU uses a
    # clock tick (10 ms) or none in 30 s.
    used = {p.name: cpu_seconds(p.pid) - before[p.pid] for p in processes}
    domus = [v for name, v in used.items() if name in lab.domids]

    def percent(cpu: float) -> float:
        return round(100.0 * cpu / wall, 3)

    out = {"seconds": seconds, "total_percent": percent(sum(used.values())),
           "domus_percent": percent(sum(domus)),
           "per_domu_percent_mean": percent(sum(domus) / len(domus)) if domus else None,
           "domus_cpu_seconds": round(sum(domus), 2),
           "services_percent": {name: percent(v) for name, v in used.items() if name not in lab.domids},
           "loadavg_1m": [load, os.getloadavg()[0]]}
    if ksmd:
        out["ksmd_percent"] = percent(cpu_seconds(ksmd) - ksmd_before)
        out["ksmd_pages_to_scan"] = ksm_counter("pages_to_scan")
    total = out["total_percent"]
    progress(f"  idle over {seconds:g}s: the lab uses {total:.1f}% of one CPU "
             f"({out['domus_percent']:.1f}% in the domUs; services {out['services_percent']})"
             + (f"; ksmd {out['ksmd_percent']:.1f}%" if ksmd else ""))
    return out


async def _wait_connected(lab, n: int, started: float, timeout: float, progress) -> float | None:
    """Poll until every vif is Connected; when half of them were."""
    half = None
    last = -1
    settled: dict[int, list] = {}
    while True:
        try:
            vifs = await lab.vifs_until_ready(settled)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise LabError(await _gone(lab)) from None
        failed = [v for v in vifs if v.hotplug_status == "error"]
        if failed:
            raise LabError(f"{failed[0].vifname}: hotplug failed")
        ready = sum(1 for v in vifs if vif_ready(v))
        if half is None and ready * 2 >= n:
            half = time.monotonic() - started
        if ready != last and ready:
            progress(f"  {ready}/{n} connected at {time.monotonic() - started:.1f}s")
            last = ready
        if ready >= n and len(vifs) >= n:
            return half
        if time.monotonic() - started > timeout:
            raise LabError(f"only {ready} of {n} vifs Connected after {timeout:g}s")
        await asyncio.sleep(POLL)


async def _gone(lab) -> str:
    """Which domU went away while booting, and the end of its console."""
    alive = {d.domid for d in (await lab.hv.domains.List(common_pb2.Empty())).domains}
    gone = [(name, domid) for name, domid in lab.domids.items() if domid not in alive]
    if not gone:
        return "a domain went away while booting"
    name, domid = gone[0]
    tail = ""
    for console in lab.run.logs.glob(f"d{domid}-*.console"):
        tail = "\n".join(console.read_text(errors="replace").splitlines()[-8:])
    return f"{len(gone)} domU(s) went away while booting, first {name} (d{domid}); its console ends:\n{tail}"


async def _memory(lab) -> dict:
    processes = await lab_processes(lab)
    per = {p.name: memory_kib(p.pid) for p in processes}
    domus = [m for name, m in per.items() if name in lab.domids]
    # CPU time each domU process used to boot: what N of them cost the cores.
    cpu = [cpu_seconds(p.pid) for p in processes if p.name in lab.domids]

    def summary(values: list[dict]) -> dict:
        out = {}
        for key in ("rss", "pss", "anon", "file", "shmem"):
            xs = [v[key] for v in values if key in v]
            if xs:
                out[f"{key}_mib_mean"] = _mib(sum(xs) / len(xs))
                out[f"{key}_mib_max"] = _mib(max(xs))
        return out

    services = {name: {k: _mib(v) for k, v in m.items()} for name, m in per.items()
                if name not in lab.domids}
    return {"domu": {"count": len(domus), **summary(domus),
                     "cpu_seconds_mean": round(sum(cpu) / len(cpu), 2) if cpu else None},
            "services_mib": services}


def mesh_pairs(n: int, per_source: int) -> list[list[int]]:
    """For domUs 0..n-1, the ones each pings: every other one when
    ``per_source`` is 0 or reaches n-1, else ``per_source`` of them spread
    evenly around the ring (i+1, i+1+n/k, ...), so that every domU is pinged
    as often as it pings and the sample crosses the whole lab."""
    if n < 2:
        return [[] for _ in range(n)]
    if per_source <= 0 or per_source >= n - 1:
        return [[j for j in range(n) if j != i] for i in range(n)]
    offsets = sorted({1 + (k * (n - 1)) // per_source for k in range(per_source)})
    return [[(i + off) % n for off in offsets] for i in range(n)]


async def ping_mesh(lab, progress, per_source: int = 0, settle: float = MESH_SETTLE) -> dict:
    """Three passes over the ``mesh_pairs``, each domU pinging each of its
    destinations once a pass, each source through its destinations in turn:

    * first, MESH_CONCURRENCY sources at a time: each pair's first ping
      resolves ARP, a broadcast every domU on the bridge receives (the
      top-level percentiles);
    * ``settle`` seconds later (MESH_SETTLE: once the counters' messages
      the first pass set off are out), warm and one ping at a time, as the
      two-domain latency run pings: the RTT of a lab of N with nothing
      else going on, which the target compares with that run (``warm``);
    * then warm again, MESH_CONCURRENCY sources at a time: the same pings
      queueing for the one Domain-0 and the one bridge (``warm_concurrent``).

    Sources go in waves; a wave's guest agents are each called once before
    its pings, so that a dormant agent starting its gRPC server
    (xenlab.domain.agent_activation) does not run beside the pings being
    timed: the agent is the bench's way in, not part of a ping's path."""
    names = sorted(lab.domids)
    index = {name: int(name[1:]) for name in names}
    targets = {name: [names[j] for j in js] for name, js in zip(names, mesh_pairs(len(names), per_source))}
    pairs = sum(len(v) for v in targets.values())
    failures: list[str] = []
    agents = {name: await agent_for(lab.hv, lab.domids[name]) for name in names if targets[name]}
    sources = list(agents)

    async def pings(name: str, into: list[float]) -> None:
        for other in targets[name]:
            reply = await agents[name].Ping(agent_pb2.PingRequest(dst=ip(index[other]), count=1,
                                                                  timeout=MESH_TIMEOUT))
            if reply.received:
                into.extend(reply.rtt)
            else:
                failures.append(f"{name}->{other}: {reply.error or 'no reply'}")

    async def one_pass(concurrency: int) -> tuple[list[float], float]:
        rtts: list[float] = []
        timed = 0.0
        for at in range(0, len(sources), concurrency):
            wave = sources[at:at + concurrency]
            await asyncio.gather(*(agents[name].InterfaceStats(agent_pb2.StatsRequest()) for name in wave))
            started = time.monotonic()
            await asyncio.gather(*(pings(name, rtts) for name in wave))
            timed += time.monotonic() - started
        return rtts, timed

    def summary(rtts: list[float], seconds: float, concurrency: int) -> dict:
        return {"replied": len(rtts), "seconds": seconds, "concurrency": concurrency, **percentiles(rtts)}

    try:
        rtts, seconds = await one_pass(MESH_CONCURRENCY)
        progress(f"  ping mesh of {len(names)}: {len(rtts)}/{pairs} replied in {seconds:.1f}s (ARP included)")
        await asyncio.sleep(settle)
        warm = summary(*await one_pass(1), 1)
        progress(f"  ping mesh of {len(names)} again, warm, one ping at a time: "
                 f"{warm['replied']}/{pairs} replied in {warm['seconds']:.1f}s")
        busy = summary(*await one_pass(MESH_CONCURRENCY), MESH_CONCURRENCY)
        progress(f"  and warm, {MESH_CONCURRENCY} sources at a time: {busy['replied']}/{pairs} replied "
                 f"in {busy['seconds']:.1f}s")
    finally:
        for agent in agents.values():
            await agent.close()
    return {"n": len(names), "pairs": pairs, "sampled": pairs < len(names) * (len(names) - 1),
            "replied": len(rtts), "seconds": seconds, "concurrency": MESH_CONCURRENCY,
            "failures": failures[:10], **percentiles(rtts), "warm": warm, "warm_concurrent": busy}
