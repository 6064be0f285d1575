"""The bridge's VXLAN uplink against Linux's own vxlan device.

A network namespace plays another host: its underlay address is on a veth
whose other end (here) holds the bridge's VTEP address; in it a Linux
``vxlan`` device (VNI 42, UDP 4789) is a port of a Linux bridge, and a
second namespace behind that bridge is a host on the overlay LAN. Behind
the xenlab bridge, on a veth port, is the IP stack a domU runs. Every
address lives on this machine, in namespaces the tests create and delete.
The datagrams on the underlay are captured with tshark and decoded as
VXLAN. Needs root and iproute2; tshark for the capture test.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import tempfile

import pytest_asyncio

from host_commands import must, run, skip
from stack_port import StackPort
from xenlab.bridge.server import BridgeService, port_info
from xenlab.bridge.uplink import VxlanDevice
from xenlab.net import vxlan
from xenlab.net.ethernet import ETH_P_IP, EthernetFrame, format_mac
from xenlab.net.ipv4 import Ipv4Header
from xenlab.net.stack import EchoReply
from xenlab.proto import agent_pb2, bridge_pb2
from xenlab.testing import eventually, short_tempdir
from xenlab.testing.eventually import Unmet

VNI = 42
STACK_MAC = bytes.fromhex("00163e0e0001")
STACK_IP = "10.215.1.1"                 # the domU's stack, behind the xenlab bridge
PEER_IP = "10.215.1.254"                # the host behind the Linux bridge
UNDERLAY_HERE, UNDERLAY_PEER = "10.214.0.1", "10.214.0.2"


class Tunnel:
    def __init__(self, service, dev, stack, end, peer: "LinuxPeer"):
        self.service, self.dev, self.stack, self.end, self.peer = service, dev, stack, end, peer
        self.vtep_ns, self.host_ns, self.underlay = peer.vtep_ns, peer.host_ns, peer.underlay

    async def ping_from_peer(self, count: int = 3, size: int = 56) -> tuple[int, str]:
        return await self.peer.ping(STACK_IP, count, size)

    async def ping_from_stack(self, count: int = 3, size: int = 56) -> list[EchoReply]:
        """The replies to ``count`` pings of the stack, each waited for up
        to 3 s (a ping of its own ident: earlier replies do not count)."""
        self._ident += 1
        ident, replies = self._ident, []

        def reply(seq: int):
            return next((e for e in self.events if isinstance(e, EchoReply)
                         and e.ident == ident and e.seq == seq), None)

        for seq in range(1, count + 1):
            self.end.transmit(self.stack.ping(PEER_IP, ident, seq, bytes(size)))
            try:
                replies.append(await eventually(lambda s=seq: reply(s), f"echo reply {seq}",
                                                timeout=3))
            except Unmet:
                pass
        return replies

    @property
    def events(self):
        return self._events

    def bind_events(self, events: list) -> None:
        self._events = events
        self._ident = 0x70


class LinuxPeer:
    """Another host, in network namespaces: its underlay address on a veth
    whose other end (here, in this namespace) holds ours; a Linux vxlan
    device (VNI 42, UDP 4789) on a Linux bridge, and a host on that bridge
    (its own namespace) with address ``host_ip``."""

    def __init__(self, here: str, peer: str, host_ip: str):
        sfx = os.urandom(2).hex()
        self.here, self.peer, self.host_ip = here, peer, host_ip
        self.vtep_ns, self.host_ns = f"xlvx{sfx}", f"xlvh{sfx}"
        self.underlay, self._under_peer = f"xlu{sfx}a", f"xlu{sfx}b"
        self._lan_br, self.lan_host = f"xll{sfx}a", f"xll{sfx}b"

    async def create(self) -> None:
        if os.geteuid() != 0:
            skip("needs root (CAP_NET_ADMIN) for network namespaces and a vxlan device")
        if shutil.which("ip") is None:
            skip("ip (iproute2) is not installed")
        if shutil.which("ping") is None:
            skip("ping is not installed (apt package iputils-ping)")
        status, out = await run("ip", "netns", "add", self.vtep_ns)
        if status != 0:
            skip(f"`ip netns add` fails here: {out.strip()}")
        await must("ip", "netns", "add", self.host_ns)
        vx, host = self.vtep_ns, self.host_ns
        await must("ip", "link", "add", self.underlay, "type", "veth", "peer", "name", self._under_peer)
        await must("ip", "link", "set", self._under_peer, "netns", vx)
        await must("ip", "addr", "add", f"{self.here}/30", "dev", self.underlay)
        await must("ip", "link", "set", self.underlay, "up")
        await must("ip", "-n", vx, "addr", "add", f"{self.peer}/30", "dev", self._under_peer)
        await must("ip", "-n", vx, "link", "set", self._under_peer, "up")
        status, out = await run("ip", "-n", vx, "link", "add", "vx42", "type", "vxlan",
                                "id", str(VNI), "local", self.peer, "remote", self.here,
                                "dstport", str(vxlan.VXLAN_PORT), "dev", self._under_peer)
        if status != 0:
            skip(f"this kernel makes no vxlan device: {out.strip()}")
        await must("ip", "-n", vx, "link", "add", "br0", "type", "bridge")
        await must("ip", "-n", vx, "link", "set", "vx42", "master", "br0")
        await must("ip", "-n", vx, "link", "add", self._lan_br, "type", "veth", "peer", "name",
                   self.lan_host)
        await must("ip", "-n", vx, "link", "set", self._lan_br, "master", "br0")
        await must("ip", "-n", vx, "link", "set", self.lan_host, "netns", host)
        for dev in ("vx42", "br0", self._lan_br):
            await must("ip", "-n", vx, "link", "set", dev, "up")
        await must("ip", "-n", host, "link", "set", self.lan_host, "mtu", "1450")
        await must("ip", "-n", host, "addr", "add", f"{self.host_ip}/24", "dev", self.lan_host)
        await must("ip", "-n", host, "link", "set", self.lan_host, "up")
        await must("ip", "-n", host, "link", "set", "lo", "up")

    def uplink(self) -> str:
        return f"vxlan:vni={VNI},remote={self.peer},local={self.here}"

    async def ping(self, dst: str, count: int = 3, size: int = 56) -> tuple[int, str]:
        return await run("ip", "netns", "exec", self.host_ns, "ping", "-c", str(count), "-W", "2",
                         "-i", "0.2", "-s", str(size), dst)

    async def delete(self) -> None:
        await run("ip", "netns", "del", self.vtep_ns)
        await run("ip", "netns", "del", self.host_ns)
        await run("ip", "link", "del", self.underlay)


@pytest_asyncio.fixture
async def tunnel():
    """xenlab's bridge (in this process) with a VXLAN uplink to a LinuxPeer,
    and a domU's IP stack on a veth port."""
    peer = LinuxPeer(UNDERLAY_HERE, UNDERLAY_PEER, PEER_IP)
    tmp = short_tempdir()
    service = port = None
    try:
        await peer.create()
        service = BridgeService(["xenbr0"], listen=f"unix:{tmp}/veth.sock",
                                grpc=f"unix:{tmp}/bridge.sock", uplinks={"xenbr0": peer.uplink()})
        await service.start()
        port = await StackPort(STACK_MAC, f"{STACK_IP}/24").attach(service)
        dev = service.links[("xenbr0", f"vxlan{VNI}")]
        t = Tunnel(service, dev, port.stack, port.end, peer)
        t.bind_events(port.events)
        yield t
    finally:
        if port is not None:
            port.close()
        if service is not None:
            await service.stop(grace=0)
        await peer.delete()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_the_uplink_is_a_vxlan_port_of_the_bridge(tunnel):
    port = tunnel.service.bridge("xenbr0").port(f"vxlan{VNI}")
    assert isinstance(tunnel.dev, VxlanDevice)
    assert port_info(port, tunnel.dev).link == "vxlan"
    assert tunnel.dev.mtu == 1450 and tunnel.dev.address == (UNDERLAY_HERE, vxlan.VXLAN_PORT)


