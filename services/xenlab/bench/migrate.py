"""The migrate section of `xenlab bench` (``--only migrate``): live migration
between the two hosts of a pool on this machine (xenlab.lab.pool: a network
namespace per host, VXLAN between their bridges), as `xl migrate` does it,
back and forth N times in each of four series:

* idle, live: pre-copy rounds while the domU runs, then its suspend and the
  rest;
* idle, stop-and-copy: suspended first, every page once (the baseline
  pre-copy is measured against, in the same run);
* the same two while the domU receives a UDP stream from a domU on host a
  (iperf -u as `xenlab perf` sends it), which dirties its pages as it runs.

For each: the downtime (the suspend to the start on the target, as `xl
migrate` prints it), when its vifs were Connected on the target, the rounds
and the pages sent in each. Needs root (the pool's network namespaces).
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from xenlab.agent_client import agent_for
from xenlab.bench.stats import percentile
from xenlab.lab.pool import Pool
from xenlab.lab.spec import parse_lab
from xenlab.proto import agent_pb2, common_pb2
from xenlab.toolstack.save_client import migrate_domain, vifs_connected

MIGRATIONS = 20
UDP_RATE = 8e6               # bits/s of UDP payload toward the migrating domU
UDP_LENGTH = 1200            # bytes per datagram: under the tunnel's 1450
SETTLE = 0.5                 # seconds between migrations
MOVER_IP, SENDER_IP = "10.0.14.1", "10.0.14.2"
POOL = f"""
[lab]
name = "migbench"

[[host]]
name = "a"

[[host]]
name = "b"

[[domain]]
name = "mover"
host = "a"
memory = 32
vif = ["mac=00:16:3e:0e:00:01,ip={MOVER_IP}/24"]

[[domain]]
name = "sender"
host = "a"
memory = 32
vif = ["mac=00:16:3e:0e:00:02,ip={SENDER_IP}/24"]
"""
SERIES = (("idle", True), ("idle", False), ("udp", True), ("udp", False))


def summary(runs: list[dict]) -> dict:
    """p50/p99 (nearest rank), min and max of the downtime and of the vifs'
    reconnection, and the pages sent in each round, of one series."""
    out: dict = {"migrations": len(runs)}
    for key in ("downtime_s", "vifs_s"):
        values = sorted(r[key] for r in runs if r.get(key) is not None)
        out[key] = ({"p50": percentile(values, 50), "p99": percentile(values, 99),
                     "min": values[0], "max": values[-1]} if values else None)
    rounds = [len(r["round_pages"]) for r in runs]
    out["rounds"] = {"min": min(rounds), "max": max(rounds),
                     "median": statistics.median(rounds)} if rounds else None
    width = max(rounds, default=0)
    out["pages_per_round_median"] = [
        statistics.median(r["round_pages"][i] for r in runs if len(r["round_pages"]) > i)
        for i in range(width)]
    out["vifs_missed"] = sum(1 for r in runs if r.get("vifs_s") is None)
    return out


async def _series(hosts: dict, where: list[str], n: int, live: bool, progress) -> list[dict]:
    """``n`` migrations of mover, each to the other host; ``where[0]`` is
    the host it runs on, kept up to date."""
    runs = []
    for i in range(n):
        src, dst = where[0], "b" if where[0] == "a" else "a"
        moved = await migrate_domain(hosts[src], common_pb2.DomainRef(name="mover"), hosts[dst],
                                     live=live)
        where[0] = dst
        connected = await vifs_connected(hosts[dst], moved.new_domid)
        runs.append({"from": src, "to": dst, "downtime_s": moved.downtime_s,
                     "vifs_s": (moved.downtime_s + connected - moved.started_at
                                if connected is not None else None),
                     "pages": moved.pages, "bytes": moved.size,
                     "round_pages": list(moved.round_pages)})
        r = runs[-1]
        progress(f"  {i + 1}/{n} {src} -> {dst}: downtime {r['downtime_s'] * 1e3:.0f} ms, "
                 f"{len(r['round_pages'])} round(s) {r['round_pages']}")
        await asyncio.sleep(SETTLE)
    return runs


@contextlib.asynccontextmanager
async def _udp_stream(hosts: dict, rate: float, seconds: float):
    """sender (host a) streams UDP to mover for the body."""
    info = await hosts["a"].domains.Info(common_pb2.DomainRef(name="sender"))
    async with await agent_for(hosts["a"], info.domid) as agent:
        call = agent.PerfSend(agent_pb2.PerfSendRequest(dst=MOVER_IP, dport=9, rate=rate,
                                                        length=UDP_LENGTH, duration=seconds,
                                                        interval=5))
        reports: list = []

        async def drain():
            async for report in call:
                reports.append(report)
        task = asyncio.create_task(drain())
        try:
            yield reports
        finally:
            call.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def run(progress, migrations: int = MIGRATIONS, udp_rate: float = UDP_RATE,
              log_level: str = "WARNING") -> dict:
    reason = Pool.unavailable()
    if reason:
        progress(f"migrate skipped: {reason}")
        return {"skipped": reason}
    rundir = Path(tempfile.mkdtemp(prefix="xl-migb-", dir="/tmp"))
    pool = Pool(parse_lab(POOL, "<bench pool>"), rundir, log_level=log_level,
                progress=lambda line: None)
    out: dict = {"migrations": migrations, "udp_rate": udp_rate, "memory_mb": 32, "series": {}}
    try:
        progress("migrate: a pool of two hosts (a, b), mover and sender on a")
        await pool.up(timeout=120)
        hosts = {name: lab.hv for name, lab in pool.labs.items()}     # each host's Domain-0
        where = ["a"]
        for load, live in SERIES:
            name = f"{load}, {'live' if live else 'stop-and-copy'}"
            progress(f"migrate: {migrations} migrations, {name}"
                     + (f", {udp_rate / 1e6:g} Mbit/s of UDP toward it" if load == "udp" else ""))
            started = time.monotonic()
            if load == "udp":
                async with _udp_stream(hosts, udp_rate, 3600.0):
                    await asyncio.sleep(1.0)        # the stream under way
                    runs = await _series(hosts, where, migrations, live, progress)
            else:
                runs = await _series(hosts, where, migrations, live, progress)
            out["series"][name] = {"runs": runs, **summary(runs),
                                   "seconds": time.monotonic() - started}
    finally:
        await pool.down()
        shutil.rmtree(rundir, ignore_errors=True)
    return out


def table(result: dict) -> str:
    if "skipped" in result:
        return f"Live migration: skipped ({result['skipped']})"
    if "error" in result:
        return f"Live migration: stopped ({result['error']})"
    ms = lambda s: f"{s * 1e3:.0f}"       # noqa: E731
    rows = [("series", "n", "downtime p50", "p99", "min-max (ms)", "vifs p50", "rounds",
             "pages per round (median)")]
    for name, s in result["series"].items():
        d, v = s["downtime_s"], s["vifs_s"]
        rows.append((name, str(s["migrations"]), f"{ms(d['p50'])} ms", f"{ms(d['p99'])} ms",
                     f"{ms(d['min'])}-{ms(d['max'])}",
                     f"{ms(v['p50'])} ms" if v else "-",
                     f"{s['rounds']['min']}-{s['rounds']['max']}",
                     ", ".join(f"{p:g}" for p in s["pages_per_round_median"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    title = (f"Live migration between two hosts of a pool ({result['memory_mb']} MiB domU, "
             f"UDP stream {result['udp_rate'] / 1e6:g} Mbit/s)")
    return title + "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                                    for row in rows)
