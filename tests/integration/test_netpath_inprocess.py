"""netfront and netback end to end, in one process: an in-process hypervisor,
dom0 running netback (with LoopbackHotplug as its bridge) and three domUs
running netfront, each a real DomainKernel on the fixture's hypervisor
(shared memory, doorbells, xenstore over gRPC). The vif directories are
written as the toolstack writes them.

Shown: the handshake reaches Connected with every key; frames cross the
rings byte-identical both ways (60, 1514 and a 3-slot 9014-byte jumbo);
detach and domain death tear everything down (grants, ports, mappings,
checked in the hypervisor's cores); a hostile frontend writing malformed
requests gets netback's documented answer, and costs only its own vif.
"""
from __future__ import annotations

import asyncio
import bisect
from pathlib import Path

import pytest

from xenlab.domain.kernel import DomainKernel
from xenlab.domain.netstack import GuestNetwork
from xenlab.drivers.netback import NetbackDriver
from xenlab.drivers.netback.datapath import PageBudget
from xenlab.drivers.netback.interface import HotplugError
from xenlab.drivers.netback.xenbus import Netback
from xenlab.drivers.netfront import NetfrontDriver
from xenlab.hypervisor.caller import Caller
from xenlab.net.device import NetDevice
from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2
from xenlab.testing import check_invariants, eventually, no_drivers
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.netif import TxRequest, TxResponse

DOM0 = Caller(0, privileged=True)
S = abi.XenbusState


def mac_of(domid: int, devid: int = 0) -> str:
    return f"00:16:3e:00:{domid:02x}:{devid:02x}"


def frame(size: int, src: str, dst: str = "ff:ff:ff:ff:ff:ff", seed: int = 0) -> bytes:
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x88\xb5"
    return head + bytes((seed + i) & 0xFF for i in range(size - len(head)))


async def send_in_hundreds(eth, frames: list[bytes]) -> None:
    """Hand frames to netfront 100 at a time, each lot once the last has left its backlog."""
    for i in range(0, len(frames), 100):
        eth.transmit(frames[i:i + 100])
        await eventually(lambda: len(eth.tx_core.backlog) == 0, "the backlog to drain")


class LoopbackHotplug:
    """netback's hotplug for these tests: each bridge name is a hub that
    floods every frame a vif delivers to the other vifs on it."""

    def __init__(self):
        self.bridges: dict[str, list[NetDevice]] = {}

    async def online(self, vif: NetDevice, bridge: str, backend_path: str) -> None:
        self.bridges.setdefault(bridge, []).append(vif)
        vif.receiver = lambda frames, src=vif, name=bridge: self._flood(name, src, frames)

    async def offline(self, vif: NetDevice) -> None:
        for ports in self.bridges.values():
            if vif in ports:
                ports.remove(vif)
        vif.receiver = None

    def _flood(self, bridge: str, src: NetDevice, frames: list[bytes]) -> None:
        for port in list(self.bridges.get(bridge, ())):
            if port is not src:
                port.transmit(list(frames))


class Capture:
    def __init__(self, dev):
        self.frames: list[bytes] = []
        dev.receiver = self.frames.extend

    async def wait(self, n: int) -> list[bytes]:
        await eventually(lambda: len(self.frames) >= n, f"{n} frames")
        return self.frames


class NetLab:
    """The in-process lab (xenlab.testing.InProcessLab) with Domain-0
    running netback on a LoopbackHotplug, domUs running netfront, no guest
    agent anywhere (it would attach an IP stack to every netif: these tests
    drive the interfaces themselves), and the toolstack's xenstore writes."""

    def __init__(self, lab):
        self.lab = lab
        self.hv = lab.hv
        self.toolstack = lab.toolstack
        self.hotplug = LoopbackHotplug()
        self.kernels = lab.kernels
        self.changes: list[tuple[int, str, bool]] = []

    def xs_read(self, path: str) -> str | None:
        if not self.hv.xenstore.exists(path):
            return None
        return self.hv.xenstore.read(DOM0, path).decode()

    def _record_changes(self, kernel: DomainKernel) -> None:
        kernel.on_netif_change.append(
            lambda ifname, dev, d=kernel.domid: self.changes.append((d, ifname, dev is not None)))

    async def boot_dom0(self) -> DomainKernel:
        return await self.lab.boot_dom0(drivers=lambda k: [NetbackDriver(k, self.hotplug)],
                                        prepare=self._record_changes)

    async def boot_domu(self, name: str, netfront: bool = True) -> DomainKernel:
        return await self.lab.boot_domain(
            name, drivers=(lambda k: [NetfrontDriver(k)]) if netfront else no_drivers,
            prepare=self._record_changes)

    @staticmethod
    def backend_path(domid: int, devid: int = 0) -> str:
        return f"/local/domain/0/backend/vif/{domid}/{devid}"

    @staticmethod
    def frontend_path(domid: int, devid: int = 0) -> str:
        return f"/local/domain/{domid}/device/vif/{devid}"

    async def add_vif(self, domid: int, devid: int = 0, mtu: int = 1500, **backend_extra) -> None:
        """What the toolstack writes for vif=['mac=...'], in one transaction,
        with libxl's permissions (each end may read the other's directory)."""
        be, fe = self.backend_path(domid, devid), self.frontend_path(domid, devid)
        mac = mac_of(domid, devid)
        backend = {"frontend": fe, "frontend-id": str(domid), "online": "1", "state": "1",
                   "script": "vif-bridge", "mac": mac, "bridge": "xenbr0", "handle": str(devid),
                   "type": "vif", "hotplug-status": "", "mtu": str(mtu), **backend_extra}
        frontend = {"backend": be, "backend-id": "0", "state": "1", "handle": str(devid),
                    "mac": mac, "mtu": str(mtu)}
        xs = self.lab.dom0.xenstore
        tx = (await xs.TransactionStart(common_pb2.Empty())).tx
        for path, keys, perms in ((be, backend, [(0, "n"), (domid, "r")]),
                                  (fe, frontend, [(domid, "n"), (0, "r")])):
            await xs.Mkdir(xenstore_pb2.PathRequest(path=path, tx=tx))
            await xs.SetPerms(xenstore_pb2.SetPermsRequest(
                path=path, tx=tx, perms=[xenstore_pb2.Perm(domid=d, perm=p) for d, p in perms]))
            for key, value in keys.items():
                await xs.Write(xenstore_pb2.WriteRequest(path=f"{path}/{key}", value=value.encode(),
                                                         tx=tx))
        await xs.TransactionEnd(xenstore_pb2.TransactionEndRequest(tx=tx, commit=True))

    async def attach_vif(self, domid: int, **spec) -> None:
        """A vif through the toolstack (xl network-attach): with its record,
        so that destroy and network-detach find it."""
        await self.lab.dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
            domain=common_pb2.DomainRef(domid=domid),
            vif=domains_pb2.VifSpec(mac=mac_of(domid, spec.get("devid", 0)), **spec)))

    async def xs_write(self, path: str, value: str) -> None:
        await self.lab.dom0.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value.encode()))

    @staticmethod
    async def guest_writes(kernel: DomainKernel, path: str, value: str | bytes) -> None:
        """A write by the domain itself, with its own rights: any bytes."""
        raw = value if isinstance(value, bytes) else value.encode()
        await kernel.hypercall.xenstore.write(path, raw)

    async def xs_rm(self, path: str) -> None:
        await self.lab.dom0.xenstore.Rm(xenstore_pb2.PathRequest(path=path))

    async def wait_state(self, path: str, state: S) -> None:
        await eventually(lambda: self.xs_read(f"{path}/state") == str(int(state)),
                         f"{path} to reach {state.name}")

    async def connected(self, domid: int, devid: int = 0):
        await self.wait_state(self.backend_path(domid, devid), S.Connected)
        await self.wait_state(self.frontend_path(domid, devid), S.Connected)
        kernel = self.kernels[domid]
        return await eventually(lambda: kernel.netifs.get(f"eth{devid}"), f"d{domid} eth{devid}")

    def interdomain_ports(self, domid: int) -> list[int]:
        """Its ports but VIRQs and its store port (xenstored's, for its life)."""
        return [p for p in self.hv.evtchn.ports(domid)
                if self.hv.evtchn.channel(domid, p).state != EvtchnState.virq
                and not self.hv.evtchn.has_consumer(domid, p)]


