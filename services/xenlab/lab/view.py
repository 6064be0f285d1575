"""What `xenlab status` shows of a running lab beyond its processes: every
bridge with its ports and counters, and where each service and guest agent
listens (`xenlab status --json`), as the toolstack (Domain-0) sees them.

``gather`` asks the hypervisor and the bridges; ``bridges_text`` and the
JSON document are plain functions of what it returns.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from xenlab import eventloop
from xenlab.bridge.client import BridgeClient, registered_bridges
from xenlab.client import HypervisorClient
from xenlab.lab import shaping
from xenlab.proto import bridge_pb2, common_pb2, xenstore_pb2
from xenlab.rundir import Rundir
from xenlab.xen.errors import XenError
from xenlab.xen.xenstore_paths import agent_record_path

TIMEOUT = 10.0      # seconds for each question to a service of the lab


@dataclass
class LabView:
    hypervisor: str
    xenstored: str
    domains: list[dict] = field(default_factory=list)
    bridges: list[dict] = field(default_factory=list)
    # Device (vifD.N, vethD.N, BRIDGE:PORT) -> its netem's options (xenlab tc).
    qdiscs: dict[str, str] = field(default_factory=dict)


async def _read(hv: HypervisorClient, path: str) -> str:
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=path), timeout=TIMEOUT)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return ""
        raise
    return reply.value.decode(errors="replace")


async def _domain(hv: HypervisorClient, info) -> dict:
    record = agent_record_path(info.domid)
    agent = {"address": await _read(hv, f"{record}/address"),
             "token": await _read(hv, f"{record}/token")}
    vifs = await hv.domains.NetworkList(common_pb2.DomainRef(domid=info.domid), timeout=TIMEOUT)
    return {"domid": info.domid, "name": info.name, "state": info.state, "pid": info.pid,
            "memory_kb": info.memory_kb, "launcher": info.launcher,
            "agent": agent if agent["address"] else None,
            "vifs": [{"devid": v.devid, "vifname": v.vifname, "mac": v.mac, "bridge": v.bridge,
                      "ip": v.ip, "backend_id": v.backend_id,
                      "state": v.state, "backend_state": v.backend_state} for v in vifs.vifs]}


def _bridge(info, counters, address: str) -> dict:
    stats = {p.name: p for p in counters.ports} if counters is not None else {}
    ports = []
    for port in info.ports:
        s = stats.get(port.name)
        ports.append({"name": port.name, "port_no": port.port_no, "state": port.state,
                      "carrier": port.carrier, "link": port.link, "mac": port.mac,
                      "rx_packets": s.rx_packets if s else 0, "rx_bytes": s.rx_bytes if s else 0,
                      "tx_packets": s.tx_packets if s else 0, "tx_bytes": s.tx_bytes if s else 0,
                      "drops": dict(s.drops) if s else {}})
    return {"name": info.name, "grpc": address, "stp": info.stp,
            "vlan_filtering": info.vlan_filtering, "fdb_entries": info.fdb_entries,
            "fdb_max": info.fdb_max, "fdb_policy": info.fdb_policy,
            "counters": dict(counters.counters) if counters is not None else {},
            "drops": dict(counters.drops) if counters is not None else {},
            "ports": ports}


async def gather(run: Rundir) -> LabView:
    """The lab in ``run`` as the toolstack sees it now."""
    address = run.read_address()
    view = LabView(hypervisor=address,
                   xenstored=str(run.xenstored_socket) if run.xenstored_socket.exists() else "")
    async with HypervisorClient.connect(address, 0, run.read_dom0_secret()) as hv:
        listed = await hv.domains.List(common_pb2.Empty(), timeout=TIMEOUT)
        view.domains = list(await asyncio.gather(*(_domain(hv, d) for d in listed.domains)))
        view.qdiscs = await _qdiscs(hv)
        addresses = await registered_bridges(hv)
        async with await BridgeClient.connect(hv) as bridges:
            infos = await bridges.show()
            counters = {}
            for name in bridges.names:
                reply = await bridges.stub(name).Stats(bridge_pb2.BridgeStatsRequest(bridge=name),
                                                       timeout=TIMEOUT)
                counters.update({c.name: c for c in reply.bridges})
    view.bridges = [_bridge(info, counters.get(info.name), addresses.get(info.name, ""))
                    for info in infos]
    return view


async def _qdiscs(hv: HypervisorClient) -> dict[str, str]:
    """The lab's netems; none from a service that cannot say (Domain-0's
    agent not up yet, a service of an older xenlab): they are a detail of
    the view, not a reason to show none of it."""
    try:
        reply = await eventloop.wait_for(shaping.qdisc(hv, "show"), TIMEOUT)
    except (grpc.aio.AioRpcError, LookupError, XenError, asyncio.TimeoutError):
        return {}
    return {q.dev: q.options for q in reply.qdiscs if q.options}


def bridges_text(view: LabView) -> str:
    """Every bridge, its ports' state and counters; `xenlab bridge fdb show`
    has the FDB, `xenlab bridge -s link show` the rest."""
    lines = []
    for br in view.bridges:
        fdb = f"fdb {br['fdb_entries']}/{br['fdb_max']} ({br['fdb_policy']})"
        lines.append(f"bridge {br['name']}: {len(br['ports'])} port(s), {fdb}, "
                     f"stp {'on' if br['stp'] else 'off'}, grpc {br['grpc']}")
        header = ("port", "state", "rx_packets", "tx_packets", "drops")
        rows = [header] + [(p["name"], p["state"] if p["carrier"] else "down",
                            str(p["rx_packets"]), str(p["tx_packets"]),
                            ",".join(f"{k}={v}" for k, v in sorted(p["drops"].items())) or "-")
                           for p in br["ports"]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
