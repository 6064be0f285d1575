"""VXLAN (RFC 7348): Ethernet frames in UDP between tunnel endpoints
(VTEPs), and the table of which VTEP each remote MAC lives behind.

No I/O here: the bridge's VXLAN uplink (xenlab.bridge.uplink.VxlanDevice)
owns the socket; this is what it puts in and reads out of each datagram,
and whom it sends a frame to.

The header (RFC 7348 section 5) is 8 bytes before the inner frame::

    flags (8: R R R R I R R R) | reserved (24) | VNI (24) | reserved (8)

The I flag must be set for a valid VNI; every other bit is reserved, sent
as zero and ignored on receipt. Over IPv4 a frame costs 50 bytes more on
the underlay (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8), so a 1500-byte
underlay carries inner frames of at most 1450 bytes of payload: Linux's
vxlan device takes an MTU of 1450 over a 1500-byte lower device for this.

The table follows Linux's vxlan FDB (drivers/net/vxlan): a frame to a MAC
learned from a datagram goes to the one VTEP it came from; a frame to any
other MAC (broadcast, multicast, unknown unicast) is replicated to every
VTEP of the flood list (the all-zeros entries ``bridge fdb append
00:00:00:00:00:00 dev vxlan0 dst IP`` makes, or ``remote IP``); learned
entries age out, and a full table learns no more (counted) rather than
evict.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Callable, Iterable

VXLAN_PORT = 4789                   # IANA's port for VXLAN (RFC 7348 section 5)
HEADER = struct.Struct("!B3sI")     # flags, reserved, VNI << 8 | reserved
FLAG_VNI = 0x08                     # the I flag: the VNI is valid
VNI_MAX = (1 << 24) - 1
OVERHEAD_IPV4 = 14 + 20 + 8 + HEADER.size      # 50: what a frame costs on the underlay
ETH_HLEN = 14
DEFAULT_AGEING = 300.0              # Linux's vxlan ageing, seconds
DEFAULT_MAX_LEARNED = 4096          # learned remote MACs per VTEP table

Remote = tuple[str, int]            # (IPv4 address, UDP port)


class VxlanError(ValueError):
    """A datagram that is not a VXLAN frame we take; ``reason`` is the
    counter it is dropped under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_vni(vni: int) -> int:
    if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni <= VNI_MAX:
        raise ValueError(f"a VNI is 0..{VNI_MAX} (24 bits), not {vni!r}")
    return vni


def encap(vni: int, frame: bytes) -> bytes:
    """The UDP payload that carries ``frame`` in ``vni``."""
    return HEADER.pack(FLAG_VNI, b"\0\0\0", vni << 8) + frame


def decap(datagram: bytes) -> tuple[int, bytes]:
    """(VNI, inner frame) of a datagram; VxlanError if it carries none."""
    if len(datagram) < HEADER.size + ETH_HLEN:
        raise VxlanError("vxlan_short", f"a {len(datagram)}-byte datagram holds no VXLAN "
                                        f"header and Ethernet frame ({HEADER.size + ETH_HLEN} at least)")
    flags, _reserved, word = HEADER.unpack_from(datagram)
    if not flags & FLAG_VNI:
        raise VxlanError("vxlan_no_vni", f"VXLAN flags {flags:#04x}: the I flag (a valid VNI) is not set")
    return word >> 8, datagram[HEADER.size:]


def parse_remote(text: str, default_port: int = VXLAN_PORT) -> Remote:
    """``ADDR`` or ``ADDR:PORT`` (IPv4) -> (address, port)."""
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = text, str(default_port)
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: expected an IPv4 address, optionally with :PORT") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1..65535")
    return str(address), int(port_text)


@dataclasses.dataclass(frozen=True)
class VxlanConfig:
    """``vxlan:vni=42,remote=HOST[:PORT][,remote=...][,local=ADDR[:PORT]][,mtu=N][,name=IF]
    [,learning=off]``. ``learning=off`` is Linux's ``nolearning``: no remote
    MAC is learned, every frame goes to the flood list (the route where
    senders' addresses are rewritten on the way, as Docker's userland proxy
    rewrites them to its gateway's)."""
    vni: int
    remotes: tuple[Remote, ...]
    local: Remote = ("0.0.0.0", VXLAN_PORT)
    mtu: int = 1500 - OVERHEAD_IPV4
    name: str = ""
    learning: bool = True

    @property
    def port_name(self) -> str:
        return self.name or f"vxlan{self.vni}"

    def text(self) -> str:
        parts = [f"vni={self.vni}", *(f"remote={a}:{p}" for a, p in self.remotes),
                 f"local={self.local[0]}:{self.local[1]}", f"mtu={self.mtu}"]
        if self.name:
            parts.append(f"name={self.name}")
        if not self.learning:
            parts.append("learning=off")
        return "vxlan:" + ",".join(parts)