@pytest.fixture
async def net(hypervisor):
    lab = NetLab(hypervisor)
    await lab.boot_dom0()
    return lab


@pytest.fixture
async def pair(net):
    """Two domUs with one vif each, connected, on the same loopback bridge."""
    a = await net.boot_domu("a")
    b = await net.boot_domu("b")
    await net.add_vif(a.domid, mtu=9000)
    await net.add_vif(b.domid, mtu=9000)
    return a, b, await net.connected(a.domid), await net.connected(b.domid)


# -- the handshake --------------------------------------------------------------------------
async def test_both_ends_reach_connected_with_every_key(net, pair):
    a, b, eth_a, _ = pair
    be, fe = net.backend_path(a.domid), net.frontend_path(a.domid)
    for key in ("tx-ring-ref", "rx-ring-ref", "event-channel"):
        assert net.xs_read(f"{fe}/{key}").isdigit()
    assert [net.xs_read(f"{fe}/{k}") for k in ("request-rx-copy", "feature-rx-notify",
                                               "feature-sg")] == ["1", "1", "1"]
    assert {k: net.xs_read(f"{be}/{k}") for k in ("feature-sg", "feature-rx-copy",
                                                  "feature-rx-flip", "feature-gso-tcpv4",
                                                  "feature-split-event-channels",
                                                  "multi-queue-max-queues")} == \
        {"feature-sg": "1", "feature-rx-copy": "1", "feature-rx-flip": "0",
         "feature-gso-tcpv4": "0", "feature-split-event-channels": "0",
         "multi-queue-max-queues": "1"}
    assert net.xs_read(f"{be}/hotplug-status") == "connected"
    assert (eth_a.name, eth_a.state, eth_a.mtu) == ("eth0", "connected", 9000)
    assert eth_a.mac == bytes.fromhex(mac_of(a.domid).replace(":", ""))
    dom0 = net.kernels[0]
    vif = dom0.vifs[f"vif{a.domid}.0"]
    assert vif.state == "connected" and vif in net.hotplug.bridges["xenbr0"]
    assert (a.domid, "eth0", True) in net.changes and (0, vif.name, True) in net.changes
    # the rings really are shared: netback maps the two ring grants and,
    # before any frame (persistent grants), every receive buffer netfront
    # posted, writable; no transmit buffer until a request names one
    rings = sorted(int(net.xs_read(f"{fe}/{k}")) for k in ("tx-ring-ref", "rx-ring-ref"))
    posted = {buf.gref for buf in eth_a.rx_core.buffers}
    assert len(posted) == abi.NET_RX_RING_SIZE

    def mapped_from_a():
        return [m for m in net.hv.grants.mappings(0) if m.granter == a.domid]
    await eventually(lambda: len(mapped_from_a()) == 2 + len(posted), "a's rx buffers mapped")
    maps = mapped_from_a()
    assert sorted(m.ref for m in maps if m.ref in rings) == rings
    assert {m.ref for m in maps if m.ref not in rings} == posted
    assert not any(m.readonly for m in maps)
    assert vif.persistent_grants == len(posted) and vif.datapath.persistent.cache.stats["remote"] == 0


async def test_vifname_comes_from_the_backend_directory(net):
    c = await net.boot_domu("c")
    await net.add_vif(c.domid, vifname="web0")
    await net.connected(c.domid)
    assert "web0" in net.kernels[0].vifs


async def test_the_guest_takes_its_address_from_its_command_line_not_the_backend_ip_node(net):
    # The backend's ip node is Domain-0's (vif-route, antispoofing), as in Xen.
    c = await net.boot_domu("c")
    guest = GuestNetwork(cmdline="ip=10.9.9.9::10.9.9.1:255.255.255.0:c:eth0:off")
    guest.attach(c)
    try:
        await net.add_vif(c.domid, ip="10.1.2.3/24")
        await net.connected(c.domid)
        stack = await eventually(lambda: guest.stack("eth0"), "c's eth0 stack")
        assert (str(stack.config.address), str(stack.config.gateway)) == ("10.9.9.9/24", "10.9.9.1")
        assert net.xs_read(f"{net.backend_path(c.domid)}/ip") == "10.1.2.3/24"
    finally:
        guest.close()


