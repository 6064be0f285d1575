"""Crashes and restarts in a running lab (real processes): a domU, Domain-0's
kernel and the bridge service killed with SIGKILL during traffic."""
import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from xenlab.proto import agent_pb2, bridge_pb2, common_pb2
from xenlab.testing import eventually

pytestmark = pytest.mark.integration

LAB = """
[mqtt]
broker = "none"

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:0f:00:01,ip=10.9.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:0f:00:02,ip=10.9.0.2/24"]

[[domain]]
name = "c"
memory = 32
vif = ["mac=00:16:3e:0f:00:03,ip=10.9.0.3/24"]
"""
CONNECTED, CLOSED = 4, 6


async def port_names(lab) -> set[str]:
    stub = channel = await lab.bridge()
    try:
        shown = await stub.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))
        return {p.name for p in shown.bridges[0].ports}
    finally:
        await channel.close()


async def interfaces(lab, name: str) -> dict[str, agent_pb2.InterfaceStats]:
    agent = await lab.agent(name)
    return {s.name: s for s in (await agent.InterfaceStats(agent_pb2.StatsRequest())).interfaces}


async def maps_are_rings_and_kept_buffers(lab, domid: int) -> bool:
    """Domain-0 maps of ``domid``'s pages are its two ring pages plus the
    buffer pages netback keeps as persistent grants, nothing else."""
    async def check():
        kept = (await interfaces(lab, "Domain-0"))[f"vif{domid}.0"].persistent_grants
        maps = (await lab.hv.grants.Query(common_pb2.DomainRef(domid=domid))).active_maps
        return maps == 2 + kept
    return await eventually(check, f"d{domid}'s pages mapped as rings and persistent grants only",
                            timeout=5)


async def ping(lab, src: str, dst: str, count: int = 5, interval: float = 0.05):
    agent = await lab.agent(src)
    return await agent.Ping(agent_pb2.PingRequest(dst=dst, count=count, interval=interval, timeout=1))


def shm_segments(lab) -> set[str]:
    """The memory segments of this lab's hypervisor (they carry its pid)."""
    pid = lab.lab.service("hypervisor").proc.pid
    return {p.name for p in Path("/dev/shm").glob(f"xenlab-{pid}-*")}


async def test_a_killed_domu_is_cleaned_up_everywhere(lab_factory):
    lab = await lab_factory(LAB)
    c = lab.domid("c")
    vif = f"vif{c}.0"
    info = await lab.hv.domains.Info(common_pb2.DomainRef(domid=c))
    segments = shm_segments(lab)
    assert vif in await port_names(lab)

    os.kill(info.pid, signal.SIGKILL)
    started = time.monotonic()

    async def gone():
        domains = {d.domid for d in (await lab.hv.domains.List(common_pb2.Empty())).domains}
        dom0 = await interfaces(lab, "Domain-0")
        return (c not in domains and vif not in await port_names(lab)
                and vif not in dom0 and f"veth{c}.0" not in dom0)
    await eventually(gone, f"d{c}, its vif and its bridge port to go")
    # The issue asks for 2 s: the figure is printed, not asserted (CI machines vary).
    print(f"d{c} killed: domain, vif and bridge port gone in {time.monotonic() - started:.2f}s")
    assert len(shm_segments(lab)) == len(segments) - 1
    assert await lab.lab._xs_read(f"/local/domain/0/backend/vif/{c}") is None
    stub = channel = await lab.bridge()
    try:
        fdb = await stub.ShowFdb(bridge_pb2.ShowFdbRequest(bridge="xenbr0"))
    finally:
        await channel.close()
    assert "00:16:3e:0f:00:03" not in {e.mac for e in fdb.entries}
    assert (await ping(lab, "a", "10.9.0.2")).received == 5


async def test_a_killed_bridge_service_gets_its_ports_back_and_traffic_resumes(lab_factory):
    lab = await lab_factory(LAB)
    domains = {d.domid: d.pid for d in (await lab.hv.domains.List(common_pb2.Empty())).domains}
    vifs = {f"vif{lab.domid(n)}.0" for n in "abc"}
    assert await port_names(lab) == vifs
    before = await interfaces(lab, "Domain-0")
    old_pid = lab.lab.service("bridge").proc.pid

    traffic = asyncio.create_task(ping(lab, "a", "10.9.0.2", count=60, interval=0.05))
    await asyncio.sleep(0.5)
    await lab.lab.restart_service("bridge", kill=True)
    during = await traffic

    assert lab.lab.service("bridge").proc.pid != old_pid
    assert await port_names(lab) == vifs
    assert (await ping(lab, "a", "10.9.0.2")).received == 5
    assert (await ping(lab, "c", "10.9.0.1")).received == 5
    # The same domains, never recreated.
    assert {d.domid: d.pid for d in (await lab.hv.domains.List(common_pb2.Empty())).domains} == domains
    # Domain-0's veth ends carry their counters across the new links.
    after = await interfaces(lab, "Domain-0")
    a = lab.domid("a")
    assert after[f"veth{a}.0"].tx_packets >= before[f"veth{a}.0"].tx_packets + during.received
    print(f"ping during the restart: {during.received}/{during.transmitted} answered")


async def test_a_killed_dom0_closes_its_frontends_which_reconnect_when_it_returns(lab_factory):
    lab = await lab_factory(LAB)
    a = lab.domid("a")
    eth0_before = (await interfaces(lab, "a"))["eth0"]
    traffic = asyncio.create_task(ping(lab, "a", "10.9.0.2", count=30, interval=0.05))
    await asyncio.sleep(0.3)

    await lab.lab.kill_service("dom0")
    vifs = await lab.lab.vifs()
    assert {(v.state, v.backend_state, v.hotplug_status) for v in vifs} == {(CLOSED, CLOSED, "")}
    # Nobody maps the guests' pages any more: they have ended their grants.
    info = await lab.hv.grants.Query(common_pb2.DomainRef(domid=a))
    assert info.active_maps == 0
    assert "eth0" not in await interfaces(lab, "a")       # withdrawn while Closed
    await traffic

    await lab.lab.restart_service("dom0")
    vifs = await lab.lab.vifs()
    assert {(v.state, v.backend_state, v.hotplug_status) for v in vifs} == \
        {(CONNECTED, CONNECTED, "connected")}
    assert await maps_are_rings_and_kept_buffers(lab, a)
    assert (await ping(lab, "a", "10.9.0.2")).received == 5
    assert (await ping(lab, "b", "10.9.0.3")).received == 5
    eth0 = (await interfaces(lab, "a"))["eth0"]
    assert eth0.state == "connected" and eth0.tx_packets > eth0_before.tx_packets
    # It can be done again: nothing of the first restart is left in the way.
    await lab.lab.restart_service("dom0", kill=True)
    assert (await ping(lab, "c", "10.9.0.1")).received == 5
    assert await maps_are_rings_and_kept_buffers(lab, a)
