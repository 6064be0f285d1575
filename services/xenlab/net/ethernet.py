"""Ethernet II framing and MAC address helpers (IEEE 802.3, DIX).

Shared by the guest IP stack and the bridge's FDB, so nothing here knows
about IP beyond the EtherType numbers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from xenlab.net.errors import PacketError
from xenlab.xen.abi import ETH_DATA_LEN, ETH_HLEN
from xenlab.xen.netconf import format_mac, parse_mac  # noqa: F401  (the lab's one MAC grammar)

ETH_ALEN = 6
ETH_ZLEN = 60                    # shortest frame on a real wire, without the FCS
ETH_FRAME_LEN = ETH_HLEN + ETH_DATA_LEN
VLAN_HLEN = 4

# EtherTypes (linux/if_ether.h names)
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_802_3_MIN = 0x0600         # below this the field is an 802.3 length, not a type

BROADCAST = b"\xff" * ETH_ALEN
ZERO = bytes(ETH_ALEN)

_HEADER = struct.Struct("!6s6sH")
_VLAN_TAG = struct.Struct("!HH")  # TCI, then the inner EtherType


def _check_mac(mac: bytes) -> None:
    if len(mac) != ETH_ALEN:
        raise ValueError(f"a MAC address is {ETH_ALEN} bytes, got {len(mac)}")


def is_broadcast(mac: bytes) -> bool:
    return mac == BROADCAST


def is_multicast(mac: bytes) -> bool:
    """The I/G bit: a group address. Broadcast is a multicast address too."""
    return bool(mac[0] & 0x01)


def is_unicast(mac: bytes) -> bool:
    return not is_multicast(mac)


def is_locally_administered(mac: bytes) -> bool:
    """The U/L bit."""
    return bool(mac[0] & 0x02)


def is_valid_unicast(mac: bytes) -> bool:
    """A station address a host may own: not a group address and not all zeroes
    (as Linux's is_valid_ether_addr)."""
    return len(mac) == ETH_ALEN and is_unicast(mac) and mac != ZERO


def is_vlan_tagged(frame: bytes) -> bool:
    """An 802.1Q tag follows the source address (TPID 0x8100)."""
    return len(frame) >= ETH_HLEN + VLAN_HLEN and frame[12] == 0x81 and frame[13] == 0x00


def max_frame_len(mtu: int, frame: bytes) -> int:
    """The longest frame an interface of `mtu` sends: MTU plus the Ethernet
    header, plus a VLAN tag when the frame carries one, as Linux's
    is_skb_forwardable allows VLAN_HLEN above the MTU."""
    return mtu + ETH_HLEN + (VLAN_HLEN if is_vlan_tagged(frame) else 0)


def is_link_local(mac: bytes) -> bool:
    """01:80:c2:00:00:0X, the IEEE 802.1D reserved group a bridge must not forward."""
    return mac[:5] == b"\x01\x80\xc2\x00\x00" and mac[5] & 0xF0 == 0


def peek_addresses(frame: bytes) -> tuple[bytes, bytes]:
    """(dst, src) without decoding the rest, for forwarding decisions."""
    if len(frame) < ETH_HLEN:
        raise PacketError("truncated", f"{len(frame)} bytes is shorter than an Ethernet header")
    return bytes(frame[0:6]), bytes(frame[6:12])


@dataclass(frozen=True)
class EthernetFrame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes
    vlan_tci: int | None = None   # the 802.1Q tag control field, if the frame was tagged

    @classmethod
    def parse(cls, data: bytes) -> EthernetFrame:
        if len(data) < ETH_HLEN:
            raise PacketError("truncated", f"{len(data)} bytes is shorter than an Ethernet header")
        dst, src, ethertype = _HEADER.unpack_from(data)
        if ethertype != ETH_P_8021Q:
            return cls(dst, src, ethertype, bytes(data[ETH_HLEN:]))
        if len(data) < ETH_HLEN + VLAN_HLEN:
            raise PacketError("truncated", "802.1Q tag cut short")
        tci, ethertype = _VLAN_TAG.unpack_from(data, ETH_HLEN)
        return cls(dst, src, ethertype, bytes(data[ETH_HLEN + VLAN_HLEN:]), tci)

    def build(self, pad: bool = False) -> bytes:
        """The frame's bytes; ``pad`` fills to ETH_ZLEN as a physical NIC would.
        Virtual links (netfront, veth) carry short frames as they are."""
        _check_mac(self.dst)
        _check_mac(self.src)
        if self.vlan_tci is None:
            head = _HEADER.pack(self.dst, self.src, self.ethertype)
        else:
            head = (_HEADER.pack(self.dst, self.src, ETH_P_8021Q)
                    + _VLAN_TAG.pack(self.vlan_tci, self.ethertype))
        frame = head + self.payload
        if pad and len(frame) < ETH_ZLEN:
            frame += bytes(ETH_ZLEN - len(frame))
        return frame

    @property
    def is_802_3(self) -> bool:
        """True when the type field is really an 802.3 length (an LLC frame)."""
        return self.ethertype < ETH_P_802_3_MIN