async def test_a_guest_with_no_ip_on_its_command_line_has_no_address_and_says_why(net, caplog):
    c = await net.boot_domu("c")
    guest = GuestNetwork(cmdline="console=hvc0")
    guest.attach(c)
    try:
        await net.add_vif(c.domid, ip="10.1.2.3/24")
        await net.connected(c.domid)
        await eventually(lambda: "eth0" in [d.name for d in guest.interfaces()], "c's eth0")
        assert guest.stack("eth0") is None and not guest.has_stack()
        assert ("eth0: no IPv4 address: the kernel command line has no ip= for it (a vif's ip= "
                "is Domain-0's); give ip=ADDR::GW:MASK:HOST:eth0:off in extra=") in caplog.messages
    finally:
        guest.close()


# -- the data path ----------------------------------------------------------------------------
async def test_frames_cross_byte_identical_both_ways(net, pair):
    a, b, eth_a, eth_b = pair
    at_a, at_b = Capture(eth_a), Capture(eth_b)
    a_to_b = [frame(n, mac_of(a.domid), seed=n) for n in (60, 1514, 9014)]
    b_to_a = [frame(n, mac_of(b.domid), seed=n + 1) for n in (9014, 60, 1514)]
    eth_a.transmit(a_to_b)
    eth_b.transmit(b_to_a)
    assert await at_b.wait(3) == a_to_b
    assert await at_a.wait(3) == b_to_a
    for dev in (eth_a, eth_b):
        assert dev.counters["tx_packets"] == 3 and dev.counters["rx_packets"] == 3
        assert not dev.drops
    vif_a = net.kernels[0].vifs[f"vif{a.domid}.0"]
    assert vif_a.counters["rx_packets"] == 3 and vif_a.counters["tx_packets"] == 3


async def test_many_frames_keep_their_order(net, pair):
    a, b, eth_a, eth_b = pair
    at_b = Capture(eth_b)
    frames = [frame(60 + (i * 37) % 1400, mac_of(a.domid), seed=i) for i in range(600)]
    await send_in_hundreds(eth_a, frames)
    assert await at_b.wait(600) == frames


async def test_buffer_pages_are_mapped_once_and_copied_locally(net, pair):
    """feature-xenlab-persistent: after the first frames, netback copies through its
    own mappings of the frontends' buffer pages, and the hypervisor only
    sees the copies through pages not mapped yet."""
    a, b, eth_a, eth_b = pair
    fe = net.frontend_path(a.domid)
    assert net.xs_read(f"{fe}/feature-xenlab-persistent") == "1"
    assert net.xs_read(f"{net.backend_path(a.domid)}/feature-xenlab-persistent") == "1"
    at_b = Capture(eth_b)
    frames = [frame(60 + (i * 53) % 1400, mac_of(a.domid), seed=i) for i in range(1200)]
    await send_in_hundreds(eth_a, frames)
    assert await at_b.wait(1200) == frames
    rings = {int(net.xs_read(f"{fe}/{k}")) for k in ("tx-ring-ref", "rx-ring-ref")}
    buffers = [m for m in net.hv.grants.mappings(0)
               if m.granter == a.domid and m.ref not in rings and m.readonly]
    # every transmit page of a that a frame went through, read-only
    assert 0 < len(buffers) <= abi.NET_TX_RING_SIZE
    rings_b = {int(net.xs_read(f"{net.frontend_path(b.domid)}/{k}"))
               for k in ("tx-ring-ref", "rx-ring-ref")}
    rx_maps = [m for m in net.hv.grants.mappings(0)
               if m.granter == b.domid and m.ref not in rings_b and not m.readonly]
    # b's receive pages, writable: all of them, mapped at connect
    assert {m.ref for m in rx_maps} == {buf.gref for buf in eth_b.rx_core.buffers}
    vif_a, vif_b = (net.kernels[0].vifs[f"vif{d}.0"] for d in (a.domid, b.domid))
    # once mapped, a one-slot frame is read from (tx) or written into (rx)
    # the frontend's page itself; only the first uses of a transmit page were
    # copied through the hypervisor, and no receive page was
    sent_a, got_b = vif_a.datapath, vif_b.datapath
    assert vif_a.persistent_grants == len(buffers) + abi.NET_RX_RING_SIZE
    assert vif_b.persistent_grants == len(rx_maps)
    assert sent_a.tx.direct_frames > 0 and got_b.rx.direct_frames > 0
    # warm: every page a frame goes through is mapped, so none of another
    # 1200 frames costs a copy through the hypervisor
    remote = (sent_a.persistent.cache.stats["remote"], got_b.persistent.cache.stats["remote"])
    copy_ops = net.hv.doorbell.stats["copy_ops"]
    del at_b.frames[:]
    await send_in_hundreds(eth_a, frames)
    assert await at_b.wait(1200) == frames
    assert (sent_a.persistent.cache.stats["remote"], got_b.persistent.cache.stats["remote"]) == remote
    assert net.hv.doorbell.stats["copy_ops"] == copy_ops
    # and the frontend gets them all back at detach
    be = net.backend_path(a.domid)
    await net.xs_write(f"{be}/online", "0")
    await net.xs_write(f"{be}/state", str(int(S.Closing)))
    await net.wait_state(be, S.Closed)
    await eventually(lambda: net.hv.grants.entries(a.domid) == [], "the grants to be ended")
    assert_nothing_left(net, a.domid)


def ops_moved(before: dict, after: dict) -> dict:
    return {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}