async def test_the_linux_host_pings_the_domu_through_linux_vxlan(tunnel):
    status, out = await tunnel.ping_from_peer(count=3)
    assert status == 0 and re.search(r"\b3 received\b", out), out
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    if rtt:
        print(f"ping over VXLAN (Linux vxlan <-> xenlab): rtt min/avg/max {'/'.join(rtt.groups())} ms")
    stats = tunnel.dev.stats()
    assert stats["rx_packets"] >= 3 and stats["tx_packets"] >= 3


async def test_the_domu_pings_the_linux_host(tunnel):
    replies = await tunnel.ping_from_stack(count=3)
    assert [r.seq for r in replies] == [1, 2, 3]


async def test_the_peers_mac_is_learned_against_its_vtep(tunnel):
    await must("ip", "netns", "exec", tunnel.host_ns, "ping", "-c", "1", "-W", "2", STACK_IP)
    out = await must("ip", "-n", tunnel.host_ns, "-br", "link", "show")
    peer_mac = bytes.fromhex(re.search(r"xll\w+b@\S+\s+\S+\s+([0-9a-f:]{17})", out).group(1)
                             .replace(":", ""))
    fdb = {entry.mac: entry.port for entry in tunnel.service.bridge("xenbr0").fdb}
    assert fdb.get(peer_mac) == f"vxlan{VNI}" and fdb.get(STACK_MAC) == "vif1.0"
    assert tunnel.dev.vtep.destinations(peer_mac) == [(UNDERLAY_PEER, vxlan.VXLAN_PORT)]
    # And Linux learned the stack's MAC against our VTEP, as its vxlan FDB shows.
    linux_fdb = await must("ip", "netns", "exec", tunnel.vtep_ns, "bridge", "fdb", "show", "dev", "vx42")
    assert re.search(rf"{format_mac(STACK_MAC).lower()} dst {UNDERLAY_HERE}\b", linux_fdb), linux_fdb


