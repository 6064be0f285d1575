"""200 create/destroy cycles of a domain with a vif in a running lab: nothing
leaks in the hypervisor, Domain-0 or the bridge service."""
import asyncio
import os
import time
from pathlib import Path

import pytest

from xenlab.proto import agent_pb2, bridge_pb2, common_pb2, domains_pb2, evtchn_pb2, xenstore_pb2
from xenlab.client import to_domain_spec
from xenlab.toolstack.xlcfg import parse_xl_config

pytestmark = pytest.mark.integration

CYCLES = 200
PARALLEL = 2            # domains cycling side by side (each its own name, MAC and IP)
LAB = """
[mqtt]
broker = "none"

[[domain]]
name = "anchor"
memory = 32
vif = ["mac=00:16:3e:0e:00:01,ip=10.8.0.1/24"]
"""


def cycle_spec(n: int):
    return to_domain_spec(parse_xl_config(
        f'name = "cycle{n}"\nmemory = 16\nvif = ["mac=00:16:3e:0e:01:{n:02x},ip=10.8.0.{n + 2}/24"]\n'
        # The guest's own address (Linux's ip=); the vif's ip= is Domain-0's.
        f'extra = "ip=10.8.0.{n + 2}:::255.255.255.0::eth0:off"\n'))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def shm_mappings(pid: int) -> int:
    """Pages of the domains' shared memory the process has mapped (netback's
    ring pages and persistent grants, its own memory): counted in pages, not
    mappings, since the kernel may merge adjacent ones."""
    pages = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "/dev/shm/xenlab-" in line:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            pages += (end - start) // 4096
    return pages


def children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def xenstore_nodes(hv, path: str = "/") -> int:
    names = (await hv.xenstore.Directory(xenstore_pb2.PathRequest(path=path))).names
    base = path.rstrip("/")
    counts = await asyncio.gather(*(xenstore_nodes(hv, f"{base}/{n}") for n in names))
    return 1 + sum(counts)


async def open_ports(hv, domid: int, upto: int = 256) -> int:
    count = 0
    for port in range(1, upto):
        status = await hv.evtchn.Status(evtchn_pb2.StatusRequest(dom=domid, port=port))
        count += status.state != evtchn_pb2.ChannelStatus.CLOSED
    return count


async def snapshot(lab) -> dict:
    services = {s.name: s.proc.pid for s in lab.lab.services}
    stub = channel = await lab.bridge()
    try:
        shown = await stub.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))
    finally:
        await channel.close()
    dom0 = await lab.hv.grants.Query(common_pb2.DomainRef(domid=0))
    # The live vifs' persistent grants (the anchor's buffer pages, mapped as
    # traffic first uses them) are not leaks; every other mapping would be.
    agent = await lab.agent("Domain-0")
    try:
        vifs = (await agent.InterfaceStats(agent_pb2.StatsRequest())).interfaces
    finally:
        await agent.close()
    kept = sum(v.persistent_grants for v in vifs)
    return {
        "fds": {name: fds(pid) for name, pid in services.items()},
        "shm": sorted(p.name for p in Path("/dev/shm").glob(f"xenlab-{services['hypervisor']}-*")),
        "dom0 shm mappings": shm_mappings(services["dom0"]) - kept,
        "hypervisor children": len(children(services["hypervisor"])),
        "xenstore nodes": await xenstore_nodes(lab.hv),
        "bridge ports": sorted(p.name for p in shown.bridges[0].ports),
        "fdb entries": shown.bridges[0].fdb_entries,
        "dom0 maptrack": dom0.maptrack - kept,
        "dom0 ports": await open_ports(lab.hv, 0),
        "domains": len((await lab.hv.domains.List(common_pb2.Empty())).domains),
    }


async def cycle(lab, spec, ping: str = "") -> None:
    reply = await lab.hv.domains.Create(domains_pb2.CreateDomainRequest(spec=spec))
    domid = reply.info.domid
    ref = common_pb2.DomainRef(domid=domid)
    deadline = time.monotonic() + 30
    while True:
        vifs = (await lab.hv.domains.NetworkList(ref)).vifs
        if vifs and vifs[0].state == vifs[0].backend_state == 4 and vifs[0].hotplug_status == "connected":
            break
        assert time.monotonic() < deadline, f"d{domid}'s vif did not connect: {vifs}"
        await asyncio.sleep(0.01)
    if ping:
        agent = await lab.agent("anchor")
        assert (await agent.Ping(agent_pb2.PingRequest(dst=ping, count=2, interval=0.05))).received == 2
    await lab.hv.domains.Destroy(ref)


async def settled(lab, before: dict, timeout: float = 10.0) -> dict:
    """The snapshot once teardown has finished (sockets close asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        now = await snapshot(lab)
        fds_ok = all(now["fds"][k] <= v for k, v in before["fds"].items())
        if fds_ok and {k: v for k, v in now.items() if k != "fds"} == \
                {k: v for k, v in before.items() if k != "fds"}:
            return now
        if time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


async def test_no_leaks_after_200_create_destroy_cycles_with_a_vif(lab_factory):
    lab = await lab_factory(LAB)
    specs = [cycle_spec(n) for n in range(PARALLEL)]
    # Warm up: lazily made things (gRPC's sockets, the agent channel) exist after one.
    await cycle(lab, specs[0], ping="10.8.0.2")
    before = await settled(lab, await snapshot(lab), timeout=2)
    rss = {s.name: rss_kb(s.proc.pid) for s in lab.lab.services}
    started = time.monotonic()


    async def worker(n: int) -> None:
        rounds = CYCLES // PARALLEL
        for i in range(rounds):
            await cycle(lab, specs[n], ping=f"10.8.0.{n + 2}" if i == rounds - 1 else "")
    await asyncio.gather(*(worker(n) for n in range(PARALLEL)))
    elapsed = time.monotonic() - started
    after = await settled(lab, before)
    growth = {s.name: rss_kb(s.proc.pid) - rss[s.name] for s in lab.lab.services}
    print(f"{CYCLES} cycles in {elapsed:.1f}s ({elapsed / CYCLES * 1000:.0f} ms each); "
          f"RSS growth KiB: {growth}")
    assert {k: v for k, v in after.items() if k != "fds"} == \
        {k: v for k, v in before.items() if k != "fds"}
    for name, count in before["fds"].items():
        assert after["fds"][name] <= count, (name, before["fds"], after["fds"])