async def test_the_hypervisor_handles_no_message_in_steady_traffic_between_domus(net, pair):
    """Once the vifs are connected and warm, frames both ways between two
    domUs move through their rings, netback's mappings and the per-channel
    notification objects: the hypervisor's count of the messages it
    handles does not move."""
    a, b, eth_a, eth_b = pair
    at_a, at_b = Capture(eth_a), Capture(eth_b)
    warm = abi.NET_TX_RING_SIZE + 8     # every transmit page has carried a frame
    await send_in_hundreds(eth_a, [frame(60, mac_of(a.domid), seed=i) for i in range(warm)])
    await send_in_hundreds(eth_b, [frame(60, mac_of(b.domid), seed=i) for i in range(warm)])
    await at_b.wait(warm)
    await at_a.wait(warm)
    # the pages those frames named are mapped in the background: wait for
    # netback's last MapBatch to come back before counting
    caches = [vif.datapath.persistent.cache for vif in net.kernels[0].vifs.values()]
    await eventually(lambda: all(cache.settled for cache in caches), "the buffer pages mapped")
    before = dict(net.hv.ops)
    for i in range(1, 101):             # a burst of pings: one frame each way, in turn
        eth_a.transmit([frame(98, mac_of(a.domid), mac_of(b.domid), seed=i)])
        await at_b.wait(warm + i)
        eth_b.transmit([frame(98, mac_of(b.domid), mac_of(a.domid), seed=i)])
        await at_a.wait(warm + i)
    assert ops_moved(before, dict(net.hv.ops)) == {}


def mappings_holding(addresses) -> int:
    """How many of this process's mappings (/proc/self/maps) hold these addresses."""
    ranges = sorted(tuple(int(x, 16) for x in line.split()[0].split("-"))
                    for line in Path("/proc/self/maps").read_text().splitlines())
    starts = [lo for lo, _ in ranges]
    held = set()
    for address in addresses:
        i = bisect.bisect_right(starts, address) - 1
        assert i >= 0 and ranges[i][0] <= address < ranges[i][1], f"{address:#x} is not mapped"
        held.add(i)
    return len(held)


async def test_the_driver_domain_holds_no_more_mappings_than_its_budget(net):
    """Consecutive buffer pages are mapped as one mapping (a VMA: a process
    has vm.max_map_count of them); the budget bounds the mappings, and the
    frames beyond it are copied through the hypervisor."""
    driver = next(d for d in net.kernels[0].drivers if hasattr(d, "page_budget"))
    driver.page_budget = budget = PageBudget(3)
    a = await net.boot_domu("a")
    b = await net.boot_domu("b")
    for dom in (a, b):
        await net.add_vif(dom.domid, mtu=9000)
    eth_a, eth_b = await net.connected(a.domid), await net.connected(b.domid)
    vifs = list(net.kernels[0].vifs.values())

    def addresses():
        return [address for v in vifs for address in v.datapath.persistent.addresses]
    # the receive buffers mapped at connect take the whole budget, in runs
    await eventually(lambda: budget.left == 0 and all(v.datapath.persistent.cache.settled
                                                      for v in vifs), "the budget taken")
    assert sum(v.persistent_grants for v in vifs) > 3        # more pages than mappings
    assert mappings_holding(addresses()) <= 3
    assert sum(v.datapath.persistent.mappings for v in vifs) == 3
    at_b = Capture(eth_b)
    frames = [frame(60 + i % 1000, mac_of(a.domid), seed=i) for i in range(600)]
    await send_in_hundreds(eth_a, frames)
    assert await at_b.wait(600) == frames                # the rest copied by the hypervisor
    assert budget.left == 0 and mappings_holding(addresses()) <= 3
    be = net.backend_path(a.domid)
    vif_b = net.kernels[0].vifs[f"vif{b.domid}.0"]
    await net.xs_write(f"{be}/online", "0")
    await net.xs_write(f"{be}/state", str(int(S.Closing)))
    await net.wait_state(be, S.Closed)
    await eventually(lambda: budget.left == 3 - vif_b.datapath.persistent.mappings, "a's mappings back")


async def test_a_vifs_buffer_pages_take_a_few_mappings_not_one_each(net):
    a = await net.boot_domu("a")
    await net.add_vif(a.domid)
    await net.connected(a.domid)
    vif = net.kernels[0].vifs[f"vif{a.domid}.0"]
    await eventually(lambda: vif.datapath.persistent.cache.settled, "the buffer pages mapped")
    pages = vif.persistent_grants
    assert pages >= 256                                   # every receive buffer
    assert mappings_holding(vif.datapath.persistent.addresses) <= 4
    assert vif.datapath.persistent.mappings <= 4


class SlowUpstream:
    """What a vif's veth looks like to netback when the bridge is not
    reading: no room until ``open()``."""

    def __init__(self):
        self.room = 0
        self.changed = asyncio.Event()

    def tx_room(self) -> int:
        return self.room

    async def wait_room(self, frames: int) -> None:
        while self.room < frames:
            self.changed.clear()
            await self.changed.wait()

    def open(self) -> None:
        self.room = 1 << 20
        self.changed.set()


async def test_netback_stops_taking_requests_while_its_upstream_is_full(net, pair):
    a, b, eth_a, eth_b = pair
    vif_a = net.kernels[0].vifs[f"vif{a.domid}.0"]
    upstream = vif_a.upstream = SlowUpstream()
    at_b = Capture(eth_b)
    frames = [frame(60, mac_of(a.domid), seed=i) for i in range(400)]
    eth_a.transmit(frames)
    await asyncio.sleep(0.2)
    # nothing consumed: the ring is full, the rest waits in netfront's backlog
    assert at_b.frames == [] and vif_a.counters["rx_packets"] == 0
    assert eth_a.tx_core.in_flight == abi.NET_TX_RING_SIZE
    assert len(eth_a.tx_core.backlog) == 400 - abi.NET_TX_RING_SIZE and not eth_a.drops
    upstream.open()
    assert await at_b.wait(400) == frames
    assert not vif_a.drops and not eth_a.drops


async def test_spoofed_frames_are_dropped_at_the_vif(net):
    c = await net.boot_domu("c")
    await net.add_vif(c.domid, ip="10.0.0.7")
    eth = await net.connected(c.domid)
    vif = net.kernels[0].vifs[f"vif{c.domid}.0"]
    eth.transmit([frame(60, "00:16:3e:66:66:66")])
    await eventually(lambda: vif.drops["spoofed_mac"] == 1, "the spoofed frame's drop")