async def test_a_frame_over_the_tunnels_mtu_is_refused_and_counted(tunnel):
    assert (await tunnel.ping_from_peer(count=1))[0] == 0       # ARP resolved both ways
    before = tunnel.dev.stats()
    # 1422 bytes of ICMP payload: a 1450-byte IP packet, the port's MTU: it goes.
    assert len(await tunnel.ping_from_stack(count=1, size=1422)) == 1
    # One byte more: over the port's MTU, dropped here under its reason.
    assert await tunnel.ping_from_stack(count=1, size=1423) == []
    after = tunnel.dev.stats()
    assert after.get("drop_oversize", 0) == before.get("drop_oversize", 0) + 1


def fragments_created() -> int:
    """Ip FragCreates of this namespace (/proc/net/snmp)."""
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Ip:")][:2]
    return int(values[names.index("FragCreates")])


async def test_an_underlay_too_small_for_a_frame_refuses_it_rather_than_fragment(tunnel):
    """The port's MTU says 1450, the underlay's link only takes 1400: the
    datagram is refused by the host (IP_PMTUDISC_DO) and counted, never
    sent in fragments."""
    assert (await tunnel.ping_from_peer(count=1))[0] == 0
    await must("ip", "link", "set", tunnel.underlay, "mtu", "1400")
    before, frags = tunnel.dev.stats(), fragments_created()
    assert await tunnel.ping_from_stack(count=1, size=1422) == []
    after = tunnel.dev.stats()
    assert after.get("drop_underlay_msgsize", 0) >= before.get("drop_underlay_msgsize", 0) + 1
    assert fragments_created() == frags
    assert len(await tunnel.ping_from_stack(count=1, size=1300)) == 1     # smaller ones still go