def parse_config(spec: str) -> VxlanConfig:
    """The text after ``vxlan:``; ValueError says what is wrong."""
    fields: dict[str, list[str]] = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise ValueError(f"vxlan: {item!r} is not KEY=VALUE")
        if key not in ("vni", "remote", "local", "mtu", "name", "learning"):
            raise ValueError(f"vxlan: unknown key {key!r} (vni, remote, local, mtu, name, learning)")
        fields.setdefault(key, []).append(value)
    for key in ("vni", "local", "mtu", "name", "learning"):
        if len(fields.get(key, ())) > 1:
            raise ValueError(f"vxlan: {key} given twice")
    if "vni" not in fields:
        raise ValueError("vxlan: vni=N is needed")
    if not fields.get("remote"):
        raise ValueError("vxlan: at least one remote=HOST[:PORT] is needed (the flood list)")
    vni_text = fields["vni"][0]
    if not vni_text.isdigit():
        raise ValueError(f"vxlan: vni {vni_text!r} is not a number")
    vni = check_vni(int(vni_text))
    remotes = tuple(parse_remote(r) for r in fields["remote"])
    if len(set(remotes)) != len(remotes):
        raise ValueError("vxlan: a remote is listed twice")
    local = parse_remote(fields["local"][0]) if "local" in fields else ("0.0.0.0", VXLAN_PORT)
    mtu = VxlanConfig.mtu
    if "mtu" in fields:
        text = fields["mtu"][0]
        if not text.isdigit() or not 68 <= int(text) <= 65535 - OVERHEAD_IPV4:
            raise ValueError(f"vxlan: mtu {text!r} must be 68..{65535 - OVERHEAD_IPV4}")
        mtu = int(text)
    learning = fields.get("learning", ["on"])[0]
    if learning not in ("on", "off"):
        raise ValueError(f"vxlan: learning={learning!r}: expected on or off")
    return VxlanConfig(vni, remotes, local, mtu, fields.get("name", [""])[0], learning == "on")


@dataclasses.dataclass
class VtepEntry:
    remote: Remote
    seen: float


class VtepTable:
    """Which VTEP each remote MAC is behind (learned), and the flood list."""

    def __init__(self, flood: Iterable[Remote], clock: Callable[[], float],
                 ageing: float = DEFAULT_AGEING, max_learned: int = DEFAULT_MAX_LEARNED,
                 learning: bool = True):
        self.flood = list(flood)
        self.learning = learning
        self.clock = clock
        self.ageing = ageing
        self.max_learned = max_learned
        self.entries: dict[bytes, VtepEntry] = {}
        self.counters = {"learned": 0, "moved": 0, "aged": 0, "full": 0}

    def learn(self, mac: bytes, remote: Remote) -> None:
        """A frame from ``mac`` came in from ``remote``. A group address
        (a multicast or broadcast source) is never learned, nor anything
        with learning off."""
        if mac[0] & 1 or not self.learning:
            return
        now = self.clock()
        entry = self.entries.get(mac)
        if entry is not None:
            if entry.remote != remote:
                entry.remote = remote
                self.counters["moved"] += 1
            entry.seen = now
            return
        if len(self.entries) >= self.max_learned:
            self.expire()
            if len(self.entries) >= self.max_learned:
                self.counters["full"] += 1
                return
        self.entries[mac] = VtepEntry(remote, now)
        self.counters["learned"] += 1

    def destinations(self, dst: bytes) -> list[Remote]:
        """Where a frame to ``dst`` goes: its VTEP if learned (and not aged
        out), else every VTEP of the flood list."""
        entry = self.entries.get(dst)
        if entry is not None:
            if self.clock() - entry.seen <= self.ageing:
                return [entry.remote]
            del self.entries[dst]
            self.counters["aged"] += 1
        return list(self.flood)

    def expire(self) -> int:
        now = self.clock()
        old = [mac for mac, e in self.entries.items() if now - e.seen > self.ageing]
        for mac in old:
            del self.entries[mac]
        self.counters["aged"] += len(old)
        return len(old)
