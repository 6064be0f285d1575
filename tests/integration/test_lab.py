"""The local lab end to end, as real processes: hypervisor, bridge service,
Domain-0 with netback, three domUs with netfront and an IP stack."""
from __future__ import annotations

import asyncio
import io

import pytest

from xenlab.net.arp import ArpPacket
from xenlab.net.capture import PcapWriter, read_pcap
from xenlab.net.ethernet import BROADCAST, EthernetFrame, ETH_P_ARP, parse_mac
from xenlab.proto import agent_pb2, bridge_pb2, xenstore_pb2
from xenlab.testing import eventually

pytestmark = pytest.mark.integration

HOSTS = {"web": "10.0.0.1", "db": "10.0.0.2", "cache": "10.0.0.3"}
MACS = {"web": "00:16:3e:00:00:01", "db": "00:16:3e:00:00:02", "cache": "00:16:3e:00:00:03"}


async def capture_to_pcap(stub, port: str, ready: asyncio.Event, stop: asyncio.Event) -> bytes:
    """Frames the bridge sends out of `port`, written to and returned as a pcap file."""
    out = io.BytesIO()
    writer = PcapWriter(out)
    call = stub.Capture(bridge_pb2.BridgeCaptureRequest(bridge="xenbr0", port=port, direction="tx"))
    await call.wait_for_connection()
    ready.set()

    async def read():
        async for frame in call:
            writer.write(frame.data, frame.timestamp)
    task = asyncio.create_task(read())
    await stop.wait()
    await asyncio.sleep(0.3)           # let frames in flight arrive
    call.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return out.getvalue()


def arp_frames(pcap: bytes) -> list[tuple[EthernetFrame, ArpPacket]]:
    out = []
    for _, data in read_pcap(pcap):
        frame = EthernetFrame.parse(data)
        if frame.ethertype == ETH_P_ARP:
            out.append((frame, ArpPacket.parse(frame.payload)))
    return out


async def test_arp_request_floods_and_reply_is_unicast_on_bridge_ports(demo_lab, tmp_path):
    stub = channel = await demo_lab.bridge()
    ports = {name: f"vif{demo_lab.domid(name)}.0" for name in HOSTS}
    stop = asyncio.Event()
    readies = {name: asyncio.Event() for name in HOSTS}
    tasks = {name: asyncio.create_task(capture_to_pcap(stub, port, readies[name], stop))
             for name, port in ports.items()}
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies.values())), 10)
    web = await demo_lab.agent("web")
    reply = await web.Ping(agent_pb2.PingRequest(dst=HOSTS["db"], count=1, timeout=5))
    await web.close()
    assert reply.received == 1
    stop.set()
    pcaps = {name: await task for name, task in tasks.items()}
    await channel.close()

    requests = {name: [(f, a) for f, a in arp_frames(p) if a.op == 1 and str(a.tpa) == HOSTS["db"]]
                for name, p in pcaps.items()}
    replies = {name: [(f, a) for f, a in arp_frames(p) if a.op == 2 and str(a.spa) == HOSTS["db"]]
               for name, p in pcaps.items()}
    # The request from web is flooded to every other port, never back to web's.
    assert requests["web"] == []
    for name in ("db", "cache"):
        assert len(requests[name]) == 1, name
        frame, arp = requests[name][0]
        assert frame.dst == BROADCAST and frame.src == parse_mac(MACS["web"])
    # The reply is unicast: out of web's port only.
    assert replies["cache"] == [] and replies["db"] == []
    assert len(replies["web"]) == 1
    frame, arp = replies["web"][0]
    assert frame.dst == parse_mac(MACS["web"]) and arp.sha == parse_mac(MACS["db"])
    # And the ICMP echo request/reply pair crossed db's and web's ports only.
    assert len(read_pcap(pcaps["cache"])) == len(requests["cache"])
    assert_tshark_reads(pcaps["web"], tmp_path)


