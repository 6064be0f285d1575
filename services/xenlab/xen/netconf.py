"""The values of xl-network-configuration(5) that cross xenstore: mac=,
rate= and vlan=. The toolstack checks them when it reads an xl.cfg or a
VifSpec and writes them into the vif's backend directory; netback reads
rate= (its credit scheduler) and mac= from there, and hotplug hands vlan= to
the bridge. One parser each, for every side.
"""
from __future__ import annotations

import random as _random
import re
from dataclasses import dataclass

from xenlab.xen.errors import ConfigError
from xenlab.xen.names import XEN_OUI

DEFAULT_RATE_INTERVAL_US = 50_000   # libxlu_vif.c: "Default to 50ms"


_MAC = re.compile(r"([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):"
                  r"([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})")


def parse_mac(text: str) -> bytes:
    """'00:16:3e:01:02:03' -> 6 bytes (libxl__parse_mac: six hex octets)."""
    m = _MAC.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"mac={text} is not a MAC address (six hex octets, like 00:16:3e:01:02:03)")
    return bytes(int(g, 16) for g in m.groups())


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac(rng: _random.Random | None = None) -> str:
    """A random address under Xen's OUI. The 4th octet is masked with 0x7f,
    as libxl__device_nic_setdefault does."""
    rng = rng or _random.SystemRandom()
    tail = bytearray(rng.getrandbits(8) for _ in range(3))
    tail[0] &= 0x7F
    return format_mac(XEN_OUI + bytes(tail))


# --------------------------------------------------------------------------
# VLANs (xl-network-configuration(5), vlan=; Xen 4.19).

VLAN_MAX = 4094
_VLAN_TERM = re.compile(r"(?P<vid>[0-9]+)(?:-(?P<end>[0-9]+)|\+(?P<step>[0-9]+)x(?P<count>[0-9]+))?"
                        r"(?P<flag>[pu]?)")


@dataclass(frozen=True)
class VlanMember:
    vid: int
    pvid: bool = False
    untagged: bool = False


def parse_vlan(text: str) -> tuple[VlanMember, ...]:
    """xl's vlan= value -> the port's VLANs, in order. Terms are separated
    by '/': VID (with 'p': the PVID, which implies untagged; 'u': untagged),
    VID1-VID2 and VID+OFFSETxCOUNT ("COUNT additional entries, each
    incremented by OFFSET": 100+10x4 is 100, 110, 120, 130, 140), both with
    an optional 'u'. Exactly one VID is the PVID; a single VID alone is it
    without the 'p'."""
    terms = text.strip().split("/")
    members: dict[int, VlanMember] = {}
    for term in terms:
        m = _VLAN_TERM.fullmatch(term)
        if m is None:
            raise ConfigError(f"vlan={text}: {term!r} is not VID[p|u], VID1-VID2[u] or VID+OFFSETxCOUNT[u]")
        vid, flag = int(m["vid"]), m["flag"]
        if m["end"] is not None:
            vids = range(vid, int(m["end"]) + 1)
            if int(m["end"]) < vid:
                raise ConfigError(f"vlan={text}: in {term!r} the range goes down")
        elif m["step"] is not None:
            step, count = int(m["step"]), int(m["count"])
            if step < 1:
                raise ConfigError(f"vlan={text}: in {term!r} the offset must be at least 1")
            vids = range(vid, vid + step * count + 1, step)
        else:
            vids = range(vid, vid + 1)
        if flag == "p" and len(vids) != 1:
            raise ConfigError(f"vlan={text}: only a single VLAN ID can be the PVID ('p'), not {term!r}")
        for v in vids:
            if not 1 <= v <= VLAN_MAX:
                raise ConfigError(f"vlan={text}: VLAN ID {v} is outside 1..{VLAN_MAX}")
            if v in members:
                raise ConfigError(f"vlan={text}: VLAN {v} is given twice")
            members[v] = VlanMember(v, flag == "p", flag in ("p", "u"))
    pvids = [m for m in members.values() if m.pvid]
    if len(members) == 1 and not pvids:
        only = next(iter(members.values()))
        members[only.vid] = VlanMember(only.vid, True, True)
    elif len(pvids) != 1:
        raise ConfigError(f"vlan={text}: exactly one VLAN ID must be the PVID (marked 'p'), "
                          f"{len(pvids)} are")
    return tuple(members.values())


_RATE = re.compile(r"([0-9]+)([GMK]?)([Bb])(?:/(s|ms|us))?")
_INTERVAL = re.compile(r"([0-9]+)(s|ms|us)?")
_UNIT = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3}   # libxlu_vif.c: decimal units
_PER = {"s": 1_000_000, "ms": 1000, "us": 1}
_U32_MAX = 0xFFFF_FFFF


def parse_rate(text: str) -> tuple[int, int]:
    """xl's `RATE[/TIME][@INTERVAL]` -> (bytes per interval, interval in µs),
    the pair netback reads from the `rate` xenstore key.

    RATE is a number with B, KB, MB, GB (bytes) or b, Kb, Mb, Gb (bits), per
    second unless /ms or /us says otherwise; INTERVAL defaults to 50ms.
    """
    rate_text, at, interval_text = text.strip().partition("@")
    m = _RATE.fullmatch(rate_text)
    if m is None:
        raise ConfigError(f"rate={text}: invalid rate (expected like 10Mb/s, 1MB/s@20ms)")
    number, unit, byte_or_bit, per = m.groups()
    amount = int(number)
    if amount == 0 or amount > _U32_MAX:
        raise ConfigError(f"rate={text}: rate overflow (must be 1..{_U32_MAX} before the unit)")
    bytes_per_sec = amount * _UNIT[unit] * 1_000_000 // _PER[per or "s"]
    if byte_or_bit == "b":
        bytes_per_sec //= 8
    interval_us = _parse_interval(text, interval_text) if at else DEFAULT_RATE_INTERVAL_US
    per_interval = bytes_per_sec * interval_us // 1_000_000
    if per_interval == 0:
        raise ConfigError(f"rate={text}: less than one byte per {interval_us}us interval")
    return per_interval, interval_us


def _parse_interval(text: str, interval: str) -> int:
    m = _INTERVAL.fullmatch(interval)
    if m is None:
        raise ConfigError(f"rate={text}: invalid replenishment interval {interval!r} "
                          "(expected like 20ms, 500us or 1s)")
    amount = int(m.group(1))
    if amount == 0 or amount > _U32_MAX:
        raise ConfigError(f"rate={text}: replenishment interval overflow")
    micros = amount * _PER[m.group(2) or "s"]
    if micros > _U32_MAX:
        raise ConfigError(f"rate={text}: replenishment interval overflow")
    return micros
