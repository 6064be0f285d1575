"""`xenlab demo`: the demo lab end to end.

It brings up the built-in lab (hypervisor, bridge xenbr0, Domain-0 with
netback, three domUs), pings every domU from every other one through the
whole path (netfront, ring, netback, veth, bridge and back), prints the ping
matrix, the bridge's FDB and per-port counters, and shuts everything down.
Exit status 0 only when every ping was answered.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import shutil
import sys
import time
from pathlib import Path

import grpc

from xenlab.agent_client import agent_for
from xenlab.lab.runner import Lab, LabError
from xenlab.lab.spec import demo_lab, load_lab
from xenlab.proto import agent_pb2, bridge_pb2
from xenlab.rundir import short_tempdir
from xenlab.xen.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lab", nargs="?", type=Path, help="a lab file instead of the built-in demo lab")
    parser.add_argument("--count", type=int, default=3, help="pings per pair (default 3)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="run the lab in DIR and keep its logs there (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end (stop with Ctrl-C)")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _progress(text: str) -> None:
    print(f"   {text}", flush=True)


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


async def ping_mesh(lab: Lab, count: int) -> tuple[dict, int]:
    """{(src, dst): (received, avg_ms)} for every ordered pair of domUs with an address."""
    hosts = []
    for cfg in lab.spec.domains:
        for vif in cfg.vifs:
            if vif.ip:
                hosts.append((cfg.name, str(ipaddress.IPv4Interface(vif.ip if "/" in vif.ip else vif.ip + "/24").ip)))
                break
    results, lost = {}, 0
    for src, _ in hosts:
        agent = await agent_for(lab.hv, lab.domids[src])
        try:
            for dst, ip in hosts:
                if dst == src:
                    continue
                reply = await agent.Ping(agent_pb2.PingRequest(dst=ip, count=count, interval=0.05, timeout=2))
                avg = sum(reply.rtt) / len(reply.rtt) * 1000 if reply.rtt else None
                results[(src, dst)] = (reply.received, reply.transmitted, avg)
                lost += reply.transmitted - reply.received
        finally:
            await agent.close()
    return results, lost


def format_matrix(lab: Lab, results: dict) -> str:
    names = [d.name for d in lab.spec.domains if any(v.ip for v in d.vifs)]
    rows = [("from \\ to",) + tuple(names)]
    for src in names:
        row = [src]
        for dst in names:
            if src == dst:
                row.append("-")
                continue
            received, sent, avg = results[(src, dst)]
            row.append(f"{avg:.2f} ms" if received == sent else f"{received}/{sent} LOST")
        rows.append(tuple(row))
    return _table(rows)


async def bridge_report(lab: Lab) -> tuple[str, str]:
    fdb_text, rows = "", [("port", "rx pkts", "rx bytes", "tx pkts", "tx bytes", "drops")]
    for bridge in lab.spec.bridges:
        async with await lab.bridge_client(bridge.name) as stub:
            fdb = await stub.ShowFdb(bridge_pb2.ShowFdbRequest(bridge=bridge.name, stats=True))
            fdb_text += fdb.text
            stats = await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge=bridge.name))
        for br in stats.bridges:
            for port in br.ports:
                drops = ", ".join(f"{k}={v}" for k, v in sorted(port.drops.items()) if v) or "0"
                rows.append((f"{br.name}:{port.name}", port.rx_packets, port.rx_bytes,
                             port.tx_packets, port.tx_bytes, drops))
    return fdb_text.rstrip("\n"), _table(rows)


async def demo(args) -> int:
    spec = load_lab(args.lab) if args.lab else demo_lab()
    rundir = args.keep_logs or short_tempdir("xenlab-demo-")
    lab = Lab(spec, rundir, progress=_progress)
    _step(f"xenlab up ({spec.name}: {len(spec.domains)} domUs on {', '.join(b.name for b in spec.bridges)})")
    try:
        await lab.up()
        print(await lab.summary())
        _step(f"ping mesh ({args.count} pings per pair; the first includes ARP)")
        started = time.monotonic()
        results, lost = await ping_mesh(lab, args.count)
        print(format_matrix(lab, results))
        print(f"{sum(r[1] for r in results.values())} pings, {lost} lost, "
              f"{time.monotonic() - started:.1f}s")
        fdb, ports = await bridge_report(lab)
        _step("bridge fdb show")
        print(fdb)
        _step("per-port counters")
        print(ports)
        if args.keep:
            _step(f"the lab stays up (rundir {rundir}); Ctrl-C stops it")
            await asyncio.Event().wait()
    finally:
        _step("xenlab down")
        await lab.down()
        print("   stopped")
        if args.keep_logs is None:
            shutil.rmtree(rundir, ignore_errors=True)
    return 0 if lost == 0 else 1


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(demo(args))
    except (LabError, ConfigError) as err:
        print(f"xenlab demo: {getattr(err, 'message', err)}", file=sys.stderr)
    except grpc.aio.AioRpcError as err:
        print(f"xenlab demo: {err.details()} ({err.code().name})", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