def assert_tshark_reads(pcap: bytes, tmp_path) -> None:
    """The file is a standard pcap: tshark decodes the same ARP reply."""
    import shutil
    import subprocess
    if shutil.which("tshark") is None:
        print("tshark is not installed: the pcap was checked with xenlab's own reader only")
        return
    path = tmp_path / "web-port.pcap"
    path.write_bytes(pcap)
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "arp.opcode == 2", "-T", "fields",
                          "-e", "arp.src.proto_ipv4", "-e", "eth.dst"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [HOSTS["db"], MACS["web"]]


async def test_ping_mesh_udp_echo_fdb_and_counters(demo_lab):
    # The lab file gives each guest its address on the vif (ip=, Domain-0's in
    # Xen: the backend keeps it for antispoofing); the guest takes it from
    # the ip= the lab wrote into its own kernel command line.
    async def read(path: str) -> str:
        return (await demo_lab.hv.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()
    for name, ip in HOSTS.items():
        domid = demo_lab.domid(name)
        vm = await read(f"/local/domain/{domid}/vm")
        assert await read(f"{vm}/image/cmdline") == f"ip={ip}:::255.255.255.0:{name}:eth0:off"
        assert await read(f"/local/domain/0/backend/vif/{domid}/0/ip") == f"{ip}/24"
    for src in HOSTS:
        agent = await demo_lab.agent(src)
        try:
            for dst, ip in HOSTS.items():
                if dst != src:
                    reply = await agent.Ping(agent_pb2.PingRequest(dst=ip, count=3, interval=0.02, timeout=5))
                    assert (reply.transmitted, reply.received) == (3, 3), (src, dst, reply.error)
                    assert len(reply.rtt) == 3 and all(r > 0 for r in reply.rtt)
        finally:
            await agent.close()

    web = await demo_lab.agent("web")
    payload = b"xenlab udp echo " * 20
    echo = await web.SendUdp(agent_pb2.SendUdpRequest(dst=HOSTS["cache"], dport=7, payload=payload,
                                                      wait_reply=True, timeout=5))
    assert echo.replied and echo.reply == payload and echo.src == HOSTS["cache"]
    stats = await web.InterfaceStats(agent_pb2.StatsRequest(interface="eth0"))
    await web.close()
    eth0 = stats.interfaces[0]
    assert eth0.tx_packets >= 7 and eth0.rx_packets >= 7 and eth0.mac == MACS["web"]

    stub = channel = await demo_lab.bridge()
    fdb = await stub.ShowFdb(bridge_pb2.ShowFdbRequest(bridge="xenbr0"))
    bstats = await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))
    await channel.close()
    learned = {e.mac: e.port for e in fdb.entries}
    for name, mac in MACS.items():
        assert learned[mac] == f"vif{demo_lab.domid(name)}.0"
        assert f"{mac} dev vif{demo_lab.domid(name)}.0" in fdb.text
    (br,) = bstats.bridges
    assert {p.name for p in br.ports} == {f"vif{demo_lab.domid(n)}.0" for n in HOSTS}
    # Conservation at the bridge: everything that came in was forwarded or dropped for a reason.
    assert br.counters["rx"] == br.counters["forwarded"] + sum(br.drops.values())


async def test_killed_domu_is_cleaned_up_by_its_backend(demo_lab):
    """SIGKILL a domU mid-traffic: its vif goes from dom0 and its port from
    the bridge within 2 s, and dom0 holds no mapping of its grants."""
    import os
    import signal
    import time
    from xenlab.proto import common_pb2

    db_id = demo_lab.domid("db")
    info = await demo_lab.hv.domains.Info(common_pb2.DomainRef(domid=db_id))
    web = await demo_lab.agent("web")
    traffic = asyncio.ensure_future(web.Ping(agent_pb2.PingRequest(dst=HOSTS["db"], count=200,
                                                                   interval=0.005, timeout=1)))
    await asyncio.sleep(0.3)
    os.kill(info.pid, signal.SIGKILL)
    killed = time.monotonic()
    dom0 = await demo_lab.agent("Domain-0")
    stub = channel = await demo_lab.bridge()
    vif = f"vif{db_id}.0"
    while True:
        names = {i.name for i in (await dom0.InterfaceStats(agent_pb2.StatsRequest())).interfaces}
        ports = {p.name for p in (await stub.ShowBridges(bridge_pb2.ShowBridgesRequest())).bridges[0].ports}
        if vif not in names and vif not in ports:
            break
        assert time.monotonic() - killed < 2.0, f"{vif} still present: {names} {ports}"
        await asyncio.sleep(0.05)
    await channel.close()
    await dom0.close()
    partial = await traffic
    await web.close()
    assert 0 < partial.received < 200
    # dom0 maps nothing of a domain that no longer exists; the others still work.
    assert (await demo_lab.hv.grants.Query(common_pb2.DomainRef(domid=0))).active_maps >= 0
    web = await demo_lab.agent("web")
    reply = await web.Ping(agent_pb2.PingRequest(dst=HOSTS["cache"], count=2, interval=0.02, timeout=5))
    await web.close()
    assert reply.received == 2


