"""The guest IP stack a domU runs on its netfront interface, sans-I/O.

Feed it frames (``receive``) and time (``poll``, with an injected clock); it
returns the frames to put on the wire and appends events for observers.
Ethernet, ARP, IPv4 without fragmentation, ICMP echo and errors, UDP with an
echo service on port 7, and a routing table (the connected subnet, the
default gateway, static routes through this interface).

One IpStack is one interface's IP layer. A domain with several interfaces
has one each, and ``xenlab.net.router.Router`` joins them as a Linux host
joins its devices: it tells each stack the host's other addresses (a packet
to any of them is local, the weak host model), picks the interface a
packet leaves by, and, with ``forwarding``, takes the packets a stack set
aside for forwarding (``take_transit``) through ip_forward's steps.

Every frame ``receive`` takes ends in exactly one counter: ``rx_delivered``,
``rx_forwarded`` (handed to the router) or one of ``RX_DROP_REASONS``.
Packets the stack sends to its own addresses go through the same input path
and are counted the same way, plus ``rx_loopback``.
"""
from __future__ import annotations

import collections
import errno
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from xenlab.net.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket, ArpTable
from xenlab.net.errors import PacketError
from xenlab.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame, format_mac,
                                 is_multicast, is_valid_unicast)
from xenlab.net.icmp import (ERROR_TYPES, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY,
                             ICMP_ERROR_MAX, ICMP_FRAG_NEEDED, ICMP_HLEN, ICMP_PORT_UNREACH,
                             ICMP_PROT_UNREACH, IcmpMessage)
from xenlab.net.ipv4 import (DEFAULT_TTL, IP_HLEN, IP_OFFMASK, IPPROTO_ICMP, IPPROTO_UDP, LIMITED_BROADCAST,
                             Ipv4Header, multicast_mac)
from xenlab.net.route import DEFAULT, Route, RoutingTable
from xenlab.net.udp import ECHO_PORT, UDP_HLEN, UdpPacket
from xenlab.xen.abi import ETH_HLEN, ETH_MIN_MTU

# Why a received frame (or looped-back packet) was not delivered.
RX_DROP_REASONS = (
    "oversize", "truncated", "not_for_us", "bad_src_mac", "own_frame", "bad_ethertype",
    "bad_arp", "arp_conflict",
    "bad_ip_header", "bad_ip_checksum", "fragment", "ttl", "martian_source", "ip_not_for_us",
    "ip_proto_unreachable",
    "bad_icmp_checksum", "icmp_broadcast", "icmp_unhandled",
    "bad_udp_header", "bad_udp_checksum", "udp_port_unreachable", "udp_echo_loop",
    "udp_rcvbuf_full",
)
# Why an outgoing packet never left.
TX_DROP_REASONS = ("arp_unresolved", "arp_queue_full", "no_route", "icmp_ratelimited",
                   "icmp_ratelimited_host")
DROP_REASONS = RX_DROP_REASONS + TX_DROP_REASONS

# Source ports of the classic internal services (echo, discard, daytime, chargen,
# time): echoing to them lets two echo services bounce a datagram forever, so
# the echo service ignores them as BSD inetd's check_loop does.
_ECHO_LOOP_PORTS = frozenset({0, 7, 9, 13, 19, 37})

EPHEMERAL_PORTS = range(49152, 65536)   # IANA dynamic ports (RFC 6335)

# ICMP errors this stack sends, at most: Linux's icmp_msgs_per_sec and
# icmp_msgs_burst (icmp_global_allow), so that a flood of packets that each
# earn an error does not become a flood of errors.
ICMP_RATE = 1000.0
ICMP_BURST = 50
# And to any one destination (Linux's icmp_ratelimit, 1000 ms, through
# inet_peer_xrlim_allow with XRLIM_BURST_FACTOR 6): a burst of 6, then one
# a second. Fragmentation needed is never limited (path MTU discovery
# needs it), as in icmpv4_mask_allow. The destinations are kept in a
# bounded cache, as Linux's inet_peer tree is.
ICMP_PEER_INTERVAL = 1.0
ICMP_PEER_BURST = 6
ICMP_PEERS = 1024