async def test_a_datagram_that_is_not_vxlan_is_dropped_with_its_reason(tunnel):
    before = tunnel.dev.stats()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((UNDERLAY_HERE, 0))
        sock.sendto(b"\x00" * 30, (UNDERLAY_HERE, vxlan.VXLAN_PORT))      # no I flag
        sock.sendto(b"\x08\x00", (UNDERLAY_HERE, vxlan.VXLAN_PORT))       # too short
        other = vxlan.encap(VNI + 1, bytes.fromhex("ffffffffffff00163e0f0001") + b"\x08\x06" + bytes(46))
        sock.sendto(other, (UNDERLAY_HERE, vxlan.VXLAN_PORT))           # another VNI
    await eventually(lambda: tunnel.dev.stats().get("drop_vxlan_other_vni", 0)
                     > before.get("drop_vxlan_other_vni", 0), "the other VNI's frame dropped")
    stats = tunnel.dev.stats()
    assert stats["drop_vxlan_no_vni"] == before.get("drop_vxlan_no_vni", 0) + 1
    assert stats["drop_vxlan_short"] == before.get("drop_vxlan_short", 0) + 1
    # The other VNI's frame reached neither the bridge nor the VTEP table.
    stranger = bytes.fromhex("00163e0f0001")
    assert stranger not in {entry.mac for entry in tunnel.service.bridge("xenbr0").fdb}
    assert stranger not in tunnel.dev.vtep.entries


async def test_tshark_decodes_the_underlay_as_vxlan(tunnel):
    if shutil.which("tshark") is None:
        skip("tshark is not installed")
    pcap = os.path.join(tempfile.mkdtemp(prefix="xlvx"), "underlay.pcap")
    try:
        capture = await asyncio.create_subprocess_exec(
            "tshark", "-q", "-i", tunnel.underlay, "-f", f"udp port {vxlan.VXLAN_PORT}",
            "-w", pcap, "-a", "duration:8", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        # tshark says "Capturing on ..." once it listens.
        await asyncio.wait_for(capture.stderr.readline(), 10)
        await asyncio.sleep(0.5)
        status, out = await tunnel.ping_from_peer(count=2)
        assert status == 0, out
        await asyncio.wait_for(capture.wait(), 15)
        out = await must("tshark", "-r", pcap, "-Y", "vxlan && icmp",
                         "-T", "fields", "-e", "vxlan.vni", "-e", "icmp.type", "-e", "ip.src")
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        # Each ICMP row's ip.src holds the outer and the inner source.
        assert any(r[0] == str(VNI) and r[1] == "8" for r in rows), out      # requests, to us
        assert any(r[0] == str(VNI) and r[1] == "0" and STACK_IP in r[2] for r in rows), out
    finally:
        shutil.rmtree(os.path.dirname(pcap), ignore_errors=True)


# -- a whole lab: `xenlab up` with the uplink in its lab file, a domU behind it --------------
LAB = """
[lab]
name = "vxlan"

[[bridge]]
name = "xenbr0"
uplink = "{uplink}"

[[domain]]
name = "web"
memory = 32
vif = ["mac=00:16:3e:0e:00:02,ip=10.215.2.2/24"]

[mqtt]
broker = "none"
"""


def requests_to(frames: list[bytes], dst: str) -> list[bytes]:
    """The ICMP echo requests to ``dst`` among captured frames."""
    out = []
    for data in frames:
        frame = EthernetFrame.parse(data)
        if frame.ethertype != ETH_P_IP:
            continue
        header, payload = Ipv4Header.parse(frame.payload)
        if str(header.dst) == dst and header.proto == 1 and payload[:1] == b"\x08":
            out.append(data)
    return out


async def test_a_lab_with_a_vxlan_uplink_and_a_linux_host_ping_each_other(lab_factory):
    """The lab file's uplink, through `xenlab up`'s bridge service, to a
    Linux vxlan peer: the Linux host pings the domU and the domU pings it."""
    peer = LinuxPeer("10.214.0.5", "10.214.0.6", "10.215.2.254")
    try:
        await peer.create()
        lab = await lab_factory(LAB.format(uplink=peer.uplink()))
        status, out = await peer.ping("10.215.2.2", count=3)
        assert status == 0 and re.search(r"\b3 received\b", out), out
        bridge = await lab.bridge("xenbr0")
        web = await lab.agent("web")
        # The uplink is a capture point like any port: what the bridge sends into the tunnel.
        capture = bridge.Capture(bridge_pb2.BridgeCaptureRequest(bridge="xenbr0", port=f"vxlan{VNI}",
                                                                 direction="tx"))
        frames: list[bytes] = []

        async def read():
            async for frame in capture:
                frames.append(frame.data)

        try:
            await capture.wait_for_connection()
            reader = asyncio.create_task(read())
            reply = await web.Ping(agent_pb2.PingRequest(dst=peer.host_ip, count=3, interval=0.2,
                                                         timeout=5))
            await eventually(lambda: len(requests_to(frames, peer.host_ip)) >= 3,
                             "the three requests in the uplink's capture")
            capture.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            shown = await bridge.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))
        finally:
            await web.close()
            await bridge.close()
        assert (reply.transmitted, reply.received) == (3, 3), reply
        links = {p.name: p.link for p in shown.bridges[0].ports}
        assert links.get(f"vxlan{VNI}") == "vxlan", links
    finally:
        await peer.delete()