def xenlab_cli(lab, command: str, *args: str):
    """`xenlab COMMAND --rundir LAB ARGS...` as a user runs it."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", command, "--rundir", str(lab.rundir),
                           *args], capture_output=True, text=True, timeout=60)


def xl(lab, *args: str) -> str:
    result = xenlab_cli(lab, "xl", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_network_detach_and_attach_with_xl(demo_lab):
    web = demo_lab.domid("web")
    stub = channel = await demo_lab.bridge()

    async def ports():
        return {p.name for p in (await stub.ShowBridges(bridge_pb2.ShowBridgesRequest())).bridges[0].ports}

    async def interfaces(name):
        agent = await demo_lab.agent(name)
        try:
            return {i.name for i in (await agent.InterfaceStats(agent_pb2.StatsRequest())).interfaces}
        finally:
            await agent.close()

    listing = xl(demo_lab, "network-list", "web")
    assert listing.splitlines()[0].startswith("Idx BE Mac Addr.")
    assert f"/local/domain/0/backend/vif/{web}/0" in listing and MACS["web"] in listing

    xl(demo_lab, "network-detach", "web", "0")
    assert f"vif{web}.0" not in await ports()
    assert f"vif{web}.0" not in await interfaces("Domain-0")
    await eventually(lambda: _absent(interfaces, "web", "eth0"), "eth0 to go from web")
    assert xl(demo_lab, "network-list", "web").count("\n") == 1      # the header only

    # As libxl__device_nextid: the lowest devid past the existing ones, 0 again here.
    # The vif's ip= is Domain-0's (antispoofing): the guest's own command line
    # gives the new eth0 its address, web's as before.
    xl(demo_lab, "network-attach", "web", "mac=00:16:3e:00:00:11", f"ip={HOSTS['web']}/24")

    async def connected():
        return f"vif{web}.0" in await ports()
    await eventually(connected, "the new vif on the bridge")
    assert "eth0" in await interfaces("web")
    assert "00:16:3e:00:00:11" in xl(demo_lab, "network-list", "web")
    agent = await demo_lab.agent("db")
    reply = await agent.Ping(agent_pb2.PingRequest(dst=HOSTS["web"], count=2, interval=0.02, timeout=5))
    await agent.close()
    await channel.close()
    assert reply.received == 2, reply.error


async def _absent(interfaces, name, iface):
    return iface not in await interfaces(name)


async def test_inject_says_which_frames_it_refused(demo_lab):
    good = xenlab_cli(demo_lab, "inject", "web:eth0", "--count", "3", "--size", "64")
    assert good.returncode == 0, good.stderr
    assert "3 frames: 3 accepted, 0 dropped" in good.stdout.splitlines()

    oversized = xenlab_cli(demo_lab, "inject", "web:eth0", "--count", "2", "--size", "9000")
    assert oversized.returncode == 1
    assert "2 frames: 0 accepted, 2 dropped (bad_length=2)" in oversized.stdout.splitlines()
    assert "2 frame(s) refused at web:eth0" in oversized.stderr
    assert "1514 bytes for MTU 1500" in oversized.stderr

    unknown = xenlab_cli(demo_lab, "inject", "nosuch:eth0", "--count", "1")
    assert unknown.returncode == 1
    assert "no domain named 'nosuch'" in unknown.stderr