async def test_rate_limited_frames_wait_for_credit_and_all_arrive(net, pair):
    a, b, eth_a, eth_b = pair
    c = await net.boot_domu("c")
    await net.attach_vif(c.domid, rate="200KB/s@10ms")    # 2000 bytes per 10 ms
    # The toolstack writes libxl's form, and that is what netback reads.
    assert net.xs_read(f"{net.backend_path(c.domid)}/rate") == "2000,10000"
    eth_c = await net.connected(c.domid)
    at_b = Capture(eth_b)
    frames = [frame(1514, mac_of(c.domid), seed=i) for i in range(8)]
    eth_c.transmit(frames)
    assert await at_b.wait(8) == frames
    assert net.kernels[0].vifs[f"vif{c.domid}.0"].counters["rate_limited"] > 0


# -- teardown ------------------------------------------------------------------------------------
def peers_of(net, domid: int) -> list[int]:
    """dom0's ports bound to (or offered to) ``domid``."""
    return [p for p in net.interdomain_ports(0) if net.hv.evtchn.channel(0, p).remote_dom == domid]


def assert_nothing_left(net, domid: int) -> None:
    assert net.hv.grants.entries(domid) == []
    assert [m for m in net.hv.grants.mappings(0) if m.granter == domid] == []
    assert net.interdomain_ports(domid) == []


async def test_toolstack_detach_goes_through_closing_and_closed(net, pair):
    a, b, eth_a, _ = pair
    be, fe = net.backend_path(a.domid), net.frontend_path(a.domid)
    # libxl's device removal: online=0, backend state Closing, wait for Closed.
    await net.xs_write(f"{be}/online", "0")
    await net.xs_write(f"{be}/state", str(int(S.Closing)))
    await net.wait_state(fe, S.Closed)
    await net.wait_state(be, S.Closed)
    await eventually(lambda: net.hv.grants.entries(a.domid) == [], "the grants to be ended")
    assert_nothing_left(net, a.domid)
    assert not peers_of(net, a.domid)
    assert "eth0" not in a.netifs and f"vif{a.domid}.0" not in net.kernels[0].vifs
    assert (a.domid, "eth0", False) in net.changes
    assert eth_a.state == "closed"
    eth_a.transmit([frame(60, mac_of(a.domid))])
    assert eth_a.drops["not_connected"] == 1
    await net.xs_rm(be)
    await net.xs_rm(fe)
    # b is untouched
    _, _, _, eth_b = pair
    assert eth_b.state == "connected"


async def test_domain_death_tears_the_backend_down(net, pair):
    a, b, _, eth_b = pair
    vif = f"vif{a.domid}.0"
    assert peers_of(net, a.domid)
    # The guest dies without a word (its kernel object is only cleaned up
    # at the end of the test); the toolstack destroys it and removes the
    # backend directory of the dead frontend, if destroy has not already.
    await net.toolstack.destroy_domain(a.domid)
    if net.xs_read(f"/local/domain/0/backend/vif/{a.domid}") is not None:
        await net.xs_rm(f"/local/domain/0/backend/vif/{a.domid}")
    await eventually(lambda: vif not in net.kernels[0].vifs, "the vif to go")
    await eventually(lambda: all(m.granter != a.domid for m in net.hv.grants.mappings(0)),
                     "the ring mappings to go")
    await eventually(lambda: not peers_of(net, a.domid), "dom0's port to be closed")
    assert vif not in [v.name for v in net.hotplug.bridges["xenbr0"]]
    assert eth_b.state == "connected"



async def test_frontend_directory_removal_releases_everything(net, pair):
    a, b, _, _ = pair
    be, fe = net.backend_path(a.domid), net.frontend_path(a.domid)
    await net.xs_write(f"{be}/online", "0")
    await net.xs_rm(fe)            # netfront: removed; netback: the frontend is gone (Unknown)
    await eventually(lambda: net.hv.grants.entries(a.domid) == [], "the grants to be ended")
    assert_nothing_left(net, a.domid)
    await net.wait_state(be, S.Closed)


# -- a hostile frontend ----------------------------------------------------------------------------
def ring_of(eth):
    return eth.tx_core.ring


def write_raw(eth, slots) -> int:
    ring = ring_of(eth)
    start = ring.req_prod_pvt
    for slot in slots:
        ring.put_request(slot.pack())
    ring.push_requests()
    return start


def kick(net, kernel) -> None:
    port = int(net.xs_read(f"{net.frontend_path(kernel.domid)}/event-channel"))
    kernel.evtchn.notify(port)


def responses(eth, start: int, n: int) -> list[TxResponse]:
    sring = ring_of(eth).sring
    out = []
    for i in range(start, start + n):
        with sring.slot(i) as view:
            out.append(TxResponse.unpack(view))
    return out


def frame_slots(eth, sizes, first_id=0):
    refs = [b.gref for b in eth.tx_core.buffers[:len(sizes)]]
    out = []
    for i, size in enumerate(sizes):
        more = abi.NETTXF_more_data if i < len(sizes) - 1 else 0
        out.append(TxRequest(refs[i], 0, more, first_id + i, sum(sizes) if i == 0 else size))
    return out


ERRORS = {
    "too_many_slots": lambda eth: frame_slots(eth, [14] + [1] * 19),
    "bad_packet_size": lambda eth: frame_slots(eth, [13]),
    "grant_copy_error": lambda eth: [TxRequest(60000, 0, 0, 0, 60)],
    "frag_size": lambda eth: [TxRequest(eth.tx_core.buffers[0].gref, 0, abi.NETTXF_more_data, 0, 20),
                              TxRequest(eth.tx_core.buffers[1].gref, 0, 0, 1, 40)],
}

FATALS = {
    "more than fatal_skb_slots": (lambda eth: frame_slots(eth, [14] + [1] * 21),
                                  "malicious frontend"),
    "crossing a page": (lambda eth: [TxRequest(eth.tx_core.buffers[0].gref, 4000, 0, 0, 200)],
                        "cross page boundary"),
    "id out of range": (lambda eth: [TxRequest(eth.tx_core.buffers[0].gref, 0, 0, 999, 60)],
                        "out of range"),
    "duplicate id": (lambda eth: frame_slots(eth, [60]) + frame_slots(eth, [60]),
                     "already in flight"),
    "frame past req_prod": (lambda eth: frame_slots(eth, [60, 60])[:1],
                            "more slots than the frontend produced"),
    "req_prod a ring ahead": (None, "impossible number of requests"),
}