# -- two xenlab hosts joined by VXLAN ---------------------------------------------------------
HOST_LAB = """
[lab]
name = "{name}"

[[bridge]]
name = "xenbr0"
uplink = "vxlan:vni=42,local={local}:4789,remote={remote}:4789"

[[domain]]
name = "{domain}"
memory = 32
vif = ["mac={mac},ip={ip}/24"]

[mqtt]
broker = "none"
"""


async def vxlan_link_stats(lab) -> dict[str, int]:
    bridge = await lab.bridge("xenbr0")
    try:
        reply = await bridge.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))
    finally:
        await bridge.close()
    return dict(next(p for p in reply.bridges[0].ports if p.name == f"vxlan{VNI}").link)


async def test_two_xenlab_hosts_joined_by_vxlan_ping_across_and_count_what_does_not_fit(lab_factory):
    """Two labs (two hosts: each its own hypervisor, Domain-0 and bridge),
    their bridges' VXLAN uplinks on two loopback addresses, each the
    other's remote. A domU on one pings the domU on the other over real
    UDP; a ping whose frame is over the tunnel's 1450 bytes is dropped at
    the sending host's uplink and counted there, not fragmented."""
    a = await lab_factory(HOST_LAB.format(name="host-a", local="127.0.42.1", remote="127.0.42.2",
                                          domain="web", mac="00:16:3e:0e:01:01", ip="10.216.0.1"))
    b = await lab_factory(HOST_LAB.format(name="host-b", local="127.0.42.2", remote="127.0.42.1",
                                          domain="db", mac="00:16:3e:0e:01:02", ip="10.216.0.2"))
    web, db = await a.agent("web"), await b.agent("db")
    try:
        there = await web.Ping(agent_pb2.PingRequest(dst="10.216.0.2", count=3, interval=0.2, timeout=5))
        back = await db.Ping(agent_pb2.PingRequest(dst="10.216.0.1", count=3, interval=0.2, timeout=5))
        assert (there.received, back.received) == (3, 3), (there, back)
        before = await vxlan_link_stats(a)
        # 1422 bytes of payload: a 1450-byte packet, the tunnel's MTU; 1423: one over.
        fits = await web.Ping(agent_pb2.PingRequest(dst="10.216.0.2", count=1, size=1422, timeout=3))
        over = await web.Ping(agent_pb2.PingRequest(dst="10.216.0.2", count=2, size=1423,
                                                    interval=0.2, timeout=3))
    finally:
        await web.close()
        await db.close()
    assert fits.received == 1 and over.received == 0, (fits, over)
    after = await vxlan_link_stats(a)
    assert after.get("drop_oversize", 0) - before.get("drop_oversize", 0) == 2, after
    assert after.get("vtep_entries", 0) >= 1
