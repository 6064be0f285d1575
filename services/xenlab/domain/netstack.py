"""The guest network: one IpStack per addressed interface, run on asyncio.

The domain kernel's network devices (``kernel.netifs`` in a domU: netfront's
eth0, eth1...; ``kernel.vifs`` in a driver domain: netback's vifD.N) are the
wires; ``xenlab.net.stack.IpStack`` is the sans-I/O protocol core. This
adapter feeds each stack the frames its device receives, puts the stack's
output on the device, runs the stack's ARP timers at ``next_deadline()``
(one timer per stack, re-armed after every call, never a polling loop), and
turns the stack's events into the results of ``ping`` and ``send_udp``.

The stacks are joined by a ``xenlab.net.router.Router``, the host's
routing: it picks the interface a packet leaves by, and with
``sysctl.net.ipv4.ip_forward=1`` on the kernel command line it forwards
between the interfaces. The command line's ``ip=`` (Linux's ipconfig) gives
an interface its address and its default gateway; nothing else does (the
backend's ip node is Domain-0's, for anti-spoofing, and never read here).

An interface without an address still exists here, for inject, capture and
counters. A backend vif is never given a stack and its receiver is left to
netback, which bridges it.

Errors are XenErrors, so the guest agent maps them with the one mapping:
EINVAL for bad arguments, ENOENT for an unknown interface, EADDRNOTAVAIL
(FAILED_PRECONDITION) when there is no address to send from.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import AsyncIterator, Callable, Iterable

from xenlab import eventloop
from xenlab.domain import traffic
from xenlab.domain.saved_state import SavedInterface
from xenlab.net import perf
from xenlab.net.capture import DeviceCapture, TappedFrame
from xenlab.net.device import NetDevice
from xenlab.net.ethernet import max_frame_len
from xenlab.net.icmp import ICMP_ECHO, ICMP_HLEN
from xenlab.net.ipconfig import GuestNetConfig, parse_cmdline
from xenlab.net.ipv4 import DEFAULT_TTL, IP_HLEN, IP_MAXPACKET, IPPROTO_ICMP
from xenlab.net.route import Route
from xenlab.net.router import Router
from xenlab.net.stack import (AddressConflict, ArpFailed, EchoReply, IcmpError, IpStack,
                              StackConfig, UdpDatagram)
from xenlab.xen.abi import ETH_HLEN
from xenlab.xen.errors import ConfigError, XenError

log = logging.getLogger(__name__)

PING_MAX_COUNT = 100_000
PING_MAX_SIZE = IP_MAXPACKET - IP_HLEN - ICMP_HLEN     # 65507, as ping(8) refuses beyond
PING_MIN_INTERVAL = 0.0001
UDP_MAX_PAYLOAD = IP_MAXPACKET - IP_HLEN - 8           # 65507
MAX_PERF_BATCH = 256                                   # datagrams handed to the device at once
PERF_MAX = {"rate": 100e9, "duration": 86400.0, "interval": 3600.0}
PERF_SERVE_TIMEOUT = 10.0
PERF_END_GAP = 0.01                                    # seconds between end-of-test datagrams
CAPTURE_QUEUE = 1024                                   # frames a slow capture reader may lag

DIRECTIONS = ("tx", "rx")


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    rtts: list[tuple[int, float]]      # (seq, seconds) in sequence order
    error: str = ""
    src: str = ""                       # the address the requests went out from
    unreachable: bool = False           # ARP for the next hop failed: ping's "Destination Host Unreachable"
    errors: list["PingError"] = field(default_factory=list)   # ICMP errors about the requests


@dataclass(frozen=True)
class PingError:
    """An ICMP error about request ``seq``, from ``src`` (a router on the way
    or the destination)."""
    seq: int
    src: str
    type: int
    code: int


@dataclass(frozen=True)
class UdpResult:
    sport: int                          # the port we sent from
    replied: bool = False
    reply: bytes = b""
    src: str = ""
    reply_sport: int = 0
    rtt: float = 0.0


@dataclass(frozen=True)
class InjectResult:
    accepted: int
    dropped: int
    drops: dict[str, int]


@dataclass
class _Interface:
    device: NetDevice
    bridged: bool                       # a backend vif: netback owns its receiver
    stack: IpStack | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float = math.inf
    receiver: Callable[[list[bytes]], None] | None = None    # ours, unless bridged
    unaddressed: int = 0                # frames received with no stack to take them
    udp_waiters: dict[int, "_UdpWait"] = field(default_factory=dict)
    udp_listeners: dict[int, tuple] = field(default_factory=dict)    # port -> (socket, callback)
    captures: set["Capture"] = field(default_factory=set)
    was_up: bool = True                 # the device's link, as last seen
    on_link: Callable | None = None     # our watcher of it

    @property
    def name(self) -> str:
        return self.device.name


class _Ping:
    """One ping run: what went out under its ICMP id, what came back."""

    def __init__(self, ident: int, iface: _Interface, dst: IPv4Address, count: int,
                 ttl: int = DEFAULT_TTL, on_reply: Callable[[int, float], None] | None = None):
        self.ident = ident
        self.on_reply = on_reply
        self.ttl = ttl
        self.iface = iface
        self.dst = dst
        self.count = count
        self.transmitted = 0
        self.sent: dict[int, tuple[int, float]] = {}    # wire seq -> (seq, send time)
        self.rtts: dict[int, float] = {}
        self.error = ""
        self.unreachable = False
        self.errors: list[PingError] = []
        self.done = asyncio.Event()                     # all replies in, or the interface left

    def sending(self, seq: int, now: float) -> int:
        wire_seq = seq & 0xFFFF                         # ping's 16-bit icmp_seq wraps
        self.sent[wire_seq] = (seq, now)
        self.transmitted += 1
        return wire_seq

    def reply(self, event: EchoReply) -> None:
        entry = self.sent.get(event.seq)
        if entry is None or entry[0] in self.rtts:
            return                                      # unknown or duplicate (ping's DUP!)
        seq, sent_at = entry
        self.rtts[seq] = max(0.0, event.time - sent_at)
        if self.on_reply is not None:
            self.on_reply(seq, self.rtts[seq])
        if len(self.rtts) >= self.count:
            self.done.set()

    def icmp_error(self, event: IcmpError) -> None:
        """An error quoting one of our requests: ping prints it for that
        icmp_seq, and a request answered by an error waits no longer."""
        entry = self.sent.get(_quoted_echo_seq(event.quoted, self.ident))
        if entry is None or entry[0] in self.rtts or any(e.seq == entry[0] for e in self.errors):
            return
        self.errors.append(PingError(entry[0], str(event.src), event.type, event.code))
        if len(self.rtts) + len(self.errors) >= self.count:
            self.done.set()

    def abort(self, error: str) -> None:
        self.error = self.error or error
        self.done.set()

    def host_unreachable(self, hop: IPv4Address) -> None:
        self.error = f"arp: no reply from {hop}"
        self.unreachable = True

    def result(self) -> PingResult:
        return PingResult(self.transmitted, len(self.rtts), sorted(self.rtts.items()), self.error,
                          str(self.iface.stack.config.address.ip), self.unreachable,
                          sorted(self.errors, key=lambda e: e.seq))


def _quoted_echo_seq(quoted: bytes, ident: int) -> int | None:
    """The wire sequence number of the echo request with ``ident`` that an
    ICMP error quotes (its IP header and at least 8 bytes of ICMP), if any."""
    if len(quoted) < IP_HLEN or quoted[0] >> 4 != 4:
        return None
    hlen = (quoted[0] & 0x0F) * 4
    echo = quoted[hlen:hlen + ICMP_HLEN]
    if quoted[9] != IPPROTO_ICMP or len(echo) < ICMP_HLEN or echo[0] != ICMP_ECHO:
        return None
    if int.from_bytes(echo[4:6], "big") != ident:
        return None
    return int.from_bytes(echo[6:8], "big")


class _UdpWait:
    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.at = 0.0
        self.error = ""


class Capture(DeviceCapture):
    """A DeviceCapture that its interface's entry knows about, so that the
    interface going away ends it."""

    def __init__(self, net: "GuestNetwork", iface: "_Interface", wanted: frozenset[str],
                 limit: int = CAPTURE_QUEUE):
        super().__init__(iface.device, wanted, limit)
        self._iface = iface
        iface.captures.add(self)

    def _interface_gone(self) -> None:
        self.gone()

    def close(self) -> None:
        super().close()
        self._iface.captures.discard(self)


GONE_INTERFACES = 1024      # interfaces that went away whose last counters are kept


class GoneDevice(NetDevice):
    """The counters of an interface that went away, for frame accounting
    across hotplug (Linux forgets them with the device). They are the
    device's own: drops it still counts while it winds down (a netfront
    giving its rings back) show here."""

    def __init__(self, device: NetDevice, stack_drops: dict[str, int], unaddressed: int,
                 ip: str | None = None):
        super().__init__(device.name, device.mac, device.mtu)
        self.origin = weakref.ref(device)
        self.counters = device.counters
        self.drops = device.drops
        self.qdisc_counters = device.qdisc_counters
        self.ip = ip                    # the address it had, "A.B.C.D/LEN"
        self.peer = getattr(device, "peer", "")
        self.stack_drops = dict(stack_drops)
        self.unaddressed = unaddressed

    @property
    def state(self) -> str:
        return "gone"

    def transmit(self, frames: list[bytes]) -> None:
        self.drop("gone", len(frames))


class GuestNetwork:
    def __init__(self, clock: Callable[[], float] = time.monotonic, cmdline: str = "",
                 **stack_options):
        """``clock`` drives the stacks (ARP timers, echo reply times); seconds,
        any epoch. ``cmdline`` is the kernel command line (ip=, ip_forward).
        ``stack_options`` go to every StackConfig (arp_retry...)."""
        self.clock = clock
        self.stack_options = stack_options
        try:
            self.netconf = parse_cmdline(cmdline)
        except ConfigError as err:
            # The toolstack checked it; a kernel started by hand logs and goes on, as Linux does.
            log.error("kernel command line: %s: ignored", err.message)
            self.netconf = GuestNetConfig()
        self.router = Router(forwarding=self.netconf.ip_forward)
        self._ifaces: dict[str, _Interface] = {}
        self._pings: dict[int, _Ping] = {}
        self._idents = itertools.count(1)
        self._ifindexes = itertools.count(2)     # 1 is lo's, in every Linux namespace
        self._kernel = None
        self.gone: collections.deque[GoneDevice] = collections.deque(maxlen=GONE_INTERFACES)

    # -- interfaces appearing and going away ----------------------------------------
    def attach(self, kernel) -> None:
        """Follow a domain kernel's interfaces: the ones it has now, and the
        ones ``kernel.on_netif_change`` announces later."""
        self._kernel = kernel
        # A resumed kernel's suspend record: the stacks it had, by interface.
        self._resumed = {i.name: i for i in getattr(kernel, "resumed_state", None) or ()}
        savers = getattr(kernel, "suspend_savers", None)
        if savers is not None:
            savers.append(self.save_state)
        for device in getattr(kernel, "netifs", {}).values():
            self.add(device)
        for device in getattr(kernel, "vifs", {}).values():
            self.add(device, bridged=True)
        changes = getattr(kernel, "on_netif_change", None)
        if changes is not None:
            changes.append(self._on_netif_change)

    def _on_netif_change(self, name: str, device: NetDevice | None) -> None:
        if device is None:
            iface = self._ifaces.get(name)
            if iface is not None:
                self.gone.append(GoneDevice(iface.device, iface.stack.drops() if iface.stack else {},
                                            iface.unaddressed,
                                            str(iface.stack.config.address) if iface.stack else None))
            self.remove(name)
        else:
            self.add(device, bridged=self._is_backend(name, device))

    def _is_backend(self, name: str, device: NetDevice) -> bool:
        vifs = getattr(self._kernel, "vifs", {})
        netifs = getattr(self._kernel, "netifs", {})
        if vifs.get(name) is device:
            return True
        if netifs.get(name) is device:
            return False
        # Announced before it was filed: Xen's vifD.N name, or the driver
        # domain's end of a vif's veth pair (vethD.N).
        return name.startswith(("vif", "veth"))

    def add(self, device: NetDevice, bridged: bool = False) -> None:
        if any(g.origin() is device for g in self.gone):
            # Back (a netfront reconnected): its counters go on in the device.
            self.gone = collections.deque((g for g in self.gone if g.origin() is not device),
                                          maxlen=GONE_INTERFACES)
        if device.name in self._ifaces:
            self.remove(device.name)
        iface = _Interface(device, bridged)
        self._ifaces[device.name] = iface
        if not device.ifindex:
            device.ifindex = next(self._ifindexes)
        if bridged:
            return
        iface.stack = self._make_stack(device)
        iface.receiver = device.receiver = lambda frames: self._on_frames(iface, frames)
        if iface.stack is not None:
            self.router.add(device.name, iface.stack)
            self._after(iface, iface.stack.link_up())
            iface.was_up = device.link_up
            iface.on_link = lambda dev: self._on_link(iface)
            device.link_watchers.append(iface.on_link)

    def _on_link(self, iface: _Interface) -> None:
        """The interface came back up (set up, or its carrier returned):
        announce our address again, as Linux's arp_netdev_event does on
        NETDEV_UP and NETDEV_CHANGE."""
        was, iface.was_up = iface.was_up, iface.device.link_up
        if iface.was_up and not was and self._ifaces.get(iface.name) is iface:
            self._after(iface, iface.stack.link_up())

    def save_state(self) -> list[SavedInterface]:
        """What each stack must keep across a suspend, for the kernel's
        suspend record: its configuration, its ARP cache, its counters."""
        now, out = self.clock(), []
        for name, iface in self._ifaces.items():
            stack = iface.stack
            if stack is None:
                continue
            c = stack.config
            out.append(SavedInterface(
                name, c.mac, c.address, c.gateway, c.mtu, c.forwarding,
                [(r.dst, r.gateway) for r in c.routes],
                [(ip, mac, expires - now) for ip, (mac, expires) in stack.arp_cache().items()],
                dict(stack.counters)))
        return out

    def _resumed_stack(self, device: NetDevice) -> IpStack | None:
        """The stack a resumed kernel had on ``device``, from its suspend
        record (once: a later reconnect starts from the command line)."""
        saved = self._resumed.pop(device.name, None)
        if saved is None or saved.mac != device.mac:
            return None
        config = StackConfig(mac=device.mac, address=saved.address, mtu=device.mtu,
                             gateway=saved.gateway,
                             routes=tuple(Route(net, via) for net, via in saved.routes),
                             forwarding=saved.forwarding, **self.stack_options)
        stack = IpStack(config, self.clock)
        stack.resume(saved.neighbours, saved.counters)
        log.info("%s: resumed %s with %d ARP entries from the suspend record", device.name,
                 saved.address, len(saved.neighbours))
        return stack

    def _make_stack(self, device: NetDevice) -> IpStack | None:
        if self._resumed:
            try:
                stack = self._resumed_stack(device)
            except ValueError as err:
                log.error("%s: the suspend record's stack is unusable: %s", device.name, err)
                stack = None
            if stack is not None:
                return stack
        # The guest's own configuration only: ip= on its kernel command
        # line. The backend's ip node is Domain-0's (vif-route, antispoofing),
        # never read here.
        try:
            address = self.netconf.address_for(device.name)
            if address is None:
                log.warning("%s: no IPv4 address: %s", device.name, self._why_unaddressed(device.name))
                return None
            config = StackConfig(mac=device.mac, address=address, mtu=device.mtu,
                                 gateway=self.netconf.gateway_for(device.name, address),
                                 routes=self.netconf.routes_for(device.name, address),
                                 forwarding=self.netconf.ip_forward, **self.stack_options)
            return IpStack(config, self.clock)
        except (ValueError, OSError, ConfigError) as err:
            # The toolstack checked the command line; a kernel started by hand logs it.
            log.error("%s: no IP stack: %s", device.name, err)
            return None

    def _why_unaddressed(self, name: str) -> str:
        param = self.netconf.param(name)
        if param is not None:
            # ip=dhcp, or ip=::GW: Linux would ask a DHCP server; xenlab's guests have no client.
            return (f"its ip= on the kernel command line gives no address "
                    f"(autoconfiguration{' ' + param.autoconf if param.autoconf else ''} is not "
                    f"emulated); give ip=ADDR::GW:MASK:HOST:{name}:off")
        return (f"the kernel command line has no ip= for it (a vif's ip= is Domain-0's); give "
                f"ip=ADDR::GW:MASK:HOST:{name}:off in extra=")

    def remove(self, name: str) -> None:
        iface = self._ifaces.pop(name, None)
        if iface is None:
            return
        if iface.stack is not None:
            self.router.remove(name)
        if iface.on_link in iface.device.link_watchers:
            iface.device.link_watchers.remove(iface.on_link)
        if iface.timer is not None:
            iface.timer.cancel()
        if iface.receiver is not None and iface.device.receiver is iface.receiver:
            iface.device.receiver = None
        for ping in [p for p in self._pings.values() if p.iface is iface]:
            ping.abort(f"interface {name} went away")
        for wait in iface.udp_waiters.values():
            wait.error = f"interface {name} went away"
            wait.arrived.set()
        for capture in list(iface.captures):
            capture._interface_gone()

    def close(self) -> None:
        changes = getattr(self._kernel, "on_netif_change", None)
        if changes is not None and self._on_netif_change in changes:
            changes.remove(self._on_netif_change)
        for name in list(self._ifaces):
            self.remove(name)

    # -- the data path ----------------------------------------------------------------
    def _on_frames(self, iface: _Interface, frames: list[bytes]) -> None:
        if iface.stack is None:
            iface.unaddressed += len(frames)
            return
        out: list[bytes] = []
        for frame in frames:
            out += iface.stack.receive(frame)
        self._after(iface, out)

    def _after(self, iface: _Interface, out: list[bytes]) -> None:
        """What follows every call into a stack: send its frames, hand out its
        events, and move its timer to the stack's next deadline; then what
        the router makes of the packets it set aside for other hosts, out of
        the interfaces they leave by."""
        if out and iface.name in self._ifaces:
            iface.device.transmit(out)
        self._dispatch(iface)
        self._arm(iface)
        if self._ifaces.get(iface.name) is iface:
            for name, frames in self.router.forward(iface.name).items():
                other = self._ifaces.get(name)
                if other is not None:
                    self._after(other, frames)

    def _dispatch(self, iface: _Interface) -> None:
        for event in iface.stack.pop_events():
            if isinstance(event, EchoReply):
                ping = self._pings.get(event.ident)
                if ping is not None and ping.iface is iface:
                    ping.reply(event)
            elif isinstance(event, UdpDatagram) and event.dport in iface.udp_listeners:
                sock, callback = iface.udp_listeners[event.dport]
                # Everything queued: an event the stack's bounded event queue
                # lost still left its datagram on the socket.
                while (datagram := sock.recv()) is not None:
                    callback(datagram)
            elif isinstance(event, UdpDatagram):
                wait = iface.udp_waiters.get(event.dport)
                if wait is not None and not wait.arrived.is_set():
                    wait.at = self.clock()
                    wait.arrived.set()
            elif isinstance(event, IcmpError):
                for ping in self._pings.values():
                    if ping.iface is iface:
                        ping.icmp_error(event)
            elif isinstance(event, ArpFailed):
                for ping in self._pings.values():
                    if ping.iface is iface and event.ip in (ping.dst, iface.stack.config.gateway):
                        ping.host_unreachable(event.ip)
            elif isinstance(event, AddressConflict):
                log.warning("%s: %s is also claimed by %s", iface.name, event.ip, event.mac.hex(":"))

    def _arm(self, iface: _Interface) -> None:
        deadline = iface.stack.next_deadline()
        if deadline is None:
            self._disarm(iface)
            return
        if iface.timer is not None and iface.timer_at <= deadline:
            return          # fires first anyway; it re-arms after polling
        self._disarm(iface)
        delay = max(0.0, deadline - self.clock())
        iface.timer = asyncio.get_running_loop().call_later(delay, self._on_timer, iface)
        iface.timer_at = deadline

    @staticmethod
    def _disarm(iface: _Interface) -> None:
        if iface.timer is not None:
            iface.timer.cancel()
        iface.timer, iface.timer_at = None, math.inf

    def _on_timer(self, iface: _Interface) -> None:
        iface.timer, iface.timer_at = None, math.inf
        if self._ifaces.get(iface.name) is iface:
            self._after(iface, iface.stack.poll())

    # -- looking interfaces up --------------------------------------------------------
    def interfaces(self) -> list[NetDevice]:
        return [iface.device for iface in self._ifaces.values()]

    def has_stack(self) -> bool:
        return any(iface.stack is not None for iface in self._ifaces.values())

    def stack(self, name: str) -> IpStack | None:
        return self._lookup(name).stack

    def device(self, name: str = "") -> NetDevice:
        """The named interface; with no name, eth0 or the only interface."""
        return self._lookup(name).device

    def unaddressed(self, name: str) -> int:
        """Frames the interface received while it had no address to take them."""
        return self._lookup(name).unaddressed

    def _lookup(self, name: str) -> _Interface:
        if name:
            iface = self._ifaces.get(name)
            if iface is None:
                raise XenError(errno.ENOENT, f"no interface {name!r} (interfaces: {self._known()})")
            return iface
        if "eth0" in self._ifaces:
            return self._ifaces["eth0"]
        if len(self._ifaces) == 1:
            return next(iter(self._ifaces.values()))
        raise XenError(errno.ENOENT, f"name an interface (interfaces: {self._known()})")

    def _known(self) -> str:
        return ", ".join(self._ifaces) or "none"

    def _route(self, dst: IPv4Address, name: str) -> _Interface:
        """The interface to send from: the named one, else the one the
        routing table picks for ``dst``, else the first with an address
        (whose stack then says there is no route)."""
        if name:
            iface = self._lookup(name)
            if iface.stack is None:
                raise XenError(errno.EADDRNOTAVAIL, f"{name} has no IPv4 address")
            return iface
        addressed = [i for i in self._ifaces.values() if i.stack is not None]
        if not addressed:
            raise XenError(errno.EADDRNOTAVAIL,
                           f"no interface has an IPv4 address (interfaces: {self._known()})")
        found = self.router.lookup(dst)
        if found is not None and found[0] in self._ifaces:
            return self._ifaces[found[0]]
        return addressed[0]

    # -- ping ---------------------------------------------------------------------------
    async def ping(self, dst: str, count: int = 4, size: int = 56, interval: float = 1.0,
                   timeout: float = 2.0, interface: str | None = None,
                   ttl: int = DEFAULT_TTL,
                   on_reply: Callable[[int, float], None] | None = None) -> PingResult:
        """ICMP echo as ping(8): ``count`` requests ``interval`` apart, then up
        to ``timeout`` for the last replies (or errors). The first RTT
        includes ARP. ``on_reply(seq, rtt)`` hears of each reply as it
        comes, as ping(8) prints it."""
        _check_range("count", count, 1, PING_MAX_COUNT)
        _check_range("ttl", ttl, 1, 0xFF)
        _check_range("size", size, 0, PING_MAX_SIZE)
        _check_seconds("interval", interval, PING_MIN_INTERVAL)
        _check_seconds("timeout", timeout, 0.0)
        target = _parse_dst(dst)
        iface = self._route(target, interface or "")
        run = _Ping(self._new_ident(), iface, target, count, ttl, on_reply)
        payload = bytes(i & 0xFF for i in range(size))
        self._pings[run.ident] = run
        try:
            for seq in range(1, count + 1):
                self._send_echo(run, seq, payload)
                # Before the last request only an abort (the interface left) sets done.
                if seq < count and await _wait(run.done, interval):
                    break
            await _wait(run.done, timeout)
            if len(run.rtts) < run.transmitted and not run.error:
                hop = self._unresolved(iface, target)
                if hop is not None:
                    run.host_unreachable(hop)
            return run.result()
        finally:
            del self._pings[run.ident]

    def _send_echo(self, run: _Ping, seq: int, payload: bytes) -> None:
        # Recorded before sending: a reply may come back within the call (our own address).
        wire_seq = run.sending(seq, self.clock())
        try:
            out = run.iface.stack.ping(run.dst, run.ident, wire_seq, payload, ttl=run.ttl)
        except ValueError as err:
            raise XenError(errno.EINVAL, str(err)) from None
        except OSError as err:
            raise XenError(err.errno or errno.EIO, err.strerror or str(err)) from None
        self._after(run.iface, out)

    def _new_ident(self) -> int:
        for _ in range(0x10000):
            ident = next(self._idents) & 0xFFFF
            if ident and ident not in self._pings:
                return ident
        raise XenError(errno.EAGAIN, "every ICMP identifier is in use")

    @staticmethod
    def _unresolved(iface: _Interface, dst: IPv4Address) -> IPv4Address | None:
        """The next hop (``dst`` or the gateway) still waiting for ARP, if any."""
        pending = iface.stack.arp_pending()
        for hop in (dst, iface.stack.config.gateway):
            if hop in pending:
                return hop
        return None

    # -- UDP ----------------------------------------------------------------------------
    async def send_udp(self, dst: str, dport: int, payload: bytes, sport: int = 0,
                       wait_reply: bool = False, timeout: float = 2.0,
                       interface: str | None = None) -> UdpResult:
        """One datagram from ``sport`` (0: an ephemeral port); with
        ``wait_reply``, the first datagram back to that port within ``timeout``."""
        _check_range("dport", dport, 1, 0xFFFF)
        _check_range("sport", sport, 0, 0xFFFF)
        _check_range("payload length", len(payload), 0, UDP_MAX_PAYLOAD)
        _check_seconds("timeout", timeout, 0.0)
        target = _parse_dst(dst)
        iface = self._route(target, interface or "")
        sock = self._bind(iface, sport if wait_reply or sport == 0 else None)
        port = sock.port if sock is not None else sport
        wait = _UdpWait()
        if wait_reply:
            iface.udp_waiters[port] = wait
        try:
            sent_at = self.clock()
            self._send_datagram(iface, target, port, dport, payload)
            if not wait_reply:
                return UdpResult(port)
            await _wait(wait.arrived, timeout)
            if wait.error:
                raise XenError(errno.ENOENT, wait.error)
            datagram = sock.recv()
            if datagram is None:
                return UdpResult(port)
            return UdpResult(port, True, datagram.payload, str(datagram.src), datagram.sport,
                             max(0.0, wait.at - sent_at))
        finally:
            iface.udp_waiters.pop(port, None)
            if sock is not None:
                sock.close()

    @staticmethod
    def _bind(iface: _Interface, port: int | None):
        """A socket on ``port`` (0: ephemeral), or None to send from a port
        nobody listens on, as a raw sender would."""
        if port is None:
            return None
        try:
            return iface.stack.bind_udp(port)
        except OSError as err:
            raise XenError(err.errno or errno.EADDRINUSE, err.strerror or str(err)) from None

    def _send_datagram(self, iface: _Interface, dst: IPv4Address, sport: int, dport: int,
                       payload: bytes) -> None:
        try:
            out = iface.stack.send_udp(dst, sport, dport, payload)
        except ValueError as err:
            raise XenError(errno.EINVAL, str(err)) from None
        except OSError as err:
            raise XenError(err.errno or errno.EIO, err.strerror or str(err)) from None
        self._after(iface, out)

    # -- perf (iperf -u) -----------------------------------------------------------------
    async def perf_send(self, dst: str, dport: int = perf.DEFAULT_PORT,
                        rate: float = perf.DEFAULT_RATE, length: int = perf.DEFAULT_LENGTH,
                        duration: float = perf.DEFAULT_DURATION,
                        interval: float = perf.DEFAULT_INTERVAL,
                        interface: str | None = None) -> AsyncIterator[perf.Interval]:
        """Offer ``length``-byte datagrams to ``dst``:``dport`` at ``rate``
        bits per second for ``duration`` seconds, as iperf -u's client;
        yields each interval's report, then the total. A full transmit
        queue holds the sender back, as a blocking sendto would; what it
        could not send by the end of the test was never offered (the
        reports show the rate it did offer)."""
        _check_range("dport", dport, 1, 0xFFFF)
        _check_range("length", length, perf.MIN_LENGTH, UDP_MAX_PAYLOAD)
        for name, value, low in (("rate", rate, 1.0), ("duration", duration, 0.001),
                                 ("interval", interval, 0.01)):
            if not (math.isfinite(value) and low <= value <= PERF_MAX[name]):
                raise XenError(errno.EINVAL, f"{name} {value:g} is out of range "
                                             f"{low:g}..{PERF_MAX[name]:g}")
        target = _parse_dst(dst)
        iface = self._route(target, interface or "")
        sock = self._bind(iface, 0)
        try:
            start = last = self.clock()
            pacer = perf.Pacer(rate, length, duration, start)
            stats = perf.SenderStats(start, interval)
            while (due_at := pacer.next_at()) is not None:
                now = self.clock()
                # Past the end, one last batch of what fell due before it,
                # as much as the queue takes; a sender further behind than
                # that offered less than it was asked to.
                final = now >= pacer.end
                if due_at > now and not final:
                    await asyncio.sleep(due_at - now)
                    continue
                due = min(pacer.due(now), MAX_PERF_BATCH)
                room = traffic.queue_room(iface.device)
                if room is not None and room < due:
                    due = room
                if due == 0:
                    if final:
                        break
                    await asyncio.sleep(traffic.QUEUE_WAIT)
                    continue
                sent, errors = self._perf_batch(iface, target, sock.port, dport, pacer.sent, due,
                                                now, length, first=pacer.sent == 0)
                last = now
                pacer.took(due)
                for report in stats.sent(min(now, pacer.end), sent, sent * length, errors):
                    yield report
                if final:
                    break
                await asyncio.sleep(0)     # tx completions, the receiver's agent
            # The end of the test, as iperf 2: the count sent, negated.
            end = perf.encode(-pacer.sent, self.clock(), perf.MIN_LENGTH)
            self._send_datagram(iface, target, sock.port, dport, end)
            for _ in range(perf.END_COPIES - 1):
                await asyncio.sleep(PERF_END_GAP)
                self._send_datagram(iface, target, sock.port, dport, end)
            # The test lasted its duration, or longer if the queue held it back.
            for report in stats.finish(max(pacer.end, last)):
                yield report
        finally:
            sock.close()

    def _perf_batch(self, iface: _Interface, dst: IPv4Address, sport: int, dport: int,
                    first_seq: int, count: int, now: float, length: int,
                    first: bool) -> tuple[int, int]:
        """Send datagrams first_seq.. at once; (sent, refused). The first
        datagram of a test that cannot be sent (no route) is an error."""
        out: list[bytes] = []
        errors = 0
        for seq in range(first_seq, first_seq + count):
            try:
                out += iface.stack.send_udp(dst, sport, dport, perf.encode(seq, now, length))
            except (ValueError, OSError) as err:
                if first and seq == first_seq:
                    raise XenError(getattr(err, "errno", None) or errno.EINVAL,
                                   getattr(err, "strerror", None) or str(err)) from None
                errors += 1
        self._after(iface, out)
        return count - errors, errors

    async def perf_serve(self, port: int = perf.DEFAULT_PORT,
                         interval: float = perf.DEFAULT_INTERVAL,
                         timeout: float = PERF_SERVE_TIMEOUT,
                         interface: str | None = None) -> AsyncIterator[perf.Interval | None]:
        """Receive a perf test on UDP ``port`` (of every addressed interface,
        or the named one): yields None once listening, then each interval's
        report as it ends, then the last interval and the total, once the
        sender's end of test came or ``timeout`` seconds passed without a
        datagram."""
        _check_range("port", port, 1, 0xFFFF)
        _check_seconds("interval", interval, 0.01)
        _check_seconds("timeout", timeout, 0.001)
        if interface:
            ifaces = [self._lookup(interface)]
            if ifaces[0].stack is None:
                raise XenError(errno.EADDRNOTAVAIL, f"{interface} has no IPv4 address")
        else:
            ifaces = [i for i in self._ifaces.values() if i.stack is not None]
            if not ifaces:
                raise XenError(errno.EADDRNOTAVAIL, f"no interface has an IPv4 address "
                                                    f"(interfaces: {self._known()})")
        receiver = perf.PerfReceiver(interval)
        arrived = asyncio.Event()

        def take(datagram: UdpDatagram) -> None:
            receiver.receive(datagram.payload, self.clock())
            arrived.set()
        bound: list[tuple[_Interface, object]] = []
        try:
            for iface in ifaces:
                if port in iface.udp_listeners:
                    raise XenError(errno.EADDRINUSE, f"UDP port {port} on {iface.name} is "
                                                     f"already receiving a perf test")
                sock = self._bind(iface, port)
                bound.append((iface, sock))
                iface.udp_listeners[port] = (sock, take)
            yield None
            quiet_since = self.clock()
            while not receiver.ended:
                now = self.clock()
                if receiver.last is not None:
                    quiet_since = max(quiet_since, receiver.last)
                if now - quiet_since >= timeout:
                    break
                tick = interval - ((now - receiver.start) % interval) if receiver.start is not None                     else interval
                arrived.clear()
                await _wait(arrived, min(tick, timeout - (now - quiet_since)))
                for report in receiver.reports(self.clock()):
                    yield report
            for report in receiver.finish():
                yield report
        finally:
            for iface, sock in bound:
                iface.udp_listeners.pop(port, None)
                sock.close()

    # -- inject and capture -------------------------------------------------------------
    def inject(self, frames: Iterable[bytes], interface: str = "") -> InjectResult:
        """Put frames straight on the interface, as if the guest's own stack
        sent them. A frame under an Ethernet header or over MTU + header is
        refused as ``bad_length`` (an 802.1Q-tagged frame may be a tag
        longer); the device's own drops count too."""
        device = self.device(interface)
        good, drops = [], collections.Counter()
        for frame in frames:
            if ETH_HLEN <= len(frame) <= max_frame_len(device.mtu, frame):
                good.append(bytes(frame))
            else:
                drops["bad_length"] += 1
        refused = drops["bad_length"]
        if good:
            before = collections.Counter(device.drops)
            device.transmit(good)
            drops.update(collections.Counter(device.drops) - before)
        dropped = sum(drops.values())
        return InjectResult(len(good) - (dropped - refused), dropped, dict(drops))

    def capture(self, interface: str = "", direction: str = "both",
                limit: int = CAPTURE_QUEUE) -> Capture:
        """A capture of ``direction`` ("both", "tx" or "rx"); use it with
        ``with`` so that its tap goes when the reader stops."""
        if direction in ("", "both"):
            directions = frozenset(DIRECTIONS)
        elif direction in DIRECTIONS:
            directions = frozenset({direction})
        else:
            raise XenError(errno.EINVAL, f"direction {direction!r} is not one of both, tx, rx")
        return Capture(self, self._lookup(interface), directions, limit)

    def active_captures(self, interface: str = "") -> int:
        return len(self._lookup(interface).captures)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; whether it was set."""
    try:
        await eventloop.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _parse_dst(dst: str) -> IPv4Address:
    try:
        return IPv4Address(dst)
    except ValueError:
        raise XenError(errno.EINVAL, f"destination {dst!r} is not an IPv4 address") from None


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise XenError(errno.EINVAL, f"{name} {value} is out of range {low}..{high}")


def _check_seconds(name: str, value: float, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise XenError(errno.EINVAL, f"{name} {value} must be at least {minimum} seconds")