async def hostile(net, pair):
    c = await net.boot_domu("c")
    await net.add_vif(c.domid)
    return c, await net.connected(c.domid)


async def still_passes_traffic(net, pair) -> None:
    a, b, eth_a, eth_b = pair
    at_b = Capture(eth_b)
    sent = [frame(1514, mac_of(a.domid), seed=99)]
    eth_a.transmit(sent)
    assert await at_b.wait(1) == sent


@pytest.mark.parametrize("kind", sorted(ERRORS))
async def test_malformed_requests_get_error_responses(net, pair, kind):
    c, eth_c = await hostile(net, pair)
    vif = net.kernels[0].vifs[f"vif{c.domid}.0"]
    slots = ERRORS[kind](eth_c)
    start = write_raw(eth_c, slots)
    kick(net, c)
    await eventually(lambda: vif.drops[kind] == 1, f"netback to drop the frame as {kind}")
    await eventually(lambda: ring_of(eth_c).sring.rsp_prod == start + len(slots), "the responses")
    statuses = [r.status for r in responses(eth_c, start, len(slots))]
    assert abi.NETIF_RSP_ERROR in statuses
    if kind != "grant_copy_error":
        assert set(statuses) == {abi.NETIF_RSP_ERROR}
    assert vif.state == "connected" and eth_c.state == "connected"
    await still_passes_traffic(net, pair)
    # and the offender's vif still works for a well-formed frame
    at_a = Capture(pair[2])
    good = frame(60, mac_of(c.domid))
    eth_c.transmit([good])
    assert await at_a.wait(1) == [good]


@pytest.mark.parametrize("kind", sorted(FATALS))
async def test_protocol_violations_disable_only_that_vif(net, pair, kind, caplog):
    c, eth_c = await hostile(net, pair)
    name = f"vif{c.domid}.0"
    vif = net.kernels[0].vifs[name]
    make, message = FATALS[kind]
    if make is None:
        ring = ring_of(eth_c)
        ring.sring.req_prod = ring.sring.rsp_prod + abi.NET_TX_RING_SIZE + 44
    else:
        write_raw(eth_c, make(eth_c))
    kick(net, c)
    await eventually(lambda: vif.disabled, "the vif to be disabled")
    assert message in vif.disabled
    error = f"/local/domain/0/error/backend/vif/{c.domid}/0/error"
    await eventually(lambda: net.xs_read(error), "the error node")
    assert message in net.xs_read(error)
    assert any(f"{name}: fatal tx error: " in r.getMessage() and "disabling" in r.getMessage()
               for r in caplog.records)
    # xenbus_dev_fatal: Closing; netfront follows to Closed, then netback.
    await net.wait_state(net.backend_path(c.domid), S.Closed)
    await net.wait_state(net.frontend_path(c.domid), S.Closed)
    await eventually(lambda: name not in net.kernels[0].vifs, "the vif to go")
    await eventually(lambda: net.hv.grants.entries(c.domid) == [], "the grants to be ended")
    await still_passes_traffic(net, pair)
    assert pair[3].state == "connected"


# -- a frontend that publishes garbage ---------------------------------------------------------------
BAD_KEYS = {
    "missing tx-ring-ref": ({"tx-ring-ref": None}, "reading tx-ring-ref: missing"),
    "garbage rx-ring-ref": ({"rx-ring-ref": "0x10"}, "reading rx-ring-ref"),
    "garbage event-channel": ({"event-channel": "-3"}, "reading event-channel"),
    "no rx-copy": ({"request-rx-copy": "0"}, "rx-copy"),
    "a ref never granted": ({"tx-ring-ref": "4000"}, "mapping shared-frame ref 4000"),
    "a port never offered": ({"event-channel": "900"}, "binding event-channel 900"),
}


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
async def test_garbage_frontend_keys_are_a_xenbus_fatal_error(net, kind):
    """The frontend's keys written by hand (no netfront in that domain), as a
    misbehaving guest could write them."""
    c = await net.boot_domu("c", netfront=False)
    await net.add_vif(c.domid)
    be, fe = net.backend_path(c.domid), net.frontend_path(c.domid)
    await net.wait_state(be, S.InitWait)
    # real grants and a real port, so that only the key under test is wrong
    page = c.memory.alloc_frames(2)
    refs = await c.gnttab.grant_access([(0, g, False) for g in page])
    port = await c.evtchn.alloc_unbound(0)
    keys = {"tx-ring-ref": str(refs[0]), "rx-ring-ref": str(refs[1]), "event-channel": str(port),
            "request-rx-copy": "1", "feature-rx-notify": "1"}
    change, message = BAD_KEYS[kind]
    keys.update(change)
    for key, value in keys.items():
        if value is not None:
            await net.xs_write(f"{fe}/{key}", value)
    await net.xs_write(f"{fe}/state", str(int(S.Connected)))
    error = f"/local/domain/0/error/backend/vif/{c.domid}/0/error"
    await eventually(lambda: net.xs_read(error), "the error node")
    assert message in net.xs_read(error)
    await net.wait_state(be, S.Closing)
    assert all(m.granter != c.domid for m in net.hv.grants.mappings(0))   # nothing left mapped
    assert not peers_of(net, c.domid)                                       # nor bound
    assert f"vif{c.domid}.0" not in net.kernels[0].vifs


# -- hotplug ------------------------------------------------------------------------------------
async def test_hotplug_failure_is_reported(net):
    class Broken(LoopbackHotplug):
        async def online(self, vif, bridge, backend_path):
            raise HotplugError(f"bridge {bridge} does not exist")
    net.hotplug.__class__ = Broken
    c = await net.boot_domu("c")
    await net.add_vif(c.domid, bridge="nosuchbr")
    be = net.backend_path(c.domid)
    await eventually(lambda: net.xs_read(f"{be}/hotplug-status") == "error", "hotplug-status=error")
    assert net.xs_read(f"{be}/hotplug-error") == "bridge nosuchbr does not exist"
    error = f"/local/domain/0/error/backend/vif/{c.domid}/0/error"
    await eventually(lambda: net.xs_read(error), "the error node")
    await net.wait_state(net.frontend_path(c.domid), S.Closed)
    await eventually(lambda: net.hv.grants.entries(c.domid) == [], "the grants to be ended")
    assert net.hv.grants.mappings(0) == []


