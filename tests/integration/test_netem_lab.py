"""`xenlab tc` in a running lab: a netem on a vif in Domain-0 (and on its
veth end, and on a bridge port) delays, drops and duplicates the frames
that cross it, every one of them counted, and the lab's books balance."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from xenlab.lab import conservation
from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "netem"
[mqtt]
broker = "none"
[[domain]]
name = "web"
memory = 32
vif = ["ip=10.0.0.2/24"]
[[domain]]
name = "db"
memory = 32
vif = ["ip=10.0.0.3/24"]
"""


def xenlab(lab, *argv):
    env = {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *argv], env=env,
                          capture_output=True, text=True, timeout=60)


async def tc(lab, *argv):
    return await asyncio.to_thread(xenlab, lab, "tc", *argv)


async def ping(lab, src: str, dst: str, count: int, interval: float = 0.02, timeout: float = 2.0):
    async with await lab.agent(src) as agent:
        return await agent.Ping(agent_pb2.PingRequest(dst=dst, count=count, timeout=timeout,
                                                      interval=interval))


async def dom0_stats(lab, name: str):
    async with await lab.agent("Domain-0") as agent:
        reply = await agent.InterfaceStats(agent_pb2.StatsRequest(interface=name))
    return reply.interfaces[0]


async def books(lab):
    async with await lab.agent("Domain-0") as agent:
        dom0 = (await agent.InterfaceStats(agent_pb2.StatsRequest(gone=True))).interfaces
    guests = {}
    for name in ("web", "db"):
        async with await lab.agent(name) as agent:
            guests[lab.domid(name)] = (await agent.InterfaceStats(
                agent_pb2.StatsRequest(gone=True))).interfaces
    async with await lab.bridge() as stub:
        [bridge] = (await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))).bridges
    paths, totals = conservation.lab_paths(dom0, bridge, guests)
    return conservation.check(paths, [totals]), paths


async def test_netem_on_a_vif_delays_and_drops_frames_and_counts_them(lab_factory):
    lab = await lab_factory(LAB)
    db = f"vif{lab.domid('db')}.0"
    assert (await ping(lab, "web", "10.0.0.3", 3)).received == 3        # ARP resolved

    run = await tc(lab, "qdisc", "add", "dev", db, "root", "netem", "delay", "200ms")
    assert run.returncode == 0, run.stderr
    run = await tc(lab, "qdisc", "show", "dev", db)
    assert run.stdout == "qdisc netem 8001: root refcnt 2 limit 1000 delay 200ms\n" or \
        run.stdout.startswith("qdisc netem ") and run.stdout.endswith(
            ": root refcnt 2 limit 1000 delay 200ms\n"), run.stdout
    # Toward db the echo requests wait 200 ms at db's vif: every RTT is at least that.
    reply = await ping(lab, "web", "10.0.0.3", 3)
    assert reply.received == 3
    assert min(reply.rtt) >= 0.200

    run = await tc(lab, "qdisc", "change", "dev", db, "root", "netem", "loss", "50%", "seed", "1")
    assert run.returncode == 0, run.stderr
    before = dict((await dom0_stats(lab, db)).drops).get("netem_loss", 0)
    reply = await ping(lab, "web", "10.0.0.3", 40, timeout=0.5)
    lost = dict((await dom0_stats(lab, db)).drops)["netem_loss"] - before
    assert 0 < lost < 40 and reply.received == 40 - lost

    # Both directions: a duplicate on web's veth end (frames web sends).
    web_veth = f"veth{lab.domid('web')}.0"
    run = await tc(lab, "qdisc", "add", "dev", web_veth, "root", "netem", "duplicate", "100%")
    assert run.returncode == 0, run.stderr
    await ping(lab, "web", "10.0.0.3", 5, timeout=0.5)
    assert dict((await dom0_stats(lab, web_veth)).qdisc)["duplicated"] >= 5

    # corrupt: one bit of each frame to db flipped; db's checksums catch them.
    async with await lab.agent("db") as agent:
        before = (await agent.InterfaceStats(agent_pb2.StatsRequest(interface="eth0"))).interfaces[0]
    run = await tc(lab, "qdisc", "change", "dev", db, "root", "netem", "corrupt", "100%", "seed", "3")
    assert run.returncode == 0, run.stderr
    reply = await ping(lab, "web", "10.0.0.3", 20, timeout=0.5)
    assert reply.received < 20
    async with await lab.agent("db") as agent:
        after = (await agent.InterfaceStats(agent_pb2.StatsRequest(interface="eth0"))).interfaces[0]
    caught = sum(after.drops.get(k, 0) - before.drops.get(k, 0)
                 for k in ("stack_bad_ip_checksum", "stack_bad_icmp_checksum"))
    assert caught > 0
    assert dict((await dom0_stats(lab, db)).qdisc)["corrupted"] >= 20

    run = await tc(lab, "-s", "qdisc", "show")
    assert run.returncode == 0, run.stderr
    assert f"dev {db} root" in run.stdout and f"dev {web_veth} root" in run.stdout
    assert "Sent " in run.stdout

    for dev in (db, web_veth):
        assert (await tc(lab, "qdisc", "del", "dev", dev, "root")).returncode == 0
    await asyncio.sleep(0.5)            # anything in flight arrives
    hops, paths = await books(lab)
    bad = [h for h in hops if not h.ok]
    assert not bad, conservation.format_report(hops, paths)
    assert any(h.drops.get("netem_loss") for h in hops)
    assert any(h.added for h in hops)


