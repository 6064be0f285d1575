"""A routed lab: two subnets on two bridges, and a router domain with a vif
on each that forwards between them (sysctl.net.ipv4.ip_forward=1 on its
command line). web and db take their default gateway from their own
kernel command line (Linux's ip=). Pings cross the router end to end; the
TTL drops by one at the router; a TTL of 1 earns ICMP time exceeded and a
destination with no route ICMP net unreachable, all checked in what the
bridges sent, as tshark decodes it."""
from __future__ import annotations

import asyncio
import io
import shutil
import os
import subprocess
import sys

import pytest

from markdown_examples import ROOT, block_after, xenlab_commands
from xenlab.net.capture import PcapWriter, read_pcap
from xenlab.net.ethernet import ETH_P_IP, EthernetFrame
from xenlab.net.ipv4 import Ipv4Header
from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

# README's routed lab, as written there, without a broker.
LAB = block_after(ROOT / "README.md", "### Routed labs").text + '\n[mqtt]\nbroker = "none"\n'


class PortCapture:
    """What a bridge sends out of one port, as a pcap."""

    def __init__(self, stub, bridge: str, port: str):
        self.out = io.BytesIO()
        self.writer = PcapWriter(self.out)
        self.call = stub.Capture(bridge_pb2.BridgeCaptureRequest(bridge=bridge, port=port,
                                                                 direction="tx"))
        self.task = None

    async def start(self) -> None:
        await self.call.wait_for_connection()

        async def read():
            async for frame in self.call:
                self.writer.write(frame.data, frame.timestamp)
        self.task = asyncio.create_task(read())

    async def stop(self) -> bytes:
        await asyncio.sleep(0.3)            # frames in flight
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.out.getvalue()


def tshark_icmp(pcap: bytes, path) -> list[dict[str, list[str]]]:
    """Each ICMP packet as tshark decodes it: outer and (in an error) quoted
    IP fields, in that order."""
    path.write_bytes(pcap)
    fields = ["ip.src", "ip.dst", "ip.ttl", "icmp.type", "icmp.code"]
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "icmp", "-T", "fields",
                          "-E", "occurrence=a", "-E", "aggregator=,",
                          *sum((["-e", f] for f in fields), [])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [dict(zip(fields, (v.split(",") for v in line.split("\t"))))
            for line in out.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
async def test_two_subnets_ping_through_the_router_with_ttl_and_icmp_errors(lab_factory, tmp_path):
    lab = await lab_factory(LAB)
    web_port = f"vif{lab.domid('web')}.0"
    db_port = f"vif{lab.domid('db')}.0"
    br0, br1 = await lab.bridge("xenbr0"), await lab.bridge("xenbr1")
    to_web, to_db = PortCapture(br0, "xenbr0", web_port), PortCapture(br1, "xenbr1", db_port)
    await to_web.start()
    await to_db.start()
    web = await lab.agent("web")

    # End to end, both ways.
    reply = await web.Ping(agent_pb2.PingRequest(dst="10.0.2.2", count=3, interval=0.2, timeout=5))
    assert (reply.transmitted, reply.received, reply.src) == (3, 3, "10.0.1.2"), reply
    db = await lab.agent("db")
    back = await db.Ping(agent_pb2.PingRequest(dst="10.0.1.2", count=1, timeout=5))
    assert back.received == 1, back
    # The router's far address answers from the near side (weak host model).
    far = await web.Ping(agent_pb2.PingRequest(dst="10.0.2.1", count=1, timeout=5))
    assert far.received == 1, far
    # TTL 1: the router says time exceeded, from its address on web's subnet.
    expired = await web.Ping(agent_pb2.PingRequest(dst="10.0.2.2", count=1, ttl=1, timeout=5))
    assert expired.received == 0
    assert [(e.seq, e.src, e.type, e.code) for e in expired.errors] == [(1, "10.0.1.1", 11, 0)]
    # TTL 2 is just enough.
    just = await web.Ping(agent_pb2.PingRequest(dst="10.0.2.2", count=1, ttl=2, timeout=5))
    assert just.received == 1, just
    # No route on the router: net unreachable.
    nowhere = await web.Ping(agent_pb2.PingRequest(dst="192.0.2.7", count=1, timeout=5))
    assert [(e.src, e.type, e.code) for e in nowhere.errors] == [("10.0.1.1", 3, 0)]
    router = await lab.agent("router")
    stats = {i.name: i for i in (await router.InterfaceStats(agent_pb2.StatsRequest())).interfaces}
    await router.close()
    assert (stats["eth0"].ip, stats["eth1"].ip) == ("10.0.1.1/24", "10.0.2.1/24")
    assert stats["eth0"].drops["forward_ttl_exceeded"] == 1
    assert stats["eth0"].drops["forward_net_unreachable"] == 1
    await web.close()
    await db.close()

    web_icmp = tshark_icmp(await to_web.stop(), tmp_path / "to-web.pcap")
    db_icmp = tshark_icmp(await to_db.stop(), tmp_path / "to-db.pcap")
    await br0.close()
    await br1.close()

    # web's requests reach db one hop later: TTL 64 -> 63 (and 2 -> 1).
    requests = [(p["ip.src"], p["ip.dst"], p["ip.ttl"]) for p in db_icmp if p["icmp.type"] == ["8"]]
    assert requests.count((["10.0.1.2"], ["10.0.2.2"], ["63"])) == 3
    assert (["10.0.1.2"], ["10.0.2.2"], ["1"]) in requests
    assert not any(ttl == ["0"] for _, _, ttl in requests)     # the TTL-1 request never got there
    # db's replies reach web with TTL 63.
    replies = [(p["ip.src"], p["ip.ttl"]) for p in web_icmp if p["icmp.type"] == ["0"]]
    assert replies.count((["10.0.2.2"], ["63"])) == 3 + 1      # web's three, and TTL 2's
    # Time exceeded from 10.0.1.1, quoting web's request to db as it arrived (TTL 1).
    exceeded = [p for p in web_icmp if p["icmp.type"][0] == "11"]
    assert len(exceeded) == 1
    assert exceeded[0]["ip.src"] == ["10.0.1.1", "10.0.1.2"]
    assert exceeded[0]["ip.dst"] == ["10.0.1.2", "10.0.2.2"]
    assert exceeded[0]["ip.ttl"] == ["64", "1"]
    assert exceeded[0]["icmp.code"][0] == "0"
    # Net unreachable (3/0) from 10.0.1.1 about 192.0.2.7.
    unreachable = [p for p in web_icmp if p["icmp.type"][0] == "3"]
    assert len(unreachable) == 1
    assert unreachable[0]["ip.src"] == ["10.0.1.1", "10.0.1.2"]
    assert unreachable[0]["ip.dst"] == ["10.0.1.2", "192.0.2.7"]
    assert unreachable[0]["icmp.code"][0] == "0"


async def test_readmes_routed_lab_commands_print_what_they_say(lab_factory):
    """The README's commands for the routed lab, as written (but `xenlab up`,
    which the fixture does): each prints what its comment says (up to its
    colon for a PING line), and exits as ping(8) does (1: no reply)."""
    lab = await lab_factory(LAB)
    start = block_after(ROOT / "README.md", "### Routed labs").line
    commands = [c for c in xenlab_commands(ROOT / "README.md")
                if start < int(c.where.rsplit(":", 1)[1]) < start + 80
                and not c.text.startswith("xenlab up")]
    assert len(commands) == 4, commands
    env = {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}
    for command in commands:
        line, _, comment = command.text.partition("#")
        comment = comment.strip()
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "xenlab.cli.main", *line.split()[1:]], env=env,
            capture_output=True, text=True, timeout=60)
        if comment.startswith("From"):
            assert run.returncode == 1, (command, run.stdout, run.stderr)
            assert comment in run.stdout, (command, run.stdout)
        else:
            assert run.returncode == 0, (command, run.stdout, run.stderr)
            assert run.stdout.startswith(comment.split(":")[0] + " "), (command, run.stdout)
            count = line.split("-c")[1].split()[0]
            assert f"{count} packets transmitted, {count} received, 0% packet loss" in run.stdout