# -- values that are not text, or not numbers --------------------------------------------------
def mapped_from(net, domid: int) -> list:
    return [m for m in net.hv.grants.mappings(0) if m.granter == domid]


def backend_error(net, domid: int, devid: int = 0) -> str | None:
    """xenbus_dev_fatal's node for a vif's backend in Domain-0."""
    return net.xs_read(f"/local/domain/0/error/backend/vif/{domid}/{devid}/error")


def netback_device(net, nodename: str):
    driver = next(d for d in net.kernels[0].drivers if isinstance(d, NetbackDriver))
    return driver.devices[nodename]


def assert_vif_gone(net, domid: int) -> None:
    name = f"vif{domid}.0"
    assert name not in net.kernels[0].vifs
    assert name not in [v.name for v in net.hotplug.bridges.get("xenbr0", [])]
    assert mapped_from(net, domid) == [] and not peers_of(net, domid)


async def test_non_utf8_frontend_state_closes_the_vif_with_an_error_node(net, pair):
    a, b, _, eth_b = pair
    be, fe = net.backend_path(a.domid), net.frontend_path(a.domid)
    # the two rings and every posted rx buffer (persistent grants)
    await eventually(lambda: len(mapped_from(net, a.domid)) == 2 + abi.NET_RX_RING_SIZE,
                     "a's 258 pages mapped")
    await net.guest_writes(a, f"{fe}/state", b"4\xff")
    await eventually(lambda: backend_error(net, a.domid), "the error node")
    # xenbus_va_dev_error's "%i %s": the errno, then what failed
    assert backend_error(net, a.domid) == \
        f"22 reading {fe}/state: b'4\\xff' is not UTF-8 text"
    # netback went Closing with the data path down; a's netfront then closes
    # and ends its grants once netback is Closed
    await eventually(lambda: mapped_from(net, a.domid) == [], "the 258 mappings to be released")
    assert_vif_gone(net, a.domid)
    await net.wait_state(be, S.Closed)
    await eventually(lambda: net.hv.grants.entries(a.domid) == [], "a's grants to be ended")
    check_invariants(net.hv)
    assert eth_b.state == "connected" and f"vif{b.domid}.0" in net.kernels[0].vifs


async def test_destroying_a_domain_whose_vif_task_failed_releases_its_mappings(net, pair):
    """The report's round: a vif connected, one non-UTF-8 byte in its
    frontend's state, the domain destroyed at once. Every round gives back
    its 258 Domain-0 mappings, the vif and its bridge port."""
    a, b, _, eth_b = pair
    # a's and b's receive buffers are mapped in the background after they
    # connect: the baseline is taken once they all are
    for dom in (a, b):
        await eventually(lambda d=dom.domid: len(mapped_from(net, d)) == 2 + abi.NET_RX_RING_SIZE,
                         f"d{dom.domid}'s 258 pages mapped")
    baseline = len(net.hv.grants.mappings(0))
    for round_ in range(3):
        c = await net.boot_domu(f"c{round_}")
        await net.attach_vif(c.domid)
        await net.connected(c.domid)
        await eventually(lambda: len(mapped_from(net, c.domid)) == 2 + abi.NET_RX_RING_SIZE,
                         "c's pages mapped")
        device = netback_device(net, net.backend_path(c.domid))
        await net.guest_writes(c, f"{net.frontend_path(c.domid)}/state", b"\xff")
        # netback has read it: it reported the error (or, before, its task died)
        await eventually(lambda: backend_error(net, c.domid) or device.finished.is_set(),
                         "netback to read the state")
        await net.toolstack.destroy_domain(c.domid)
        await eventually(lambda: len(net.hv.grants.mappings(0)) == baseline,
                         "Domain-0's mappings back to what b's vif holds")
        await eventually(lambda: f"vif{c.domid}.0" not in net.kernels[0].vifs, "the vif to go")
        assert_vif_gone(net, c.domid)
        check_invariants(net.hv)
        await net.lab.close_kernel(c)
    assert eth_b.state == "connected"


async def test_a_vif_whose_task_cannot_even_fail_is_torn_down_by_its_removal(net, pair, monkeypatch):
    """A bug in netback's handling of one device (here: every reaction of
    vif a raises, its fatal-error path too) leaves that device as it was,
    connected; its task lives on, and the removal of its directory when the
    domain is destroyed still takes everything down."""
    a, b, _, eth_b = pair
    be = net.backend_path(a.domid)
    real_on_otherend, real_on_fatal = Netback.on_otherend, Netback.on_fatal

    def broken(real):
        def call(self, *args):
            if self.nodename == be:
                raise RuntimeError("a bug")
            return real(self, *args)
        return call
    monkeypatch.setattr(Netback, "on_otherend", broken(real_on_otherend))
    monkeypatch.setattr(Netback, "on_fatal", broken(real_on_fatal))
    await eventually(lambda: len(mapped_from(net, a.domid)) == 2 + abi.NET_RX_RING_SIZE,
                     "a's pages mapped")
    await net.guest_writes(a, f"{net.frontend_path(a.domid)}/state", str(int(S.Closing)))
    await eventually(lambda: backend_error(net, a.domid), "the error node")
    assert backend_error(net, a.domid) == \
        "5 handling the frontend's state: RuntimeError: a bug"
    assert len(mapped_from(net, a.domid)) == 2 + abi.NET_RX_RING_SIZE      # still connected
    await net.toolstack.destroy_domain(a.domid)
    await net.xs_rm(f"/local/domain/0/backend/vif/{a.domid}")    # the pair's vifs have no record
    await eventually(lambda: mapped_from(net, a.domid) == [], "a's mappings to be released")
    assert_vif_gone(net, a.domid)
    check_invariants(net.hv)
    assert eth_b.state == "connected"


# Every key netback reads from the frontend, and values Python's own tests
# take for numbers (or that are not text at all).
FRONTEND_KEYS = ["tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
                 "feature-rx-notify", "feature-sg", "feature-xenlab-persistent",
                 "multi-queue-num-queues", "state"]


