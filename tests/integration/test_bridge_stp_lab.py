"""802.1D STP in a running lab: three bridges joined in a triangle ([[link]]),
kernel-STP timers shortened to Linux's minimums, a domU on each. The loop
converges with one port blocking, every domU pings every other with no
loss and no storm, and `xenlab bridge link` shows the blocked port."""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

TIMERS = "hello_time = 1\nforward_delay = 2\nmax_age = 6\nstp = true\n"
LAB = f"""
[lab]
name = "triangle"

[mqtt]
broker = "none"

[[bridge]]
name = "tri1"
priority = 4096
{TIMERS}
[[bridge]]
name = "tri2"
priority = 8192
{TIMERS}
[[bridge]]
name = "tri3"
priority = 12288
{TIMERS}
[[link]]
bridges = ["tri1", "tri2"]

[[link]]
bridges = ["tri2", "tri3"]

[[link]]
bridges = ["tri3", "tri1"]

[[domain]]
name = "d1"
memory = 32
vif = ["mac=00:16:3e:70:00:01,ip=10.70.0.1/24,bridge=tri1"]

[[domain]]
name = "d2"
memory = 32
vif = ["mac=00:16:3e:70:00:02,ip=10.70.0.2/24,bridge=tri2"]

[[domain]]
name = "d3"
memory = 32
vif = ["mac=00:16:3e:70:00:03,ip=10.70.0.3/24,bridge=tri3"]
"""
HOSTS = {"d1": "10.70.0.1", "d2": "10.70.0.2", "d3": "10.70.0.3"}


async def converged(lab) -> list[bridge_pb2.BridgeInfo]:
    """Every bridge's ports once none is listening or learning (2 x
    forward_delay after the last port came up); waits at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        infos = []
        for name in ("tri1", "tri2", "tri3"):
            stub = channel = await lab.bridge(name)
            infos += (await stub.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge=name))).bridges
            await channel.close()
        states = [p.state for info in infos for p in info.ports]
        if len(states) == 9 and not {"listening", "learning"} & set(states):
            return infos
        assert time.monotonic() < deadline, f"no convergence: {states}"
        await asyncio.sleep(0.2)


async def test_a_triangle_of_bridges_converges_and_every_domu_reaches_every_other(lab_factory):
    lab = await lab_factory(LAB)
    infos = await converged(lab)
    blocked = [(info.name, p.name) for info in infos for p in info.ports if p.state == "blocking"]
    assert blocked == [("tri3", "to-tri2")]
    assert {info.root_id for info in infos} == {infos[0].root_id} and infos[0].root_port == 0
    roles = {(info.name, p.name): p.role for info in infos for p in info.ports}
    assert roles[("tri2", "to-tri1")] == "root" and roles[("tri3", "to-tri1")] == "root"
    assert roles[("tri3", "to-tri2")] == "alternate"

    for src, dst in [(a, b) for a in HOSTS for b in HOSTS if a != b]:
        agent = await lab.agent(src)
        reply = await agent.Ping(agent_pb2.PingRequest(dst=HOSTS[dst], count=3, interval=0.05, timeout=5))
        await agent.close()
        assert reply.received == 3, f"{src} -> {dst}: {reply.received}/3"

    for name in ("tri1", "tri2", "tri3"):
        stub = channel = await lab.bridge(name)
        stats = (await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge=name))).bridges[0]
        await channel.close()
        assert stats.drops["storm_control"] == 0, name          # no storm to throttle
        assert stats.counters["rx"] < 2000, name                # a few hundred frames, not a storm

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "bridge", "link", "show",
        env={**os.environ, "XENLAB_RUNDIR": str(lab.rundir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [line for line in lines if "state blocking" in line] == [
        next(line for line in lines if ": to-tri2: " in line and "master tri3" in line)]