async def test_netem_on_a_bridge_port_and_tcs_errors(lab_factory):
    lab = await lab_factory(LAB)
    db = f"vif{lab.domid('db')}.0"
    run = await tc(lab, "qdisc", "add", "dev", f"xenbr0:{db}", "root", "netem", "delay", "150ms")
    assert run.returncode == 0, run.stderr
    reply = await ping(lab, "web", "10.0.0.3", 2)
    assert reply.received == 2 and min(reply.rtt) >= 0.150

    run = await tc(lab, "qdisc", "add", "dev", f"xenbr0:{db}", "root", "netem", "delay", "1ms")
    assert run.returncode == 2 and "already has a root qdisc" in run.stderr
    run = await tc(lab, "qdisc", "del", "dev", db, "root")
    assert run.returncode == 2 and "has no root qdisc" in run.stderr
    run = await tc(lab, "qdisc", "add", "dev", "vif99.0", "root", "netem", "delay", "1ms")
    assert run.returncode == 2 and "vif99.0" in run.stderr
    run = await tc(lab, "qdisc", "add", "dev", db, "root", "netem", "loss", "state", "1")
    assert run.returncode == 1 and run.stderr == "xenlab tc: loss state (a Markov loss model) is not supported\n"


LAB_FILE_NETEM = """
[lab]
name = "netem-file"
[mqtt]
broker = "none"
[[bridge]]
name = "xenbr0"
[[bridge]]
name = "xenbr1"
[[link]]
bridges = ["xenbr0", "xenbr1"]
netem = "delay 1ms limit 500"
[[domain]]
name = "web"
memory = 32
vif = ["ip=10.0.0.2/24"]
[[domain]]
name = "db"
memory = 32
vif = ["ip=10.0.0.3/24"]
netem = "delay 150ms"
netem_tx = "duplicate 100%"
"""


async def test_the_lab_files_netems_are_set_at_start(lab_factory):
    lab = await lab_factory(LAB_FILE_NETEM)
    d = lab.domid("db")
    run = await tc(lab, "qdisc", "show")
    assert run.returncode == 0, run.stderr
    lines = sorted(line.split(" ", 3)[3] for line in run.stdout.splitlines())
    assert lines == sorted([
        f"dev vif{d}.0 root refcnt 2 limit 1000 delay 150ms",
        f"dev veth{d}.0 root refcnt 2 limit 1000 duplicate 100%",
        "dev xenbr0:to-xenbr1 root refcnt 2 limit 500 delay 1ms",
        "dev xenbr1:to-xenbr0 root refcnt 2 limit 500 delay 1ms",
    ]), run.stdout
    reply = await ping(lab, "web", "10.0.0.3", 2)
    assert reply.received == 2 and min(reply.rtt) >= 0.150
    graph = await asyncio.to_thread(xenlab, lab, "graph", "--format", "mermaid")
    assert graph.returncode == 0, graph.stderr
    assert "netem to db: limit 1000 delay 150ms" in graph.stdout
    assert "netem from db: limit 1000 duplicate 100%" in graph.stdout
    assert "netem out of xenbr0: limit 500 delay 1ms; netem out of xenbr1: limit 500 delay 1ms" \
        in graph.stdout


async def test_netems_outlive_a_bridge_restart(lab_factory):
    """The veth end netback re-attaches takes its qdisc on; the bridge
    ports' netems, which died with the bridge service, are set again from
    the lab file; one added by hand on a port is gone, as with a reboot."""
    lab = await lab_factory(LAB_FILE_NETEM)
    d, web = lab.domid("db"), lab.domid("web")
    for dev in (f"xenbr0:vif{web}.0", f"veth{web}.0"):
        run = await tc(lab, "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms")
        assert run.returncode == 0, run.stderr
    await lab.lab.restart_service("bridge", kill=True)
    run = await tc(lab, "qdisc", "show")
    assert run.returncode == 0, run.stderr
    devs = sorted(line.split()[4] for line in run.stdout.splitlines())
    assert devs == sorted([f"vif{d}.0", f"veth{d}.0", f"veth{web}.0", "xenbr0:to-xenbr1",
                           "xenbr1:to-xenbr0"])
    reply = await ping(lab, "web", "10.0.0.3", 2)
    assert reply.received == 2 and min(reply.rtt) >= 0.150


def test_the_netem_bench_writes_its_figures_and_accounts_for_its_frames(tmp_path):
    """`python -m xenlab.bench --only netem` end to end; no timing is
    asserted (the bench prints them): what was sent, lost and counted."""
    out = tmp_path / "netem.json"
    run = subprocess.run([sys.executable, "-m", "xenlab.bench", "--only", "netem", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "delay 20ms on the vif (ping RTT, median of 50)" in run.stdout
    result = json.loads(out.read_text())["netem"]
    loss = result["loss"]
    # Under load netback may also drop a few for want of rx buffers: those
    # are its own drops, not netem's.
    assert 0 < loss["baseline"]["received"] <= loss["baseline"]["sent"] == 10_000
    assert 0 < loss["netem_counted"]["loss"] <= loss["netem"]["sent"] - loss["netem"]["received"]
    rate = result["rate"]
    assert 0 < rate["netem"]["received"] <= rate["netem"]["sent"] == 1500
    assert rate["netem"]["bits_per_second"] > 0 and rate["baseline"]["bits_per_second"] > 0
    assert len(result["delay"]["rtts"]["both"]) == 50