@dataclass(frozen=True)
class StackConfig:
    mac: bytes
    address: IPv4Interface
    gateway: IPv4Address | None = None
    mtu: int = 1500
    routes: tuple[Route, ...] = ()   # more routes out of this interface, each via an on-link gateway
    forwarding: bool = False     # ip_forward: set aside packets for other hosts (take_transit)
    arp_timeout: float = 60.0
    arp_retry: float = 1.0
    arp_retries: int = 3         # requests sent in all before the queued packets are dropped
    arp_queue_limit: int = 64    # packets held per unresolved address
    udp_queue_limit: int = 256   # datagrams held per socket
    event_limit: int = 4096      # events kept; the oldest go first

    def __post_init__(self) -> None:
        if not isinstance(self.address, IPv4Interface):
            raise ValueError(f"address must be an IPv4Interface, got {self.address!r}")
        if not isinstance(self.mac, bytes):
            raise ValueError(f"mac must be 6 bytes (parse_mac turns text into them), got {self.mac!r}")
        if not is_valid_unicast(self.mac):
            raise ValueError(f"mac {self.mac!r} is not a unicast station address")
        if self.gateway is not None and self.gateway == self.address.ip:
            raise ValueError(f"gateway {self.gateway} is this stack's own address")
        for route in self.routes:
            if not isinstance(route, Route):
                raise ValueError(f"routes must be Routes, got {route!r}")
            # Linux refuses a gateway it cannot reach on the link: "Nexthop has invalid gateway".
            if route.gateway is not None and (route.gateway not in self.address.network
                                              or route.gateway == self.address.ip):
                raise ValueError(f"route {route}: gateway {route.gateway} is not a neighbour on "
                                 f"{self.address.network}")
        if not ETH_MIN_MTU <= self.mtu <= 0xFFFF:
            raise ValueError(f"mtu {self.mtu} is out of range {ETH_MIN_MTU}..65535")
        if min(self.arp_timeout, self.arp_retry) <= 0 or self.arp_retries < 1:
            raise ValueError("ARP timeout and retry interval must be positive, retries at least 1")
        if min(self.arp_queue_limit, self.udp_queue_limit) < 0 or self.event_limit < 1:
            raise ValueError("queue limits must not be negative")


# Events, appended to IpStack.events.

@dataclass(frozen=True)
class EchoReply:
    src: IPv4Address
    ident: int
    seq: int
    payload: bytes
    time: float


@dataclass(frozen=True)
class UdpDatagram:
    src: IPv4Address
    sport: int
    dport: int
    payload: bytes


@dataclass(frozen=True)
class ArpResolved:
    """An address resolved for the first time, or moved to another MAC."""
    ip: IPv4Address
    mac: bytes


