"""The bridge service: bridges (xenbr0, ...) in one asyncio process.

vif veth ends connect to one ``VethListener``; the connecting end's hello
names its bridge and its port name (``{"bridge": "xenbr0", "name":
"vif1.0"}``), as the vif hotplug script's ``brctl addif``. Each end becomes
a port: frames it delivers are forwarded by the pure core and sent to the
chosen ports' ends, one transmit per output port per input batch. A link
that closes takes its port and the port's FDB entries with it. A hello that
names no bridge joins the default (first) bridge, as Xen's vif-bridge script
picks the first bridge when the vif names none.

The gRPC API (bridge.proto, xenlab.proto.Bridge) has no authentication: it
listens on a unix socket in the rundir (or loopback) by default, as the
Linux bridge tools are reserved to the host's administrator.

With a hypervisor rundir the service registers itself in xenstore as
Domain-0, so that netback's hotplug can find it:
``/tool/xenlab/bridges/NAME/{address,grpc,pid}``, removed on a clean stop.

A bridge may have an uplink: a real TAP device (``uplink.TapDevice``) added
as a port named after the device at start and removed at stop, so that the
host's own tools reach the domains.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import grpc

from xenlab.events import server as events_server
from xenlab.events.stream import EventHub
from xenlab.osutil import wait_for_stop_signal
from xenlab.bridge import output
from xenlab.bridge.core import (PORT_FLAGS, Bridge, BridgePort, PortEvent, check_group_fwd_mask,
                                check_port_name)
from xenlab.bridge.fdb import (DEFAULT_AGEING, DEFAULT_MAX_LEARNED, PERMANENT, POLICY_LINUX,
                               FdbEntry, FdbEvent, check_ageing, check_max_learned, check_policy)
from xenlab.bridge import stp
from xenlab.bridge.patch import PatchPort
from xenlab.bridge.uplink import TapDevice, VxlanDevice, check_uplink_spec, open_uplink, uplink_port_name
from xenlab.client import HypervisorClient, Rundir
from xenlab.net.capture import DeviceCapture, directions
from xenlab.net.device import NetDevice
from xenlab.net.ethernet import ZERO, format_mac, parse_mac
from xenlab.net import tc_server
from xenlab.net.veth import VethEnd, VethError, VethListener
from xenlab.proto import agent_pb2, bridge_pb2, bridge_pb2_grpc, common_pb2, xenstore_pb2
from xenlab.rpc import handles_xen_errors, start_server
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.names import IFNAMSIZ, check_bridge_name
from xenlab.xen.xenstore_paths import BRIDGE_REGISTRY, bridge_registry_path
from xenlab.xen.netconf import parse_vlan

log = logging.getLogger(__name__)

SERVICE_NAME = bridge_pb2.DESCRIPTOR.services_by_name["Bridge"].full_name
WATCH_BACKLOG = 4096            # events queued for one watcher before it is cut off
GONE_PORTS = 1024               # removed ports whose last counters are kept


class UnlinkedPort(NetDevice):
    """The device behind a port added through the API: nothing is attached,
    so frames sent out of it are counted and dropped."""

    def transmit(self, frames: list[bytes]) -> None:
        self.drop("no_link", len(frames))

    @property
    def state(self) -> str:
        return "none"


class EventSubscription:
    """FDB events (``FdbEvent``) and, when asked, port events (``PortEvent``)
    for one watcher (a WatchEvents or Monitor stream, the MQTT publisher).
    A watcher that falls `backlog` events behind is cut off: ``get`` then
    raises ENOSPC rather than let it silently miss events."""

    def __init__(self, bridge: str | None, backlog: int = WATCH_BACKLOG,
                 fdb: bool = True, link: bool = False):
        self.bridge = bridge
        self.backlog = backlog
        self.kinds = tuple(k for k, wanted in ((FdbEvent, fdb), (PortEvent, link)) if wanted)
        self.queue: asyncio.Queue[tuple[FdbEvent, float] | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False

    def offer(self, event: FdbEvent | PortEvent, wall: float) -> None:
        if self.closed or (self.bridge and event.bridge != self.bridge) \
                or not isinstance(event, self.kinds):
            return
        if self.queue.qsize() >= self.backlog:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait((event, wall))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def get(self) -> tuple[FdbEvent | PortEvent, float] | None:
        """The next (event, unix time); None once the service stops."""
        item = await self.queue.get()
        if item is None and self.overflowed:
            raise XenError(errno.ENOSPC, f"the event watcher fell more than "
                                         f"{self.backlog} events behind")
        return item


class BridgeService:
    """Bridges behind one veth listener and one gRPC server.

    `bridges`: the names (the first is the default for requests that name
    none); `listen`: the veth address; `grpc`: the API address; `rundir`:
    a hypervisor rundir to register in xenstore, or None; `uplinks`: bridge
    name -> TAP device name, opened at start."""

    def __init__(self, bridges: Iterable[str] = ("xenbr0",), listen: str = "",
                 grpc: str = "", rundir: Path | None = None,
                 ageing: float = DEFAULT_AGEING, fdb_max: int = DEFAULT_MAX_LEARNED,
                 clock: Callable[[], float] = time.monotonic,
                 uplinks: dict[str, str] | None = None,
                 flood_rate: float = 0.0, flood_burst: float | None = None,
                 fdb_policy: str = POLICY_LINUX, vlan_filtering: Iterable[str] = (),
                 stp_bridges: Iterable[str] = (), stp_timers: dict[str, float] | None = None,
                 priorities: dict[str, int] | None = None,
                 links: Iterable[tuple[str, str]] = ()):
        names = [check_bridge_name(n) for n in bridges]
        if not names or len(set(names)) != len(names):
            raise XenError(errno.EINVAL, f"bridge names must be given and distinct: {names}")
        if not listen or not grpc:
            raise XenError(errno.EINVAL, "both a veth listen address and a gRPC address are needed")
        self.bridges: dict[str, Bridge] = {
            n: Bridge(n, ageing, fdb_max, clock=clock, flood_rate=flood_rate, flood_burst=flood_burst,
                      fdb_policy=fdb_policy)
            for n in names}
        for name in vlan_filtering:
            if name not in self.bridges:
                raise XenError(errno.ENOENT, f"VLAN filtering for {name!r}: this service has no "
                                             f"such bridge (it has {', '.join(names)})")
            self.bridges[name].set_vlan_filtering(True)
        for name, priority in (priorities or {}).items():
            self._configured(name, "priority").set_priority(priority)
        for name in stp_bridges:
            self._configured(name, "STP").set_stp(True, **(stp_timers or {}))
        self.patches = [(self._configured(a, "a link").name, self._configured(b, "a link").name)
                        for a, b in links]
        if any(a == b for a, b in self.patches):
            raise XenError(errno.EINVAL, "a link joins two different bridges")
        self.uplinks = _check_uplinks(uplinks or {}, names)
        self.default = names[0]
        self.listen = listen
        self.grpc = grpc
        self.rundir = rundir
        self.clock = clock
        self.veth_address = listen
        self.grpc_address = grpc
        self.links: dict[tuple[str, str], NetDevice] = {}
        # Told (once per batch, and at each settle) that a bridge's or its
        # ports' counters may have moved: the counters' publisher
        # (bridge.events) looks at them only then.
        self.on_traffic: list[Callable[[Bridge], None]] = []
        self._subscriptions: set[EventSubscription] = set()
        self._listener: VethListener | None = None
        self._server = None
        self._tasks: set[asyncio.Task] = set()
        self._expiry: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None       # the timer loop's sleep
        self._sleep_until: float | None = None
        self._hv: HypervisorClient | None = None
        self._captures: dict[tuple[str, str], set[DeviceCapture]] = {}
        # (bridge, last counters) of removed ports: frame accounting across hotplug.
        self.gone: collections.deque[tuple[str, bridge_pb2.BridgePortStats]] = \
            collections.deque(maxlen=GONE_PORTS)

    def _configured(self, name: str, what: str) -> Bridge:
        if name not in self.bridges:
            raise XenError(errno.ENOENT, f"{what} for {name!r}: this service has no such bridge "
                                         f"(it has {', '.join(self.bridges)})")
        return self.bridges[name]

    # -- lifecycle -------------------------------------------------------------
    async def start(self, events: EventHub | None = None) -> None:
        """`events`: the service's events (xenlab.events), served as the
        Events stream beside Bridge."""
        register = [lambda s: bridge_pb2_grpc.add_BridgeServicer_to_server(BridgeServicer(self), s)]
        names = [SERVICE_NAME]
        if events is not None:
            register.append(events_server.register(events))
            names.append(events_server.SERVICE_NAME)
        # tc on the ports' links: their egress is toward the vif.
        register.append(tc_server.register(
            tc_server.TrafficControlServicer(
                self.port_link, lambda: [(f"{br}:{port}", dev) for (br, port), dev in self.links.items()])))
        names.append(tc_server.SERVICE_NAME)
        try:
            self._open_uplinks()
            self._patch_links()
            self._listener = VethListener(self.listen, self._admit, self._attached)
            await self._listener.start()
            self.veth_address = _absolute(self._listener.bound_address)
            self._server, port = await start_server(self.grpc, register, names)
            self.grpc_address = _absolute(_bound(self.grpc, port))
            self._expiry = asyncio.create_task(self._expiry_loop())
            if self.rundir is not None:
                await self._register()
        except BaseException:
            await self.stop(grace=0)
            raise
        log.info("bridges %s: veth links on %s, gRPC on %s", ", ".join(self.bridges),
                 self.veth_address, self.grpc_address)

    async def stop(self, grace: float = 1.0) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        for (bridge, port), dev in list(self.links.items()):
            if isinstance(dev, (VethEnd, TapDevice, VxlanDevice, PatchPort)):
                dev.close()
            self._detach(bridge, port, dev)
        for task in [self._expiry, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._expiry, *self._tasks] if t is not None),
                             return_exceptions=True)
        self._expiry = None
        await self._deregister()
        for sub in list(self._subscriptions):
            sub.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> "BridgeService":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- bridges and ports -------------------------------------------------------
    def bridge(self, name: str = "") -> Bridge:
        """A bridge by name; the empty name is the default bridge."""
        bridge = self.bridges.get(name or self.default)
        if bridge is None:
            raise XenError(errno.ENOENT, f"no bridge named {name!r} "
                                         f"(this service has {', '.join(self.bridges)})")
        return bridge

    def add_port(self, bridge: str, name: str, mac: bytes = ZERO,
                 device: NetDevice | None = None) -> BridgePort:
        """Attach a device as a port; with no device the port has no link."""
        br = self.bridge(bridge)
        dev = device if device is not None else UnlinkedPort(name, mac)
        port = br.add_port(name, mac, mtu=dev.mtu)
        self.links[(br.name, name)] = dev
        dev.receiver = lambda frames: self._on_frames(br, name, dev, frames)
        self.settle(br)
        return port

    def delete_port(self, bridge: str, name: str) -> None:
        br = self.bridge(bridge)
        br.port(name)
        dev = self.links.get((br.name, name))
        if isinstance(dev, (VethEnd, TapDevice, VxlanDevice, PatchPort)):
            dev.close()
        self._detach(br.name, name, dev)
        if isinstance(dev, PatchPort) and dev.peer is not None:
            # As deleting one end of a veth pair deletes the other.
            dev.peer.close()
            for (peer_bridge, peer_port), peer_dev in list(self.links.items()):
                if peer_dev is dev.peer:
                    self._detach(peer_bridge, peer_port, peer_dev)

    def _detach(self, bridge: str, name: str, dev: NetDevice | None) -> None:
        if self.links.get((bridge, name)) is not dev:
            return      # already gone, or the name now belongs to a newer link
        del self.links[(bridge, name)]
        for capture in self._captures.pop((bridge, name), set()):
            capture.gone()
        if dev is not None:
            dev.receiver = None
        br = self.bridges[bridge]
        if name in br.ports:
            self.gone.append((bridge, port_stats(br.ports[name], dev)))
            br.delete_port(name)
            log.info("%s: port %s removed", bridge, name)
        self.settle(br)

    def link(self, bridge: str, port: str) -> NetDevice:
        br = self.bridge(bridge)
        br.port(port)
        return self.links[(br.name, port)]

    def port_link(self, name: str) -> NetDevice:
        """A port's link by the port's name, as tc names a device (port names
        are interface names: one per host), or BRIDGE:PORT."""
        bridge, _, port_name = name.rpartition(":")
        found = [dev for (br, port), dev in self.links.items()
                 if port == port_name and bridge in ("", br)]
        if len(found) != 1:
            ports = sorted({port for _, port in self.links})
            raise XenError(errno.ENOENT if not found else errno.EINVAL,
                           f"no bridge port {name!r} (ports: {', '.join(ports) or 'none'})"
                           if not found else f"more than one bridge has a port {name!r}")
        return found[0]

    def capture(self, bridge: str, port: str, direction: str = "both") -> DeviceCapture:
        """Frames on a port as its link sees them: "rx" entered the bridge
        there, "tx" left the bridge there. Ends when the port goes away."""
        br = self.bridge(bridge)
        capture = DeviceCapture(self.link(br.name, port), directions(direction))
        self._captures.setdefault((br.name, port), set()).add(capture)
        return capture

    def end_capture(self, bridge: str, port: str, capture: DeviceCapture) -> None:
        capture.close()
        self._captures.get((self.bridge(bridge).name, port), set()).discard(capture)

    def inject(self, bridge: str, port: str, frames: list[bytes]) -> None:
        """Frames entering the bridge at `port`, as if its link had received them."""
        self.link(bridge, port).deliver(frames)

    def _patch_links(self) -> None:
        """Cables between bridges (the lab's [[link]]s): a port on each,
        named to-PEER (to-PEER.N for a second cable to the same peer)."""
        for a, b in self.patches:
            name_a, name_b = self._patch_name(a, b), self._patch_name(b, a)
            end_a, end_b = PatchPort.pair(name_a, _patch_mac(a, name_a), name_b, _patch_mac(b, name_b))
            self.add_port(a, name_a, end_a.mac, end_a)
            self.add_port(b, name_b, end_b.mac, end_b)
            log.info("link %s:%s <-> %s:%s", a, name_a, b, name_b)

    def _patch_name(self, bridge: str, peer: str) -> str:
        base = f"to-{peer}"[:IFNAMSIZ - 1]
        name, n = base, 1
        while name in self.bridges[bridge].ports:
            suffix = f".{n}"
            name, n = base[:IFNAMSIZ - 1 - len(suffix)] + suffix, n + 1
        return name

    def _open_uplinks(self) -> None:
        for bridge, spec in self.uplinks.items():
            dev = open_uplink(spec)
            try:
                # No address of its own: the TAP's kernel side (or what is
                # behind a tunnel) is a host on the LAN, learned like any
                # other, not the bridge's address.
                self.add_port(bridge, dev.name, ZERO, dev)
            except BaseException:
                dev.close()
                raise
            if isinstance(dev, VxlanDevice):
                log.info("%s: uplink port %s (vxlan VNI %d on UDP %s:%d, flood to %s, mtu %d)",
                         bridge, dev.name, dev.config.vni, *dev.address,
                         ", ".join(f"{a}:{p}" for a, p in dev.config.remotes), dev.mtu)
            else:
                log.info("%s: uplink port %s (tap, mtu %d)", bridge, dev.name, dev.mtu)

    # -- the data path -----------------------------------------------------------
    def _on_frames(self, br: Bridge, port: str, dev: NetDevice, frames: list[bytes]) -> None:
        if self.links.get((br.name, port)) is not dev:
            dev.drop("detached", len(frames))
            return
        for egress, batch in br.forward_batch(port, frames).items():
            self.links[(br.name, egress)].egress(batch)
        if br.has_events or br.has_transmit:
            self.settle(br)
        else:
            for watcher in self.on_traffic:
                watcher(br)

    # -- veth links ------------------------------------------------------------------
    def _admit(self, hello: dict) -> tuple[str, dict]:
        """Refuse what `brctl addif` would refuse: an unknown bridge, a bad or
        duplicate port name."""
        name = hello.get("name")
        try:
            br = self.bridge(str(hello.get("bridge") or ""))
            check_port_name(name if isinstance(name, str) else "")
        except XenError as err:
            raise VethError(err.message) from None
        if name in br.ports:
            raise VethError(f"{br.name} already has a port named {name}")
        return name, {"bridge": br.name, "port": name}

    def _attached(self, end: VethEnd) -> None:
        br = self.bridge(str(end.peer_info.get("bridge") or ""))
        try:
            mac = parse_mac(str(end.peer_info.get("mac", "")))
        except ConfigError:
            mac = ZERO
        end.mac = mac
        try:
            vlans = parse_vlan(str(end.peer_info["vlan"])) if end.peer_info.get("vlan") else None
        except ConfigError as err:
            log.warning("%s: cannot attach %s: %s", br.name, end.name, err.message)
            end.close()
            return
        try:
            self.add_port(br.name, end.name, mac, end)
            if vlans is not None:
                # vif-bridge: the vif's vlan= sets the port's VLANs.
                br.set_port_vlans(end.name, vlans)
        except XenError as err:
            log.warning("%s: cannot attach %s: %s", br.name, end.name, err.message)
            end.close()
            return
        log.info("%s: port %s attached (%s)", br.name, end.name, json.dumps(end.peer_info))
        end.link_watchers.append(lambda _dev: self._carrier_changed(br, end))
        task = asyncio.create_task(self._watch_link(br.name, end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _carrier_changed(self, br: Bridge, end: VethEnd) -> None:
        """The vif's side of the pair went down or came back: as Linux's
        bridge on NETDEV_CHANGE (br_port_carrier_check), the port is
        disabled and its learned entries flushed, or enabled again."""
        if self.links.get((br.name, end.name)) is not end:
            return
        br.set_carrier(end.name, end.carrier)
        log.info("%s: port %s: carrier %s", br.name, end.name, "on" if end.carrier else "off")
        self.settle(br)

    async def _watch_link(self, bridge: str, end: VethEnd) -> None:
        await end.closed.wait()
        self._detach(bridge, end.name, end)

    # -- ageing and events ---------------------------------------------------------------
    async def _expiry_loop(self) -> None:
        """FDB ageing and STP's timers, each run when due; a change that may
        bring a deadline nearer (settle) wakes the loop."""
        loop = asyncio.get_running_loop()
        while True:
            delay = self._expiry_delay()
            # A future, not wait_for(event): 3.11's wait_for can swallow a
            # cancellation that races with the event, and stop() waits for us.
            self._wake = wake = loop.create_future()
            # Nothing due (no learned entry, no STP): no timer at all; the
            # change that makes something due wakes the loop (settle).
            self._sleep_until = math.inf if delay is None else self.clock() + delay
            timer = None if delay is None else loop.call_later(delay, _resolve, wake)
            try:
                await wake
            finally:
                if timer is not None:
                    timer.cancel()
                self._wake = self._sleep_until = None
            for br in self.bridges.values():
                br.stp_tick()
                br.expire()
                self.settle(br)

    def _expiry_delay(self) -> float | None:
        """Seconds until the next FDB entry ages out or STP timer falls due;
        None when none will."""
        due = [t for br in self.bridges.values() if (t := _next_deadline(br)) is not None]
        if not due:
            return None
        return max(0.0, min(due) - self.clock())

    def subscribe(self, bridge: str = "", backlog: int = WATCH_BACKLOG, fdb: bool = True,
                  link: bool = False) -> EventSubscription:
        """FDB events (and port events, with `link`) of one bridge (or all,
        for the empty name) from now on."""
        if bridge:
            self.bridge(bridge)
        sub = EventSubscription(bridge or None, backlog, fdb, link)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: EventSubscription) -> None:
        self._subscriptions.discard(sub)

    def settle(self, br: Bridge) -> None:
        """After anything happened to a bridge: send the frames it sends of
        its own (STP's BPDUs) and hand its events to the watchers."""
        for port, frames in br.pop_transmit().items():
            self.links[(br.name, port)].egress(frames)
        if self._wake is not None:
            due = _next_deadline(br)
            if due is not None and due < self._sleep_until:
                _resolve(self._wake)    # a timer now falls due before the loop would look
        for watcher in self.on_traffic:
            watcher(br)
        self.publish(br)

    def publish(self, br: Bridge) -> None:
        """Hand the bridge's pending FDB and port events to every watcher
        (none: they are dropped, so the backlogs never fill)."""
        events = [*br.pop_port_events(), *br.fdb.pop_events()]
        if not events or not self._subscriptions:
            return
        # Events carry the bridge's clock; watchers want wall time.
        offset = time.time() - self.clock()
        events.sort(key=lambda e: e.at)
        for event in events:
            for sub in list(self._subscriptions):
                sub.offer(event, event.at + offset)

    # -- xenstore registration -------------------------------------------------------------
    async def _register(self) -> None:
        rundir = Rundir(Path(self.rundir))
        address = rundir.read_address()
        self._hv = HypervisorClient.connect(address, 0, rundir.read_dom0_secret())
        try:
            await self._write_registration()
        except grpc.aio.AioRpcError as err:
            raise ConnectionError(f"cannot register in the xenstore of the hypervisor at "
                                  f"{address}: {err.code().name}: {err.details()}") from None
        log.info("registered %s under %s", ", ".join(self.bridges), BRIDGE_REGISTRY)

    async def _write_registration(self) -> None:
        xs = self._hv.xenstore
        for name in self.bridges:
            base = bridge_registry_path(name)
            await xs.Write(xenstore_pb2.WriteRequest(path=base, value=b""))
            # Driver domains other than dom0 run netback too: let every domain read.
            await xs.SetPerms(xenstore_pb2.SetPermsRequest(
                path=base, perms=[xenstore_pb2.Perm(domid=0, perm="r")]))
            for key, value in (("address", self.veth_address), ("grpc", self.grpc_address),
                               ("pid", str(os.getpid()))):
                await xs.Write(xenstore_pb2.WriteRequest(path=bridge_registry_path(name, key),
                                                         value=value.encode()))

    async def _deregister(self) -> None:
        if self._hv is None:
            return
        for name in self.bridges:
            try:
                await self._hv.xenstore.Rm(xenstore_pb2.PathRequest(path=bridge_registry_path(name)))
            except Exception as err:      # the hypervisor may already be gone
                log.warning("could not remove %s from xenstore: %s", bridge_registry_path(name), err)
        await self._hv.close()
        self._hv = None


def _next_deadline(br: Bridge) -> float | None:
    """When the bridge's ageing or STP next has work: O(1) (the FDB's LRU head)."""
    due = [t for t in (br.fdb.next_expiry(), br.next_stp_deadline()) if t is not None]
    return min(due) if due else None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _patch_mac(bridge: str, port: str) -> bytes:
    """A stable, locally administered address for a link's port."""
    digest = hashlib.sha256(f"{bridge}/{port}".encode()).digest()
    return bytes([0x02]) + digest[:5]


def _check_uplinks(uplinks: dict[str, str], bridges: list[str]) -> dict[str, str]:
    """bridge -> uplink spec (``tap:NAME``, a bare TAP name, or ``vxlan:...``),
    each in its full form."""
    checked = {}
    for bridge, spec in uplinks.items():
        if bridge not in bridges:
            raise XenError(errno.ENOENT, f"uplink for {bridge!r}: this service has no such bridge "
                                         f"(it has {', '.join(bridges)})")
        try:
            checked[bridge] = check_uplink_spec(spec)
        except ValueError as err:
            raise XenError(errno.EINVAL, f"uplink for {bridge!r}: {err}") from None
    ports = [uplink_port_name(spec) for spec in checked.values()]
    if len(set(ports)) != len(ports):
        raise XenError(errno.EINVAL, f"one device cannot be the uplink of two bridges: {ports}")
    return checked


def _bound(address: str, port: int) -> str:
    if not address.startswith("unix:") and address.endswith(":0"):
        return f"{address.rsplit(':', 1)[0]}:{port}"
    return address


def _absolute(address: str) -> str:
    if address.startswith("unix:"):
        return "unix:" + os.path.abspath(address[5:])
    return address


# -- the gRPC adapter ------------------------------------------------------------------------
def _mac(text: str) -> bytes:
    return parse_mac(text)          # a ConfigError: EINVAL


def port_stats(port: BridgePort, dev: NetDevice | None) -> bridge_pb2.BridgePortStats:
    return bridge_pb2.BridgePortStats(
        name=port.name, drops=dict(port.drops), link=dev.stats() if dev is not None else {},
        **port.stats(), **port.flood_stats())


def port_info(port: BridgePort, dev: NetDevice | None, br: Bridge | None = None) -> bridge_pb2.BridgePortInfo:
    veth = isinstance(dev, VethEnd)
    info = _port_info(port, dev, veth)
    tree = br.stp if br is not None else None
    if tree is not None and port.name in tree.ports:
        vector = tree.ports[port.name]
        info.role = tree.port_role(port)
        info.designated_root = bridge_id_text(vector.designated_root)
        info.designated_bridge = bridge_id_text(vector.designated_bridge)
        info.designated_port = vector.designated_port
        info.designated_cost = vector.designated_cost
        info.port_id = vector.port_id
    return info


def bridge_id_text(bid: bytes) -> str:
    return bid[:2].hex() + "." + bid[2:].hex()


def _port_info(port: BridgePort, dev: NetDevice | None, veth: bool) -> bridge_pb2.BridgePortInfo:
    return bridge_pb2.BridgePortInfo(
        name=port.name, port_no=port.port_no, mac=format_mac(port.mac), learning=port.learning,
        flood=port.flood, mcast_flood=port.mcast_flood, bcast_flood=port.bcast_flood,
        hairpin=port.hairpin, isolated=port.isolated, locked=port.locked, state=port.state,
        priority=port.priority, cost=port.cost, carrier=port.carrier, mtu=port.mtu,
        vlans=[bridge_pb2.PortVlan(vid=vid, pvid=vid == port.pvid, untagged=untagged)
               for vid, untagged in sorted(port.vlans.items())],
        link="veth" if veth else "tap" if isinstance(dev, TapDevice) else
        "vxlan" if isinstance(dev, VxlanDevice) else
        "patch" if isinstance(dev, PatchPort) else "none",
        peer=json.dumps(dev.peer_info, sort_keys=True) if veth else "")


def fdb_record(br: Bridge, entry: FdbEntry, now: float) -> bridge_pb2.FdbRecord:
    record = bridge_pb2.FdbRecord(
        mac=format_mac(entry.mac), bridge=br.name, port=entry.port,
        port_no=br.ports[entry.port].port_no, static=entry.static, sticky=entry.sticky,
        state=entry.state, vlan=entry.vid, learned=entry.learned,
        used=now - entry.used, updated=now - entry.updated)
    left = br.fdb.expires_in(entry, now)
    if left is not None:
        record.expires_in = left
    return record


def fdb_event(event: FdbEvent, wall: float) -> bridge_pb2.FdbEvent:
    return bridge_pb2.FdbEvent(
        kind=event.kind, bridge=event.bridge, mac=format_mac(event.mac), port=event.port,
        old_port=event.old_port, static=event.static, time=wall, vlan=event.vid,
        sticky=event.sticky, permanent=event.local)


class BridgeServicer(bridge_pb2_grpc.BridgeServicer):
    def __init__(self, service: BridgeService):
        self.service = service

    def _port_info(self, br: Bridge, name: str) -> bridge_pb2.BridgePortInfo:
        return port_info(br.port(name), self.service.links.get((br.name, name)), br)

    def _bridge_info(self, br: Bridge) -> bridge_pb2.BridgeInfo:
        return bridge_pb2.BridgeInfo(
            name=br.name, bridge_id=br.bridge_id, mac=format_mac(br.mac), stp=br.stp_enabled,
            ports=[self._port_info(br, n) for n in br.ports], ageing=br.fdb.ageing,
            fdb_max=br.fdb.max_learned, fdb_entries=len(br.fdb), fdb_learned=br.fdb.n_learned,
            fdb_policy=br.fdb.policy, group_fwd_mask=br.group_fwd_mask, priority=br.priority,
            vlan_filtering=br.vlan_filtering, veth_address=self.service.veth_address,
            **self._stp_info(br))

    @staticmethod
    def _stp_info(br: Bridge) -> dict:
        tree = br.stp
        if tree is None:
            return {}
        return dict(root_id=bridge_id_text(tree.designated_root), root_port=tree.root_port,
                    root_path_cost=tree.root_path_cost, topology_change=tree.topology_change,
                    hello_time=tree.hello_time, max_age=tree.max_age, forward_delay=tree.forward_delay)

    @handles_xen_errors
    async def AddPort(self, request, context):
        mac = _mac(request.mac) if request.mac else ZERO
        br = self.service.bridge(request.bridge)
        self.service.add_port(br.name, request.port, mac)
        return self._port_info(br, request.port)

    @handles_xen_errors
    async def DeletePort(self, request, context):
        self.service.delete_port(request.bridge, request.port)
        return common_pb2.Empty()

    @handles_xen_errors
    async def ShowBridges(self, request, context):
        if request.bridge:
            bridges = [self.service.bridge(request.bridge)]
        else:
            bridges = list(self.service.bridges.values())
        infos = [self._bridge_info(br) for br in bridges]
        return bridge_pb2.BridgeList(bridges=infos, text=output.format_brctl_show(infos))

    @handles_xen_errors
    async def ShowFdb(self, request, context):
        br = self.service.bridge(request.bridge)
        if request.port:
            br.port(request.port)
        br.expire()
        now = br.clock()
        records = [fdb_record(br, entry, now) for entry in br.fdb
                   if not request.port or entry.port == request.port]
        records.sort(key=lambda r: (r.port_no, r.mac, r.vlan))
        self.service.settle(br)
        return bridge_pb2.FdbTable(entries=records,
                                   text=output.format_fdb_show(records, request.stats))

    @handles_xen_errors
    async def SetAgeing(self, request, context):
        br = self.service.bridge(request.bridge)
        br.set_ageing(request.seconds)
        br.expire()
        self.service.settle(br)
        return common_pb2.Empty()

    @handles_xen_errors
    async def AddStatic(self, request, context):
        br = self.service.bridge(request.bridge)
        if not request.port:
            raise XenError(errno.EINVAL, "a static FDB entry needs a port")
        br.add_static(_mac(request.mac), request.port)
        self.service.settle(br)
        return common_pb2.Empty()

    @handles_xen_errors
    async def DeleteStatic(self, request, context):
        br = self.service.bridge(request.bridge)
        br.delete_static(_mac(request.mac))
        self.service.settle(br)
        return common_pb2.Empty()

    @handles_xen_errors
    async def FdbAdd(self, request, context):
        br = self.service.bridge(request.bridge)
        if not request.port:
            raise XenError(errno.EINVAL, "an FDB entry needs a port (dev PORT)")
        entry = br.fdb_add(_mac(request.mac), request.port, request.state or PERMANENT,
                           request.sticky, request.vlan, request.replace)
        self.service.settle(br)
        return fdb_record(br, entry, br.clock())

    @handles_xen_errors
    async def FdbDelete(self, request, context):
        br = self.service.bridge(request.bridge)
        br.fdb_delete(_mac(request.mac), request.port or None, request.vlan)
        self.service.settle(br)
        return common_pb2.Empty()

    @handles_xen_errors
    async def SetBridge(self, request, context):
        br = self.service.bridge(request.bridge)
        # Check everything before changing anything.
        if request.HasField("ageing"):
            check_ageing(request.ageing)
        if request.HasField("fdb_max"):
            check_max_learned(request.fdb_max)
        if request.fdb_policy:
            check_policy(request.fdb_policy)
        for name, bounds in (("hello_time", stp.HELLO_TIME_RANGE), ("forward_delay", stp.FORWARD_DELAY_RANGE),
                             ("max_age", stp.MAX_AGE_RANGE)):
            if request.HasField(name):
                stp.check_time(name, getattr(request, name), bounds)
        if request.HasField("priority") and request.priority > 0xFFFF:
            raise XenError(errno.ERANGE, f"bridge priority {request.priority} is outside 0..65535")
        if request.HasField("group_fwd_mask"):
            check_group_fwd_mask(request.group_fwd_mask)
        if request.HasField("group_fwd_mask"):
            br.set_group_fwd_mask(request.group_fwd_mask)
        br.fdb.set_limit(request.fdb_max if request.HasField("fdb_max") else None,
                         request.fdb_policy or None)
        if request.HasField("ageing"):
            br.set_ageing(request.ageing)
        if request.HasField("vlan_filtering"):
            br.set_vlan_filtering(request.vlan_filtering)
        if request.HasField("priority"):
            br.set_priority(request.priority)
        timers = {k: getattr(request, k) for k in ("hello_time", "forward_delay", "max_age")
                  if request.HasField(k)}
        if request.HasField("stp") or timers:
            br.set_stp(request.stp if request.HasField("stp") else br.stp_enabled, **timers)
        self.service.settle(br)
        return self._bridge_info(br)

    @handles_xen_errors
    async def SetPortVlan(self, request, context):
        br = self.service.bridge(request.bridge)
        if request.add:
            br.vlan_add(request.port, request.vid, request.vid_end or None, request.pvid,
                        request.untagged)
        else:
            br.vlan_delete(request.port, request.vid, request.vid_end or None)
        self.service.settle(br)
        return self._port_info(br, request.port)

    @handles_xen_errors
    async def SetPortFlags(self, request, context):
        br = self.service.bridge(request.bridge)
        flags = {name: getattr(request, name) for name in PORT_FLAGS if request.HasField(name)}
        br.set_port_flags(
            request.port, state=request.state or None,
            priority=request.priority if request.HasField("priority") else None,
            cost=request.cost if request.HasField("cost") else None, **flags)
        self.service.settle(br)
        return self._port_info(br, request.port)

    @handles_xen_errors
    async def Stats(self, request, context):
        if request.bridge:
            bridges = [self.service.bridge(request.bridge)]
        else:
            bridges = list(self.service.bridges.values())
        return bridge_pb2.BridgeStatsReply(bridges=[self._counters(br) for br in bridges])

    def _counters(self, br: Bridge) -> bridge_pb2.BridgeCounters:
        fdb = dict(br.fdb.counters)
        fdb["entries"] = len(br.fdb)
        ports = [port_stats(port, self.service.links.get((br.name, port.name)))
                 for port in br.ports.values()]
        gone = [stats for bridge, stats in self.service.gone if bridge == br.name]
        return bridge_pb2.BridgeCounters(name=br.name, counters=dict(br.counters),
                                         drops=dict(br.drops), fdb=fdb, ports=ports, gone=gone)

    @handles_xen_errors
    async def Flush(self, request, context):
        br = self.service.bridge(request.bridge)
        removed = br.flush(request.port or None, request.include_static)
        self.service.settle(br)
        return bridge_pb2.FlushFdbReply(removed=removed)

    @handles_xen_errors
    async def WatchEvents(self, request, context):
        sub = self.service.subscribe(request.bridge)
        try:
            # As a xenstore watch fires once when set: the watch is in place.
            yield bridge_pb2.FdbEvent(kind="sync", bridge=request.bridge, time=time.time())
            while True:
                item = await sub.get()
                if item is None:
                    return
                event, wall = item
                yield fdb_event(event, wall)
        finally:
            self.service.unsubscribe(sub)


    @handles_xen_errors
    async def Monitor(self, request, context):
        sub = self.service.subscribe(request.bridge, fdb=request.fdb, link=request.link)
        try:
            yield bridge_pb2.BridgeEvent(fdb=bridge_pb2.FdbEvent(kind="sync", bridge=request.bridge,
                                                                 time=time.time()))
            while True:
                item = await sub.get()
                if item is None:
                    return
                event, wall = item
                if isinstance(event, PortEvent):
                    yield bridge_pb2.BridgeEvent(link=bridge_pb2.PortEvent(
                        kind=event.kind, bridge=event.bridge, time=wall,
                        port=port_info(event.port, self.service.links.get((event.bridge, event.port.name)))))
                else:
                    yield bridge_pb2.BridgeEvent(fdb=fdb_event(event, wall))
        finally:
            self.service.unsubscribe(sub)

    @handles_xen_errors
    async def Capture(self, request, context):
        capture = self.service.capture(request.bridge, request.port, request.direction)
        try:
            # Headers now: the tap is in place, so a client may start traffic.
            await context.send_initial_metadata(())
            sent = 0
            async for frame in capture:
                yield agent_pb2.CapturedFrame(data=frame.data, timestamp=frame.timestamp,
                                              direction=frame.direction, interface=frame.interface)
                sent += 1
                if request.count and sent >= request.count:
                    return
        finally:
            self.service.end_capture(request.bridge, request.port, capture)

    @handles_xen_errors
    async def Inject(self, request_iterator, context):
        bridge = port = None
        accepted = 0
        async for message in request_iterator:
            if port is None:
                bridge, port = message.bridge, message.port
                self.service.link(bridge, port)          # unknown bridge/port: NOT_FOUND now
            if not 14 <= len(message.data) <= 65535:
                raise XenError(errno.EINVAL, f"frame {accepted + 1} has {len(message.data)} bytes; "
                                             f"a frame has 14..65535")
            self.service.inject(bridge, port, [message.data])
            accepted += 1
        return agent_pb2.InjectSummary(accepted=accepted)


async def serve(service: BridgeService, ready: Callable[[BridgeService], None] | None = None,
                events: EventHub | None = None) -> None:
    """Run until SIGINT/SIGTERM, then close every link and deregister."""
    await service.start(events)
    if ready is not None:
        ready(service)
    try:
        await wait_for_stop_signal()
    finally:
        log.info("shutting down: %d link(s)", len(service.links))
        await service.stop()