@pytest.mark.parametrize("value", [b"\xff", "²", "٣"], ids=["non-utf8", "superscript-2",
                                                              "arabic-indic-3"])
@pytest.mark.parametrize("key", FRONTEND_KEYS)
async def test_a_frontend_key_that_is_not_a_number_fails_the_vif_and_detach_needs_no_force(
        net, key, value):
    """A hand-written frontend (no netfront in that domain) publishes one
    bad key. Netback fails the device (error node, Closing), maps and binds
    nothing, and `xl network-detach` without -f removes it although the
    frontend never answers: it waits, then removes it forcibly, as libxl."""
    c = await net.boot_domu("c", netfront=False)
    ref = common_pb2.DomainRef(domid=c.domid)
    await net.attach_vif(c.domid)
    be, fe = net.backend_path(c.domid), net.frontend_path(c.domid)
    await net.wait_state(be, S.InitWait)
    page = c.memory.alloc_frames(2)
    refs = await c.gnttab.grant_access([(0, g, False) for g in page])
    port = await c.evtchn.alloc_unbound(0)
    keys = {"tx-ring-ref": str(refs[0]), "rx-ring-ref": str(refs[1]), "event-channel": str(port),
            "request-rx-copy": "1", "feature-rx-notify": "1", "feature-sg": "1",
            "feature-xenlab-persistent": "0", "multi-queue-num-queues": "1",
            key: value, "state": value if key == "state" else str(int(S.Connected))}
    for k, v in keys.items():
        await net.guest_writes(c, f"{fe}/{k}", v)
    await eventually(lambda: backend_error(net, c.domid), "the error node")
    error = backend_error(net, c.domid)
    assert error.startswith(("22 ", "95 ")) and key in error, error   # EINVAL, EOPNOTSUPP
    await net.wait_state(be, S.Closing)
    assert_vif_gone(net, c.domid)
    await net.lab.dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=ref, device="0", timeout=0.3))
    assert net.xs_read(be) is None and net.xs_read(fe) is None
    assert not (await net.lab.dom0.domains.NetworkList(ref)).vifs
    assert_vif_gone(net, c.domid)
    check_invariants(net.hv)


async def test_a_backend_ip_node_that_is_not_text_does_not_fail_the_interface(net):
    """The ip node is Domain-0's (vif-route, antispoofing), as in Xen: the
    guest does not read it, so a driver domain's bytes there change nothing
    for the frontend, which publishes its rings and connects."""
    c = await net.boot_domu("c")
    dd = await net.boot_domu("dd", netfront=False)
    await net.attach_vif(c.domid, devid=0, backend="dd")
    be = f"/local/domain/{dd.domid}/backend/vif/{c.domid}/0"
    for k, v in {"feature-rx-copy": "1", "feature-sg": "1", "ip": b"\xff",
                 "state": str(int(S.InitWait))}.items():
        await net.guest_writes(dd, f"{be}/{k}", v)
    # Linux's xennet: rings published, then Connected (the backend's turn next).
    await net.wait_state(net.frontend_path(c.domid), S.Connected)
    assert net.xs_read(f"/local/domain/{c.domid}/error/device/vif/0/error") is None
    assert net.xs_read(f"{net.frontend_path(c.domid)}/tx-ring-ref").isdigit()


@pytest.mark.parametrize("key, value", [
    ("state", b"\xff"), ("state", "²"), ("state", "٣"), ("state", "99"),
    ("feature-rx-copy", b"\xff"), ("feature-rx-copy", "²"), ("feature-sg", b"\xff"),
])
async def test_a_backend_key_that_is_not_text_or_not_a_state_fails_only_that_interface(
        net, key, value):
    """A driver domain (not Domain-0, untrusted by its frontends) publishes
    one bad key. netfront fails that interface (error node in the guest's
    own directory, Closing) and grants it nothing; the guest's other
    interface, served by Domain-0, keeps working."""
    c = await net.boot_domu("c")
    dd = await net.boot_domu("dd", netfront=False)
    await net.add_vif(c.domid, devid=1)
    eth1 = await net.connected(c.domid, devid=1)
    await net.attach_vif(c.domid, devid=0, backend="dd")
    be = f"/local/domain/{dd.domid}/backend/vif/{c.domid}/0"
    keys = {"feature-rx-copy": "1", "feature-sg": "1", key: value,
            "state": value if key == "state" else str(int(S.InitWait))}
    for k, v in keys.items():
        await net.guest_writes(dd, f"{be}/{k}", v)
    error = f"/local/domain/{c.domid}/error/device/vif/0/error"
    await eventually(lambda: net.xs_read(error), "the error node")
    assert net.xs_read(error).split(" ", 1)[0] in ("22", "19"), net.xs_read(error)  # EINVAL, ENODEV
    await net.wait_state(net.frontend_path(c.domid), S.Closing)
    assert [g for g in net.hv.grants.entries(c.domid) if g.domid == dd.domid] == []
    assert "eth0" not in c.netifs
    assert eth1.state == "connected"
    at_c = Capture(eth1)
    sent = [frame(60, mac_of(0, 9))]
    net.kernels[0].vifs[f"vif{c.domid}.1"].transmit(sent)
    assert await at_c.wait(1) == sent
    check_invariants(net.hv)


async def test_a_vif_detached_and_attached_again_at_once_connects_every_time(net):
    """`xl network-detach` then `network-attach` of the same devid, with no
    pause: the new directories can be there before the domains' xenbus has
    handled the removal's events. Each time both ends must connect again
    (both were left in Initialising about one cycle in eight)."""
    a = await net.boot_domu("a")
    await net.attach_vif(a.domid)
    await net.connected(a.domid)
    be, fe = net.backend_path(a.domid), net.frontend_path(a.domid)
    for cycle in range(6):
        await net.toolstack.network_detach(a.domid, "0")
        await net.attach_vif(a.domid)
        await net.wait_state(be, S.Connected)
        await net.wait_state(fe, S.Connected)
        await eventually(lambda: f"vif{a.domid}.0" in net.kernels[0].vifs, f"cycle {cycle}: the vif")