async def test_ping_by_a_name_the_lab_does_not_have_says_so(lab_factory):
    lab = await lab_factory(LAB)
    env = {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "xenlab.cli.main", "ping", "web", "dbx", "-c", "1"],
        env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == ("xenlab ping: 'dbx' is neither an IPv4 address nor a domain of "
                                  "the lab (xenlab xl list shows them)")


TWO_ROUTERS = """
[lab]
name = "two-routers"

[mqtt]
broker = "none"

[[bridge]]
name = "xenbr0"
[[bridge]]
name = "xenbr1"
[[bridge]]
name = "xenbr2"

[[domain]]
name = "web"
memory = 32
vif = ["bridge=xenbr0,ip=10.0.1.2"]
extra = "ip=::10.0.1.1"

[[domain]]
name = "r1"
memory = 32
vif = ["bridge=xenbr0", "bridge=xenbr1"]
extra = "ip=10.0.1.1:::255.255.255.0::eth0:off ip=10.0.2.1:::255.255.255.0::eth1:off rd.route=10.0.3.0/24:10.0.2.2 sysctl.net.ipv4.ip_forward=1"

[[domain]]
name = "r2"
memory = 32
vif = ["bridge=xenbr1", "bridge=xenbr2"]
extra = "ip=10.0.2.2:::255.255.255.0::eth0:off ip=10.0.3.1:::255.255.255.0::eth1:off rd.route=10.0.1.0/24:10.0.2.1 sysctl.net.ipv4.ip_forward=1"

[[domain]]
name = "db"
memory = 32
vif = ["bridge=xenbr2,ip=10.0.3.2"]
extra = "ip=::10.0.3.1"
"""


async def test_two_routers_with_static_routes_two_hops(lab_factory):
    """rd.route= (dracut's static route) on each router: web reaches db two
    hops away, TTL 62 on arrival; TTL 2 expires at the second router."""
    lab = await lab_factory(TWO_ROUTERS)
    br2 = await lab.bridge("xenbr2")
    to_db = PortCapture(br2, "xenbr2", f"vif{lab.domid('db')}.0")
    await to_db.start()
    web = await lab.agent("web")
    reply = await web.Ping(agent_pb2.PingRequest(dst="10.0.3.2", count=2, interval=0.2, timeout=5))
    assert reply.received == 2, reply
    expired = await web.Ping(agent_pb2.PingRequest(dst="10.0.3.2", count=1, ttl=2, timeout=5))
    assert [(e.src, e.type) for e in expired.errors] == [("10.0.2.2", 11)]
    await web.close()
    pcap = await to_db.stop()
    await br2.close()
    requests = []
    for _, data in read_pcap(pcap):
        frame = EthernetFrame.parse(data)
        if frame.ethertype == ETH_P_IP:
            header, payload = Ipv4Header.parse(frame.payload)
            if header.src.packed == bytes([10, 0, 1, 2]) and payload[0] == 8:
                requests.append(header.ttl)
    assert requests == [62, 62]
