"""Inspecting a running lab from the CLI (issue 19 item 7: "No way to see a
running lab's FDB or counters from the CLI; the bridge's gRPC address is
documented nowhere"): `xenlab status` shows every bridge with its ports and
counters, and `xenlab status --json` says where every service and guest
agent listens, which a client of its own can use as it is."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import grpc
import pytest

from xenlab.agent_client import agent_channel
from xenlab.proto import agent_pb2, agent_pb2_grpc, bridge_pb2, bridge_pb2_grpc
from xenlab.testing import short_tempdir

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "seen"

[[domain]]
name = "web"
memory = 16
vif = ["mac=00:16:3e:00:00:01,ip=10.0.0.1/24"]

[[domain]]
name = "db"
memory = 16
vif = ["mac=00:16:3e:00:00:02,ip=10.0.0.2/24"]
"""


def xenlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args], capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def lab():
    where = short_tempdir("xl-st-")
    (where / "lab.toml").write_text(LAB)
    rundir = where / "run"
    up = xenlab("up", "--detach", str(where / "lab.toml"), "--rundir", str(rundir))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        ping = xenlab("ping", "--rundir", str(rundir), "web", "10.0.0.2", "-c", "2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        yield rundir
    finally:
        xenlab("down", "--force", "--timeout", "20", "--rundir", str(rundir))
        shutil.rmtree(where, ignore_errors=True)


def test_status_shows_every_bridge_with_its_ports_and_counters(lab):
    status = xenlab("status", "--rundir", str(lab))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    bridge = next(i for i, line in enumerate(lines) if line.startswith("bridge xenbr0: 2 port(s)"))
    assert lines[bridge + 1].split() == ["port", "state", "rx_packets", "tx_packets", "drops"]
    ports = {line.split()[0]: line.split() for line in lines[bridge + 2:bridge + 4]}
    assert set(ports) == {"vif1.0", "vif2.0"}
    # web's two pings (and the ARP before them) came in on its port and left by db's.
    assert int(ports["vif1.0"][2]) >= 3 and int(ports["vif2.0"][3]) >= 3
    assert all(p[1] == "forwarding" for p in ports.values())
    assert f"xenlab bridge fdb show --rundir {lab}" in status.stdout
    # For Xen's own tools: the line to export (README: Xenstore).
    assert f"\nXENSTORED_PATH={lab}/xenstored/socket\n" in status.stdout


async def test_status_json_says_where_everything_listens_and_a_client_can_use_it(lab):
    status = xenlab("status", "--rundir", str(lab), "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["lab"] == "seen" and doc["state"] == "up"
    assert set(doc["processes"]) >= {"runner", "hypervisor", "bridge", "dom0"}
    assert all(p["running"] for p in doc["processes"].values())
    assert doc["hypervisor"].startswith("unix:") and doc["xenstored"].endswith("xenstored/socket")
    [bridge] = doc["bridges"]
    assert bridge["name"] == "xenbr0" and {p["name"] for p in bridge["ports"]} == {"vif1.0", "vif2.0"}
    domains = {d["name"]: d for d in doc["domains"]}
    assert set(domains) == {"Domain-0", "web", "db"}
    assert [v["vifname"] for v in domains["web"]["vifs"]] == ["vif1.0"]

    # What a third-party client needs is all there: the bridge's gRPC API...
    async with grpc.aio.insecure_channel(bridge["grpc"]) as channel:
        shown = await bridge_pb2_grpc.BridgeStub(channel).ShowBridges(
            bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))
    assert {p.name for p in shown.bridges[0].ports} == {"vif1.0", "vif2.0"}
    # ...and each guest agent, with the token it asks for.
    agent = domains["db"]["agent"]
    async with agent_channel(agent["address"], agent["token"]) as channel:
        reply = await agent_pb2_grpc.GuestAgentStub(channel).Ping(
            agent_pb2.PingRequest(dst="10.0.0.1", count=2, timeout=5))
    assert reply.received == 2