@dataclass(frozen=True)
class ArpFailed:
    """Resolution gave up after the configured requests; ``dropped`` packets were waiting."""
    ip: IPv4Address
    dropped: int


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error came back; ``quoted`` is the start of the datagram it is about."""
    src: IPv4Address
    type: int
    code: int
    quoted: bytes
    time: float


@dataclass(frozen=True)
class AddressConflict:
    """Another station claims our address."""
    ip: IPv4Address
    mac: bytes


class UdpSocket:
    """A bound UDP port with a bounded receive queue."""

    def __init__(self, stack: IpStack, port: int, limit: int):
        self._stack = stack
        self.port = port
        self._limit = limit
        self._queue: collections.deque[UdpDatagram] = collections.deque()
        self.closed = False

    def recv(self) -> UdpDatagram | None:
        self._check_open()
        return self._queue.popleft() if self._queue else None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def sendto(self, dst: IPv4Address | str, dport: int, payload: bytes) -> list[bytes]:
        self._check_open()
        return self._stack.send_udp(dst, self.port, dport, payload)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._stack._unbind(self)

    def _deliver(self, datagram: UdpDatagram) -> bool:
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(datagram)
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, f"UDP socket on port {self.port} is closed")


@dataclass(frozen=True)
class _Inbound:
    """What the input path knows about the packet it is handling."""
    ip: Ipv4Header
    link_broadcast: bool
    ip_broadcast: bool
    raw: bytes                   # the IP packet, for quoting in ICMP errors

    @property
    def local(self) -> IPv4Address | None:
        """The address to answer from: the one asked, unless it was a broadcast
        (then None: the interface's own)."""
        return None if self.ip_broadcast else self.ip.dst

    @property
    def may_send_error(self) -> bool:
        # RFC 1122 3.2.2: never answer a broadcast or multicast with an ICMP error.
        return not (self.link_broadcast or self.ip_broadcast)


class IpStack:
    def __init__(self, config: StackConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.mac = config.mac
        self.ip = config.address.ip
        self.network = config.address.network
        # /31 (RFC 3021) and /32 have no broadcast address.
        self._subnet_broadcast = (self.network.broadcast_address if self.network.prefixlen < 31
                                  else None)
        self.counters: collections.Counter[str] = collections.Counter(
            {name: 0 for name in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes",
                                  "rx_delivered", "rx_forwarded", "rx_loopback", "event_overflow")
             + DROP_REASONS})
        self.routes = RoutingTable([Route(self.network)])
        if config.gateway is not None:
            self.routes.add(Route(DEFAULT, config.gateway))
        for route in config.routes:
            self.routes.add(route)
        # The host's addresses on its other interfaces (the Router keeps it):
        # a packet to one of them is ours, as Linux's weak host model has it.
        self.local_addresses: frozenset[IPv4Address] = frozenset()
        # And the broadcast addresses of its other subnets: a packet to one
        # is a broadcast to this host, never forwarded (Linux's
        # ip_route_input_slow makes it RTN_BROADCAST; bc_forwarding is off).
        self.local_broadcasts: frozenset[IPv4Address] = frozenset()
        self._transit: list[bytes] = []
        self._unreachable: list[bytes] = []
        self._icmp_tokens = float(ICMP_BURST)
        self._icmp_refilled = clock()
        self._icmp_peers: collections.OrderedDict[IPv4Address, tuple[float, float]] = \
            collections.OrderedDict()       # destination -> (tokens, refilled at)
        self.events: collections.deque = collections.deque(maxlen=config.event_limit)
        self._arp = ArpTable(config.arp_timeout, config.arp_retry, config.arp_retries,
                             config.arp_queue_limit)
        self._sockets: dict[int, UdpSocket | None] = {ECHO_PORT: None}   # None: the echo service
        self._next_ephemeral = EPHEMERAL_PORTS.start
        self._ip_ident = 0
        self._out: list[bytes] = []
        self._loopback: collections.deque[bytes] = collections.deque()

    # ------------------------------------------------------------------ public

    def link_up(self) -> list[bytes]:
        """Announce our address: a gratuitous ARP in request form, with sender and
        target IP both ours and a zero target MAC, as Linux sends on link up."""
        announce = ArpPacket.request(self.mac, self.ip, self.ip)
        self._emit(BROADCAST, ETH_P_ARP, announce.build())
        return self._take_output()

    def receive(self, frame: bytes) -> list[bytes]:
        self.counters["rx_frames"] += 1
        self.counters["rx_bytes"] += len(frame)
        self._count_outcome(self._input_frame(frame))
        return self._take_output()

    def ping(self, dst: IPv4Address | str, ident: int, seq: int, payload: bytes,
             ttl: int = DEFAULT_TTL) -> list[bytes]:
        _check_u16("ident", ident)
        _check_u16("seq", seq)
        message = IcmpMessage.echo(ICMP_ECHO, ident, seq, bytes(payload))
        return self.send_ip(dst, IPPROTO_ICMP, message.build(), ttl=ttl)

    def send_udp(self, dst: IPv4Address | str, sport: int, dport: int,
                 payload: bytes) -> list[bytes]:
        _check_u16("source port", sport)
        _check_u16("destination port", dport)
        if dport == 0:
            raise ValueError("destination port 0 is reserved")
        dst = _address(dst)
        self._check_size(IP_HLEN + UDP_HLEN + len(payload))
        return self.send_ip(dst, IPPROTO_UDP, UdpPacket(sport, dport, bytes(payload)).build(self.ip, dst))

    def send_ip(self, dst: IPv4Address | str, proto: int, payload: bytes,
                ttl: int = DEFAULT_TTL) -> list[bytes]:
        """Send one IPv4 packet. Raises ValueError for a packet over the MTU (this
        stack does not fragment) and OSError(ENETUNREACH) when there is no route."""
        dst = _address(dst)
        if not 0 <= proto <= 0xFF:
            raise ValueError(f"IP protocol {proto} is out of range 0..255")
        if not 1 <= ttl <= 0xFF:
            raise ValueError(f"TTL {ttl} is out of range 1..255")
        if dst.is_unspecified or dst.is_loopback:
            raise ValueError(f"{dst} is not a destination on this interface")
        self._check_size(IP_HLEN + len(payload))
        self._route(dst)
        self._output(dst, proto, bytes(payload), ttl=ttl)
        return self._take_output()

    # -- what the Router uses -------------------------------------------------------

    def is_local(self, ip: IPv4Address) -> bool:
        # (Hashing an address is a call of its own: skip it with no other addresses.)
        return ip == self.ip or (bool(self.local_addresses) and ip in self.local_addresses)

    def is_broadcast(self, ip: IPv4Address) -> bool:
        return self._is_broadcast(ip)

    def lookup(self, dst: IPv4Address) -> Route | None:
        """The route a packet to ``dst`` would take out of this interface."""
        return self.routes.lookup(dst)

    def take_transit(self) -> list[bytes]:
        """The IP packets received for other hosts since the last call (only
        with ``forwarding``), each already counted as ``rx_forwarded``."""
        transit, self._transit = self._transit, []
        return transit

    def forward(self, packet: bytes, hop: IPv4Address) -> list[bytes]:
        """Put a packet being forwarded (its TTL already lowered) on this
        link toward ``hop``, resolving it as any next hop."""
        self._send_via(hop, bytes(packet))
        return self._take_output()

    def icmp_error(self, packet: bytes, type_: int, code: int, rest: int = 0) -> list[bytes]:
        """Send an ICMP error about ``packet`` (an IP packet, as received) to
        its source, from this interface's address (the Router picks the
        interface whose route leads back to the source, so the source is
        that interface's, as Linux's icmp_send picks it). Nothing goes out when RFC
        1122 3.2.2 forbids it (about an ICMP error, a fragment past the
        first, a broadcast or multicast) or past the rate limit."""
        try:
            header, payload = Ipv4Header.parse(packet)
        except PacketError:
            return []
        if not self._may_answer(header, payload):
            return []
        self._icmp_error_to(header.src, self.ip, packet, type_, code, rest)
        return self._take_output()

    def poll(self) -> list[bytes]:
        """Run the timers that are due: ARP retries, giving up on unresolved
        addresses (their queued packets count as arp_unresolved), probes of
        stale entries in use, cache expiry."""
        timers = self._arp.poll(self.clock())
        for ip in timers.retry:
            self._emit_arp_request(ip)
        for ip, mac in timers.probe:
            # Linux's unicast probe of a stale entry: to the address it holds.
            self._emit(mac, ETH_P_ARP, ArpPacket.request(self.mac, self.ip, ip).build())
        for ip, dropped in timers.failed:
            self.counters["arp_unresolved"] += dropped
            self._event(ArpFailed(ip, dropped))
        for packet in timers.dropped:
            if not self._is_own(packet):
                self._unreachable.append(packet)
        return self._take_output()

    def take_unreachable(self) -> list[bytes]:
        """Forwarded packets whose next hop never answered ARP, since the last
        call: their senders are owed ICMP host unreachable (Linux's
        arp_error_report), which the Router sends by its route back to them.
        The host's own packets have ArpFailed instead."""
        unreachable, self._unreachable = self._unreachable, []
        return unreachable

    def _is_own(self, packet: bytes) -> bool:
        try:
            header, _ = Ipv4Header.parse(packet)
        except PacketError:
            return True
        return self.is_local(header.src)

    def next_deadline(self) -> float | None:
        return self._arp.next_deadline()

    def bind_udp(self, port: int) -> UdpSocket:
        """Bind ``port``, or the next free ephemeral port when it is 0."""
        _check_u16("port", port)
        if port == 0:
            port = self._ephemeral_port()
        if port in self._sockets:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is already bound")
        sock = self._sockets[port] = UdpSocket(self, port, self.config.udp_queue_limit)
        return sock

    def pop_events(self) -> list:
        events = list(self.events)
        self.events.clear()
        return events

    def resume(self, neighbours, counters: dict[str, int]) -> None:
        """What a suspended kernel kept of this stack (domain.saved_state):
        its ARP entries, each with the seconds it had left, and its counters."""
        now = self.clock()
        for ip, mac, left in neighbours:
            if left > 0:
                self._arp.restore(ip, mac, now + left)
        for name, value in counters.items():
            if name in self.counters:
                self.counters[name] = value

    def arp_cache(self) -> dict[IPv4Address, tuple[bytes, float]]:
        return self._arp.entries(self.clock())

    def arp_states(self) -> dict[IPv4Address, str]:
        """Each entry's neighbour state (REACHABLE, STALE, DELAY, PROBE)."""
        return self._arp.states(self.clock())

    def arp_pending(self) -> dict[IPv4Address, int]:
        """Addresses being resolved, with how many packets wait on each."""
        return self._arp.pending()

    def drops(self) -> dict[str, int]:
        """The drop counters that are not zero."""
        return {reason: self.counters[reason] for reason in DROP_REASONS if self.counters[reason]}

    # ------------------------------------------------------------------ input

    def _input_frame(self, data: bytes) -> str:
        if len(data) > self.config.mtu + ETH_HLEN:
            return "oversize"
        try:
            frame = EthernetFrame.parse(data)
        except PacketError as err:
            return err.reason
        if frame.dst != self.mac and frame.dst != BROADCAST:
            return "not_for_us"
        if is_multicast(frame.src):
            return "bad_src_mac"
        if frame.src == self.mac:
            return "own_frame"
        if frame.vlan_tci is not None:
            return "bad_ethertype"          # no VLAN interface on top of eth0
        if frame.ethertype == ETH_P_ARP:
            return self._input_arp(frame.payload)
        if frame.ethertype == ETH_P_IP:
            return self._input_ip(frame.payload, link_broadcast=frame.dst == BROADCAST)
        return "bad_ethertype"

    def _input_arp(self, data: bytes) -> str:
        try:
            packet = ArpPacket.parse(data)
        except PacketError as err:
            return err.reason
        if packet.spa == self.ip:
            if packet.sha == self.mac:
                return "own_frame"
            self._event(AddressConflict(self.ip, packet.sha))
            return "arp_conflict"
        targeted = packet.tpa == self.ip
        self._merge(packet, targeted)
        if targeted and packet.op == ARPOP_REQUEST:
            reply = ArpPacket(ARPOP_REPLY, self.mac, self.ip, packet.sha, packet.spa)
            self._emit(packet.sha, ETH_P_ARP, reply.build())
        return "rx_delivered"

    def _merge(self, packet: ArpPacket, targeted: bool) -> None:
        """RFC 826's merge: refresh a sender already in the table (so gratuitous
        ARP moves it), and add it when the packet is addressed to us."""
        now = self.clock()
        if not self._learnable(packet.spa):
            return
        if not (targeted or self._arp.knows(packet.spa, now)):
            return
        learned = self._arp.learn(packet.spa, packet.sha, now)
        if learned.changed:
            self._event(ArpResolved(packet.spa, packet.sha))
        for queued in learned.flushed:
            self._emit(packet.sha, ETH_P_IP, queued)

    def _learnable(self, ip: IPv4Address) -> bool:
        return not ip.is_unspecified and (self._on_link(ip) or ip in self.routes.gateways())

    def _input_ip(self, data: bytes, link_broadcast: bool, looped: bool = False) -> str:
        try:
            header, payload = Ipv4Header.parse(data)
        except PacketError as err:
            return err.reason
        if header.is_fragment:
            return "fragment"               # no reassembly here
        if header.ttl == 0:
            return "ttl"                    # RFC 791: a datagram whose TTL reached 0 is destroyed
        if not looped and self._martian(header.src):
            return "martian_source"
        ip_broadcast = self._is_broadcast(header.dst) or (bool(self.local_broadcasts)
                                                          and header.dst in self.local_broadcasts)
        raw = bytes(data[:header.total_length])
        if not self.is_local(header.dst) and not ip_broadcast:
            if self._forwardable(header, link_broadcast, looped):
                self._transit.append(raw)
                return "rx_forwarded"
            return "ip_not_for_us"          # a host (ip_forward=0) does not forward
        inbound = _Inbound(header, link_broadcast, ip_broadcast, raw)
        if header.proto == IPPROTO_ICMP:
            return self._input_icmp(inbound, payload)
        if header.proto == IPPROTO_UDP:
            return self._input_udp(inbound, payload)
        if inbound.may_send_error:
            self._send_error(inbound, ICMP_PROT_UNREACH)
        return "ip_proto_unreachable"

    def _forwardable(self, header: Ipv4Header, link_broadcast: bool, looped: bool) -> bool:
        """ip_forward's first checks: forwarding on, a frame sent to our MAC
        (pkt_type PACKET_HOST), a unicast destination a router may route."""
        dst = header.dst
        return (self.config.forwarding and not link_broadcast and not looped
                and not (dst.is_multicast or dst.is_unspecified or dst.is_loopback
                         or dst == LIMITED_BROADCAST))

    def _martian(self, src: IPv4Address) -> bool:
        """Sources no station can have; Linux's ip_route_input drops them as martians:
        0.0.0.0, loopback (127/8), multicast (224/4), the limited broadcast, ours,
        and our subnet's broadcast. (On the address as an integer: each of
        ipaddress's properties is a call or two, and this runs for every packet.)"""
        n = int(src)
        return (n == 0 or n >> 24 == 127 or n >> 28 == 0xE or n == 0xFFFFFFFF
                or self.is_local(src) or self._is_subnet_broadcast(src))

    def _input_icmp(self, inbound: _Inbound, data: bytes) -> str:
        try:
            message = IcmpMessage.parse(data)
        except PacketError as err:
            return err.reason
        src = inbound.ip.src
        if message.type == ICMP_ECHO:
            if inbound.ip_broadcast:
                return "icmp_broadcast"     # Linux's icmp_echo_ignore_broadcasts=1
            reply = IcmpMessage(ICMP_ECHOREPLY, 0, message.rest, message.payload)
            self._reply(src, IPPROTO_ICMP, reply.build(), inbound.local)
            return "rx_delivered"
        if message.type == ICMP_ECHOREPLY:
            self._event(EchoReply(src, message.ident, message.seq, message.payload, self.clock()))
            return "rx_delivered"
        if message.type in ERROR_TYPES:
            self._event(IcmpError(src, message.type, message.code, message.payload, self.clock()))
            return "rx_delivered"
        return "icmp_unhandled"

    def _input_udp(self, inbound: _Inbound, data: bytes) -> str:
        header = inbound.ip
        try:
            packet = UdpPacket.parse(header.src, header.dst, data)
        except PacketError as err:
            return err.reason
        if packet.dport not in self._sockets:
            if inbound.may_send_error:
                self._send_error(inbound, ICMP_PORT_UNREACH)
            return "udp_port_unreachable"
        sock = self._sockets[packet.dport]
        if sock is None:
            return self._echo(header.src, inbound.local, packet)
        datagram = UdpDatagram(header.src, packet.sport, packet.dport, packet.payload)
        if not sock._deliver(datagram):
            return "udp_rcvbuf_full"
        self._event(datagram)
        return "rx_delivered"

    def _echo(self, src: IPv4Address, local: IPv4Address, packet: UdpPacket) -> str:
        """RFC 862: send the data back to where it came from."""
        if packet.sport in _ECHO_LOOP_PORTS:
            return "udp_echo_loop"
        # A datagram sent to a broadcast address is answered from the
        # interface's own address, as a socket bound to INADDR_ANY answers it.
        local = local or self.ip
        reply = UdpPacket(ECHO_PORT, packet.sport, packet.payload)
        self._reply(src, IPPROTO_UDP, reply.build(local, src), local)
        return "rx_delivered"

    def _send_error(self, inbound: _Inbound, code: int) -> None:
        self._icmp_error_to(inbound.ip.src, inbound.local, inbound.raw, ICMP_DEST_UNREACH, code)

    def _icmp_error_to(self, dst: IPv4Address, src: IPv4Address, packet: bytes, type_: int,
                       code: int, rest: int = 0) -> None:
        limited = self._icmp_limited(dst, type_, code)
        if limited:
            self.counters[limited] += 1
            return
        limit = min(ICMP_ERROR_MAX, self.config.mtu) - IP_HLEN - ICMP_HLEN
        message = IcmpMessage(type_, code, rest, packet[:limit])
        self._reply(dst, IPPROTO_ICMP, message.build(), src)

    def _icmp_limited(self, dst: IPv4Address, type_: int, code: int) -> str:
        """Why an ICMP error to ``dst`` may not go now ("": it may): the
        host's token bucket (ICMP_BURST, refilled at ICMP_RATE a second),
        then the destination's (ICMP_PEER_BURST, one per ICMP_PEER_INTERVAL).
        A token is taken only from buckets that let it go."""
        if (type_ == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED) or self.is_local(dst):
            return ""
        now = self.clock()
        elapsed = max(0.0, now - self._icmp_refilled)
        self._icmp_refilled = now
        self._icmp_tokens = min(float(ICMP_BURST), self._icmp_tokens + elapsed * ICMP_RATE)
        if self._icmp_tokens < 1.0:
            return "icmp_ratelimited"
        tokens, refilled = self._icmp_peers.pop(dst, (float(ICMP_PEER_BURST), now))
        tokens = min(float(ICMP_PEER_BURST),
                     tokens + max(0.0, now - refilled) / ICMP_PEER_INTERVAL)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
            self._icmp_tokens -= 1.0
        self._icmp_peers[dst] = (tokens, now)
        while len(self._icmp_peers) > ICMP_PEERS:
            self._icmp_peers.popitem(last=False)       # the least recently answered
        return "" if allowed else "icmp_ratelimited_host"

    def _may_answer(self, header: Ipv4Header, payload: bytes) -> bool:
        """RFC 1122 3.2.2 (and Linux's icmp_send): no error about an ICMP
        error, a fragment past the first, or to a source that is not one
        station."""
        if header.flags_frag & IP_OFFMASK:
            return False
        if header.src.is_multicast or header.src.is_unspecified or header.src == LIMITED_BROADCAST \
                or self._is_broadcast(header.src) or header.dst.is_multicast \
                or self._is_broadcast(header.dst):
            return False
        return not (header.proto == IPPROTO_ICMP and payload and payload[0] in ERROR_TYPES)

    # ------------------------------------------------------------------ output

    def _reply(self, dst: IPv4Address, proto: int, payload: bytes,
               src: IPv4Address | None = None) -> None:
        """Send from the input path, where a missing route is a counted drop, not an error."""
        try:
            self._route(dst)
        except OSError:
            self.counters["no_route"] += 1
            return
        self._output(dst, proto, payload, src)

    def _output(self, dst: IPv4Address, proto: int, payload: bytes,
                src: IPv4Address | None = None, ttl: int = DEFAULT_TTL) -> None:
        header = Ipv4Header(src or self.ip, dst, proto, ttl=ttl, ident=self._next_ident())
        packet = header.build(payload)
        if self.is_local(dst):
            self._loopback.append(packet)
            return
        hop = self._route(dst)
        if isinstance(hop, bytes):
            self._emit(hop, ETH_P_IP, packet)
        else:
            self._send_via(hop, packet)

    def _route(self, dst: IPv4Address) -> IPv4Address | bytes:
        """The next hop to resolve, or the MAC to use directly for broadcast and
        multicast. No route is ENETUNREACH, as Linux's."""
        if self._is_broadcast(dst):
            return BROADCAST
        if int(dst) >> 28 == 0xE:            # dst.is_multicast (224/4), without its calls
            return multicast_mac(dst)
        if self.is_local(dst):
            return dst
        route = self.routes.lookup(dst)
        if route is None:
            raise OSError(errno.ENETUNREACH, f"no route to {dst}: off-link and no gateway "
                                             f"or route for it")
        return route.next_hop(dst)

    def _send_via(self, hop: IPv4Address, packet: bytes) -> None:
        now = self.clock()
        mac = self._arp.lookup(hop, now)
        if mac is not None:
            self._emit(mac, ETH_P_IP, packet)
            return
        first, dropped = self._arp.enqueue(hop, packet, now)
        self.counters["arp_queue_full"] += dropped
        if first:
            self._emit_arp_request(hop)

    def _emit_arp_request(self, ip: IPv4Address) -> None:
        self._emit(BROADCAST, ETH_P_ARP, ArpPacket.request(self.mac, self.ip, ip).build())

    def _emit(self, dst: bytes, ethertype: int, payload: bytes) -> None:
        frame = EthernetFrame(dst, self.mac, ethertype, payload).build()
        self.counters["tx_frames"] += 1
        self.counters["tx_bytes"] += len(frame)
        self._out.append(frame)

    def _take_output(self) -> list[bytes]:
        # Each looped-back packet can only produce replies that end in an event
        # (echo reply, ICMP error) or a guarded drop, so this drains.
        while self._loopback:
            self.counters["rx_loopback"] += 1
            self._count_outcome(self._input_ip(self._loopback.popleft(), link_broadcast=False,
                                              looped=True))
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ helpers

    def _count_outcome(self, outcome: str) -> None:
        self.counters[outcome] += 1

    def _event(self, event: object) -> None:
        if len(self.events) == self.events.maxlen:
            self.counters["event_overflow"] += 1
        self.events.append(event)

    def _check_size(self, ip_length: int) -> None:
        if ip_length > self.config.mtu:
            raise ValueError(
                f"a {ip_length}-byte IP packet makes a {ip_length + ETH_HLEN}-byte frame, over "
                f"the MTU {self.config.mtu} + {ETH_HLEN}; this stack does not fragment")

    def _next_ident(self) -> int:
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        return self._ip_ident

    def _on_link(self, ip: IPv4Address) -> bool:
        return ip in self.network

    def _is_subnet_broadcast(self, ip: IPv4Address) -> bool:
        broadcast = self._subnet_broadcast
        return broadcast is not None and ip == broadcast

    def _is_broadcast(self, ip: IPv4Address) -> bool:
        broadcast = self._subnet_broadcast
        return ip == LIMITED_BROADCAST or (broadcast is not None and ip == broadcast)

    def _ephemeral_port(self) -> int:
        span = len(EPHEMERAL_PORTS)
        for i in range(span):
            port = EPHEMERAL_PORTS.start + (self._next_ephemeral - EPHEMERAL_PORTS.start + i) % span
            if port not in self._sockets:
                self._next_ephemeral = port + 1 if port + 1 in EPHEMERAL_PORTS else EPHEMERAL_PORTS.start
                return port
        raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")

    def _unbind(self, sock: UdpSocket) -> None:
        if self._sockets.get(sock.port) is sock:
            del self._sockets[sock.port]

    def __repr__(self) -> str:
        return f"IpStack({self.config.address} at {format_mac(self.mac)})"


def _address(dst: IPv4Address | str) -> IPv4Address:
    if type(dst) is IPv4Address:
        return dst              # (IPv4Address(an address) would print it and parse it again)
    try:
        return IPv4Address(dst)
    except (ipaddress.AddressValueError, ValueError) as err:
        raise ValueError(f"{dst!r} is not an IPv4 address") from err


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} is out of range 0..65535")
